//! The REST API under `/api/v1`: admit a call (rate, origin), route it to a request, send it
//! through Kafka ([`crate::rpc::call`]) and map the worker's answer to an HTTP response.

use super::auth::{
    bearer, cookie, device_label, origin_allowed, peer, session_cookie, session_cookie_name,
    token_hash,
};
use super::error_response;
use super::routes::route;
use crate::rpc::call;
use crate::Edge;
use bytes::Bytes;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use topics::{Auth, EdgeMessage, ErrorCode, Request, ServerFrame, SessionGrant};
use warp::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use warp::reply::Response;
use warp::{Rejection, Reply};

/// 429 `rate_limited` for an API call over its client's rate, with `Retry-After` in seconds.
fn rate_limited(wait: Duration) -> Response {
    let mut r = error_response(ErrorCode::RateLimited, "too many requests; slow down");
    r.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(crate::limits::retry_after_secs(wait)),
    );
    r
}

/// Header with which a browser asks for cookie-only sessions: the token is set as an HttpOnly
/// cookie and left out of response bodies, so page scripts never see it.
pub const SESSION_MODE_HEADER: &str = "x-session-mode";

/// Turn a worker's answer into an HTTP response (and cookie changes).
pub fn http_reply(edge: &Edge, msg: EdgeMessage, ok: StatusCode, cookie_only: bool) -> Response {
    let EdgeMessage::Reply {
        frame,
        session,
        clear_session,
        ..
    } = msg
    else {
        return error_response(ErrorCode::Internal, "unexpected answer");
    };
    let mut resp = match serde_json::from_str::<ServerFrame>(&frame) {
        Ok(ServerFrame::Reply { mut data, .. }) => {
            if let (true, topics::Response::Session { token, .. }) = (cookie_only, &mut data) {
                token.clear();
            }
            let mut r = warp::reply::json(&data).into_response();
            *r.status_mut() = ok;
            r
        }
        Ok(ServerFrame::Error { code, message, .. }) => error_response(code, &message),
        _ => error_response(ErrorCode::Internal, "unexpected answer"),
    };
    // A worker's answer is about one account and may carry a token (login, refresh): no cache
    // (browser, proxy) may keep it.
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    if let Some(SessionGrant {
        token: Some(token), ..
    }) = &session
    {
        resp.headers_mut().append(
            header::SET_COOKIE,
            session_cookie(edge, token, 30 * 24 * 3600),
        );
    }
    if clear_session {
        resp.headers_mut()
            .append(header::SET_COOKIE, session_cookie(edge, "", 0));
    }
    resp
}

/// A call's client address and, when it presents one, its session token as (hash, token).
type Caller = (Option<String>, Option<(String, String)>);

