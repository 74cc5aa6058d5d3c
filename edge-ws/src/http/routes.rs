//! The REST API's paths and what request each one is.

use std::collections::HashMap;
use topics::{ErrorBody, ErrorCode, Id, Request};
use warp::http::{Method, StatusCode};

/// Map an API call to a request. Pure: method, path below `/api/v1`, query and body in; the
/// request and the success status out.
pub fn route(
    method: &Method,
    path: &str,
    query: &HashMap<String, String>,
    body: &[u8],
) -> Result<(Request, StatusCode), ErrorBody> {
    let json_body = || -> Result<serde_json::Value, ErrorBody> {
        serde_json::from_slice(body)
            .map_err(|e| ErrorBody::new(ErrorCode::InvalidInput, format!("body must be JSON: {e}")))
    };
    let creds = || -> Result<(String, String), ErrorBody> {
        let v = json_body()?;
        match (
            v.get("username").and_then(|u| u.as_str()),
            v.get("password").and_then(|p| p.as_str()),
        ) {
            (Some(u), Some(p)) => Ok((u.to_string(), p.to_string())),
            _ => Err(ErrorBody::new(
                ErrorCode::InvalidInput,
                "username and password (strings) are required",
            )),
        }
    };
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let ok = StatusCode::OK;
    let r = match (method.clone(), segs.as_slice()) {
        (Method::POST, ["users"]) => {
            let (username, password) = creds()?;
            (
                Request::UserCreate { username, password },
                StatusCode::CREATED,
            )
        }
        (Method::POST, ["sessions"]) => {
            let (username, password) = creds()?;
            (
                Request::Login {
                    username,
                    password,
                    device: None,
                },
                ok,
            )
        }
        (Method::POST, ["sessions", "refresh"]) => (Request::Refresh, ok),
        (Method::GET, ["sessions"]) => (Request::SessionList, ok),
        (Method::DELETE, ["sessions"]) => (Request::LogoutAll, ok),
        (Method::DELETE, ["sessions", "current"]) => (Request::Logout { session_id: None }, ok),
        (Method::DELETE, ["sessions", id]) => (
            Request::Logout {
                session_id: Some(id.to_string()),
            },
            ok,
        ),
        (Method::GET, ["users", "me"]) => (Request::Me, ok),
        (Method::DELETE, ["users", "me"]) => (Request::UserDelete, ok),
        (Method::GET, ["users", id]) => {
            let user_id: Id = id
                .parse()
                .map_err(|_| ErrorBody::new(ErrorCode::InvalidInput, "user id must be a number"))?;
            (
                Request::UserLookup {
                    username: None,
                    user_id: Some(user_id),
                },
                ok,
            )
        }
        (Method::GET, ["users"]) => match query.get("username") {
            Some(u) => (
                Request::UserLookup {
                    username: Some(u.clone()),
                    user_id: None,
                },
                ok,
            ),
            None => {
                return Err(ErrorBody::new(
                    ErrorCode::InvalidInput,
                    "?username= is required",
                ))
            }
        },
        (Method::GET, ["online"]) => {
            let limit = match query.get("limit") {
                Some(l) => Some(l.parse().map_err(|_| {
                    ErrorBody::new(ErrorCode::InvalidInput, "limit must be a number")
                })?),
                None => None,
            };
            (
                Request::OnlineList {
                    cursor: query.get("cursor").cloned(),
                    limit,
                },
                ok,
            )
        }
        // Every WebSocket request is also reachable as one JSON frame over HTTP.
        (Method::POST, ["rpc"]) => {
            let text = std::str::from_utf8(body)
                .map_err(|_| ErrorBody::new(ErrorCode::InvalidInput, "body must be UTF-8"))?;
            let frame = topics::frames::parse_client_frame(text)?;
            if !frame.request.allowed_over_ws() {
                return Err(ErrorBody::new(
                    ErrorCode::InvalidInput,
                    "use the dedicated endpoint for this request",
                ));
            }
            (frame.request, ok)
        }
        _ => return Err(ErrorBody::new(ErrorCode::NotFound, "no such endpoint")),
    };
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_map_to_requests() {
        let q = HashMap::new();
        let creds = br#"{"username":"ann","password":"pw123456!"}"#;
        let (r, s) = route(&Method::POST, "/users", &q, creds).unwrap();
        assert_eq!(s, StatusCode::CREATED);
        assert!(matches!(r, Request::UserCreate { .. }));
        assert!(matches!(
            route(&Method::POST, "/sessions", &q, creds).unwrap().0,
            Request::Login { .. }
        ));
        assert_eq!(
            route(&Method::POST, "/sessions", &q, b"{}")
                .unwrap_err()
                .code,
            ErrorCode::InvalidInput
        );
        assert_eq!(
            route(&Method::POST, "/sessions", &q, b"nope")
                .unwrap_err()
                .code,
            ErrorCode::InvalidInput
        );
        assert_eq!(
            route(&Method::POST, "/sessions/refresh", &q, b"")
                .unwrap()
                .0,
            Request::Refresh
        );
        assert_eq!(
            route(&Method::GET, "/sessions", &q, b"").unwrap().0,
            Request::SessionList
        );
        assert_eq!(
            route(&Method::DELETE, "/sessions", &q, b"").unwrap().0,
            Request::LogoutAll
        );
        assert_eq!(
            route(&Method::DELETE, "/sessions/current", &q, b"")
                .unwrap()
                .0,
            Request::Logout { session_id: None }
        );
        assert_eq!(
            route(&Method::DELETE, "/sessions/abc", &q, b"").unwrap().0,
            Request::Logout {
                session_id: Some("abc".into())
            }
        );
        assert_eq!(
            route(&Method::GET, "/users/me", &q, b"").unwrap().0,
            Request::Me
        );
        assert_eq!(
            route(&Method::DELETE, "/users/me", &q, b"").unwrap().0,
            Request::UserDelete
        );
        assert_eq!(
            route(&Method::GET, "/users/7", &q, b"").unwrap().0,
            Request::UserLookup {
                username: None,
                user_id: Some(Id(7))
            }
        );
        assert_eq!(
            route(&Method::GET, "/users/x", &q, b"").unwrap_err().code,
            ErrorCode::InvalidInput
        );
        assert_eq!(
            route(&Method::GET, "/users", &q, b"").unwrap_err().code,
            ErrorCode::InvalidInput
        );
        let mut qu = HashMap::new();
        qu.insert("username".to_string(), "ann".to_string());
        qu.insert("limit".to_string(), "5".to_string());
        qu.insert("cursor".to_string(), "c".to_string());
        assert_eq!(
            route(&Method::GET, "/users", &qu, b"").unwrap().0,
            Request::UserLookup {
                username: Some("ann".into()),
                user_id: None
            }
        );
        assert_eq!(
            route(&Method::GET, "/online", &qu, b"").unwrap().0,
            Request::OnlineList {
                cursor: Some("c".into()),
                limit: Some(5)
            }
        );
        qu.insert("limit".to_string(), "x".to_string());
        assert!(route(&Method::GET, "/online", &qu, b"").is_err());
        assert_eq!(
            route(&Method::POST, "/rpc", &q, br#"{"type":"dm.list"}"#)
                .unwrap()
                .0,
            Request::DmList
        );
        assert!(route(&Method::POST, "/rpc", &q, br#"{"type":"session.verify"}"#).is_err());
        assert!(route(&Method::POST, "/rpc", &q, &[0xff]).is_err());
        assert_eq!(
            route(&Method::GET, "/nope", &q, b"").unwrap_err().code,
            ErrorCode::NotFound
        );
    }
}
