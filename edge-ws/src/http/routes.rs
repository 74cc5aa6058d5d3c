//! The REST API's paths and what request each one is: the dedicated endpoints come from the
//! request-kind table ([`topics::kinds`]); `POST /rpc` takes any request allowed over WebSocket as
//! one JSON frame.

use std::collections::HashMap;
use topics::kinds;
use topics::{ErrorBody, ErrorCode, Request};
use warp::http::{Method, StatusCode};

/// Map an API call to a request. Pure: method, path below `/api/v1`, query and body in; the
/// request and the success status out.
pub fn route(
    method: &Method,
    path: &str,
    query: &HashMap<String, String>,
    body: &[u8],
) -> Result<(Request, StatusCode), ErrorBody> {
    if method == Method::POST && path.trim_matches('/') == "rpc" {
        let text = std::str::from_utf8(body)
            .map_err(|_| ErrorBody::new(ErrorCode::InvalidInput, "body must be UTF-8"))?;
        let frame = topics::frames::parse_client_frame(text)?;
        if !frame.request.allowed_over_ws() {
            return Err(ErrorBody::new(
                ErrorCode::InvalidInput,
                "use the dedicated endpoint for this request",
            ));
        }
        return Ok((frame.request, StatusCode::OK));
    }
    let method = match *method {
        Method::GET => kinds::Method::Get,
        Method::POST => kinds::Method::Post,
        Method::DELETE => kinds::Method::Delete,
        _ => return Err(ErrorBody::new(ErrorCode::NotFound, "no such endpoint")),
    };
    let (request, status) = kinds::from_http(method, path, query, body)?;
    let status = StatusCode::from_u16(status).expect("the kind table holds valid statuses");
    Ok((request, status))
}

#[cfg(test)]
mod tests {
    use super::*;
    use topics::Id;

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

    /// A method no endpoint takes is `not_found`, even on a path another method takes (the
    /// table's methods are GET, POST and DELETE).
    #[test]
    fn a_method_no_endpoint_takes_is_not_found() {
        let q = HashMap::new();
        for method in [Method::PUT, Method::PATCH, Method::HEAD] {
            let e = route(&method, "/users/me", &q, b"").unwrap_err();
            assert_eq!(e.code, ErrorCode::NotFound, "{method}");
            assert_eq!(e.message, "no such endpoint", "{method}");
        }
    }
}