/// What every API call passes before it is routed: the client's rate (per address, then per
/// session token) and the origin check. Gives the client's address and the token with its hash.
/// The refusal is the finished answer (large, but made at most once per call).
#[allow(clippy::result_large_err)]
fn admit(edge: &Edge, headers: &HeaderMap, remote: Option<SocketAddr>) -> Result<Caller, Response> {
    edge.metrics.http_requests.inc();
    let client = peer(headers, remote);
    let token = bearer(headers, session_cookie_name(edge.settings.secure_cookies))
        .map(|t| (token_hash(&t), t));
    if let Err(wait) = edge.limits.api(
        client.as_deref(),
        token.as_ref().map(|(h, _)| h.as_str()),
        tokio::time::Instant::now().into_std(),
    ) {
        return Err(rate_limited(wait));
    }
    if !origin_allowed(edge, headers) {
        return Err(error_response(ErrorCode::Forbidden, "origin not allowed"));
    }
    Ok((client, token))
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn handle(
    edge: Arc<Edge>,
    method: Method,
    path: warp::path::FullPath,
    query: HashMap<String, String>,
    headers: HeaderMap,
    remote: Option<SocketAddr>,
    body: Bytes,
) -> Result<Response, Rejection> {
    let (client, token) = match admit(&edge, &headers, remote) {
        Ok(admitted) => admitted,
        Err(refused) => return Ok(refused),
    };
    let sub = path.as_str().trim_start_matches("/api/v1");
    let (mut request, ok) = match route(&method, sub, &query, &body) {
        Ok(r) => r,
        Err(e) => return Ok(error_response(e.code, &e.message)),
    };
    if let Request::Login { device, .. } = &mut request {
        *device = device_label(&headers);
    }
    let auth = match token {
        Some((token_hash, _)) => Auth::Token { token_hash },
        None if request.is_anonymous() => Auth::None,
        None => return Ok(error_response(ErrorCode::Unauthorized, "no session")),
    };
    let cookie_only = headers
        .get(SESSION_MODE_HEADER)
        .is_some_and(|v| v == "cookie");
    match call(&edge, 0, request, auth, client).await {
        Ok(msg) => Ok(http_reply(&edge, msg, ok, cookie_only)),
        Err(e) => Ok(error_response(e.error.code, &e.error.message)),
    }
}

/// `GET /api/v1/sessions/current`: whether the request opens a live session, without an error
/// status either way, so a page can check at start-up without a failed request in its console.
/// Signed in: the `user` reply of `GET /users/me`. Not: `200 {"kind":"signed_out"}`, and a
/// cookie that no longer opens a session is cleared.
pub(crate) async fn current_session(
    edge: Arc<Edge>,
    headers: HeaderMap,
    remote: Option<SocketAddr>,
) -> Result<Response, Rejection> {
    let (client, token) = match admit(&edge, &headers, remote) {
        Ok(admitted) => admitted,
        Err(refused) => return Ok(refused),
    };
    let signed_out = |clear: bool| {
        let mut r = warp::reply::json(&topics::Response::SignedOut).into_response();
        if clear {
            r.headers_mut()
                .append(header::SET_COOKIE, session_cookie(&edge, "", 0));
        }
        r
    };
    let Some((token_hash, token)) = token else {
        return Ok(signed_out(false));
    };
    let auth = Auth::Token { token_hash };
    match call(&edge, 0, Request::Me, auth, client).await {
        Ok(EdgeMessage::Reply {
            error: Some(ErrorCode::Unauthorized),
            ..
        }) => Ok(signed_out(
            cookie(&headers, session_cookie_name(edge.settings.secure_cookies)).as_deref()
                == Some(token.as_str()),
        )),
        Ok(msg) => Ok(http_reply(&edge, msg, StatusCode::OK, true)),
        Err(e) => Ok(error_response(e.error.code, &e.error.message)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warp::Filter;

    #[test]
    fn rate_limited_answers_say_when_to_retry() {
        let r = rate_limited(Duration::from_millis(1500));
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
    }

    /// Status, error code and message of an error answer.
    fn error_of<B>(r: &warp::http::Response<B>, body: &[u8]) -> (u16, String, String) {
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        (
            r.status().as_u16(),
            v["code"].as_str().unwrap().to_string(),
            v["message"].as_str().unwrap().to_string(),
        )
    }

    /// What a worker's answer may not be: another kind of record, or a reply whose frame is no
    /// reply or error frame (garbage, an event). Each is a 500 `internal` for the client, never
    /// passed on as it is, and sets no cookie.
    #[tokio::test]
    async fn an_answer_that_is_no_reply_is_an_internal_error() {
        let edge = Edge::for_tests(Default::default());
        let reply = |frame: &str| EdgeMessage::Reply {
            conn: 0,
            req: 1,
            frame: frame.into(),
            error: None,
            session: None,
            clear_session: false,
        };
        let event = ServerFrame::Event {
            data: topics::Event::ConnectionRemoved {
                user_id: topics::Id(7),
            },
        }
        .to_json();
        for msg in [
            EdgeMessage::Broadcast { frame: "b".into() },
            reply("not json"),
            reply(&event),
        ] {
            let (e, m) = (edge.clone(), msg.clone());
            let answer = warp::any().map(move || http_reply(&e, m.clone(), StatusCode::OK, false));
            let r = warp::test::request().reply(&answer).await;
            assert_eq!(
                error_of(&r, r.body()),
                (500, "internal".into(), "unexpected answer".into()),
                "{msg:?}"
            );
            assert!(r.headers().get(header::SET_COOKIE).is_none(), "{msg:?}");
        }
    }

    /// A call the edge cannot make (here: too many calls already wait for their answers) is
    /// answered with the call's typed error, `unavailable`: for any endpoint, and for the
    /// start-up session check too, which must not take it for "signed out" (a page would show
    /// its login form to a signed-in user).
    #[tokio::test]
    async fn a_call_the_edge_cannot_make_gets_its_typed_error() {
        let edge = Edge::for_tests(Default::default());
        let held: Vec<_> = (0..crate::hub::MAX_PENDING as u64)
            .map(|i| edge.hub.expect(u64::MAX - i).expect("room"))
            .collect();
        let routes = super::super::routes(edge.clone(), tokio_util::sync::CancellationToken::new());
        for path in ["/api/v1/users/me", "/api/v1/sessions/current"] {
            let r = warp::test::request()
                .path(path)
                .header("authorization", "Bearer some-token")
                .reply(&routes)
                .await;
            assert_eq!(
                error_of(&r, r.body()),
                (
                    503,
                    "unavailable".into(),
                    "this edge is overloaded; retry".into()
                ),
                "{path}"
            );
            assert!(r.headers().get(header::SET_COOKIE).is_none(), "{path}");
        }
        assert_eq!(edge.metrics.http_requests.get(), 2);
        drop(held);
    }
}
