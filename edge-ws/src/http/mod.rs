//! HTTP: the liveness answer (`/healthz`; `/metrics` is on the internal listener only), the
//! authenticated WebSocket handshake ([`crate::ws`]), and the REST API ([`api`]). Every API
//! call becomes an envelope answered by a worker through this edge's topic ([`crate::rpc`]).

pub mod api;
pub mod auth;
pub mod routes;

pub use crate::rpc::call;
pub use crate::ws::upgrade::{upgrade_key, ws_config};
pub use api::{http_reply, SESSION_MODE_HEADER};
pub use auth::{
    bearer, device_label, origin_allowed, peer, session_cookie_name, token_hash, ws_protocols,
};
pub use routes::route;

use crate::Edge;
use bytes::Bytes;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use topics::ErrorCode;
use warp::http::StatusCode;
use warp::hyper::upgrade::OnUpgrade;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

pub(crate) fn error_response(code: ErrorCode, message: &str) -> Response {
    let mut r = warp::reply::json(&json!({"code": code, "message": message})).into_response();
    *r.status_mut() =
        StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r
}

/// The query string as a map, decoded by `serde_urlencoded` (warp's query filter): percent
/// escapes decoded (one that is not two hex digits stays as it is), `+` is a space, a key without
/// `=` maps to "", bytes that are not UTF-8 become U+FFFD, and of a repeated key the last value
/// counts. No query string is an empty map.
pub fn query() -> impl Filter<Extract = (HashMap<String, String>,), Error = Rejection> + Copy {
    warp::query::<HashMap<String, String>>()
}

async fn recover(err: Rejection) -> Result<Response, Rejection> {
    let (code, msg) = if err.is_not_found() {
        (ErrorCode::NotFound, "no such endpoint")
    } else if err.find::<warp::reject::PayloadTooLarge>().is_some() {
        (ErrorCode::PayloadTooLarge, "body is larger than the limit")
    } else if err.find::<warp::reject::LengthRequired>().is_some() {
        (ErrorCode::InvalidInput, "content-length is required")
    } else if err.find::<warp::reject::MethodNotAllowed>().is_some() {
        (ErrorCode::NotFound, "no such endpoint for this method")
    } else {
        (ErrorCode::InvalidInput, "bad request")
    };
    Ok(error_response(code, msg))
}

/// Every route of the edge.
pub fn routes(
    edge: Arc<Edge>,
    stop: CancellationToken,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let with_edge = {
        let e = edge.clone();
        warp::any().map(move || e.clone())
    };
    // liveness for nginx, discovery and `./sb status`; metrics are served on `internal_listen`
    let health = warp::path!("healthz")
        .and(warp::get())
        .map(|| "ok".into_response());
    let ws = warp::path!("ws")
        .and(with_edge.clone())
        .and(warp::get())
        .and(warp::any().map(move || stop.clone()))
        .and(warp::header::headers_cloned())
        .and(crate::server::remote())
        .and(warp::ext::optional::<OnUpgrade>())
        .and_then(crate::ws::upgrade::upgrade);
    let current = warp::path!("api" / "v1" / "sessions" / "current")
        .and(warp::get())
        .and(with_edge.clone())
        .and(warp::header::headers_cloned())
        .and(crate::server::remote())
        .and_then(api::current_session);
    let base = warp::path("api")
        .and(warp::path("v1"))
        .and(with_edge)
        .and(warp::method())
        .and(warp::path::full())
        .and(query())
        .and(warp::header::headers_cloned())
        .and(crate::server::remote());
    let max = edge.settings.max_frame_bytes as u64;
    let with_body = base
        .clone()
        .and(warp::post())
        .and(warp::body::content_length_limit(max))
        .and(warp::body::bytes())
        .and_then(api::handle);
    // A POST with neither Content-Length nor Transfer-Encoding has an empty body (RFC 9112
    // §6.3), as `curl -X POST` and hyper-based clients send `/sessions/refresh`; chunked bodies
    // still need a length.
    let no_body = warp::header::optional::<String>("content-length")
        .and(warp::header::optional::<String>("transfer-encoding"))
        .and_then(|len: Option<String>, te: Option<String>| async move {
            match (len, te) {
                (None, None) => Ok(Bytes::new()),
                _ => Err(warp::reject::not_found()),
            }
        });
    let empty_post = base
        .clone()
        .and(warp::post())
        .and(no_body)
        .and_then(api::handle);
    let without_body = base
        .and(warp::get().or(warp::delete()).unify())
        .and(warp::any().map(Bytes::new))
        .and_then(api::handle);
    health
        .or(ws)
        .unify()
        .or(current)
        .unify()
        .or(with_body)
        .unify()
        .or(empty_post)
        .unify()
        .or(without_body)
        .unify()
        .recover(recover)
        .unify()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use warp::http::{header, HeaderMap, HeaderValue};

    pub(crate) fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    async fn decoded(q: &str) -> HashMap<String, String> {
        warp::test::request()
            .path(&format!("/api/v1/users?{q}"))
            .filter(&query())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn queries_are_decoded() {
        // the raw `é` of a URL as it arrives percent-encoded (`%%C3%A9`: a lone `%`, then `é`)
        let q = decoded("username=a%20b&x=1+2&flag&bad=%zz&end=%4&u=%%C3%A9").await;
        assert_eq!(q["username"], "a b");
        assert_eq!(q["x"], "1 2");
        assert_eq!(q["flag"], "");
        assert_eq!(q["bad"], "%zz");
        assert_eq!(q["end"], "%4");
        assert_eq!(q["u"], "%é");
        let q = decoded("bad=%ff%C3&k%2Bey=v%26w&&dup=1&dup=2&plus=%+1").await;
        assert_eq!(q["bad"], "\u{FFFD}\u{FFFD}", "escapes that are not UTF-8");
        assert_eq!(q["k+ey"], "v&w", "escaped separators are data");
        assert_eq!(q["dup"], "2", "the last of repeated keys");
        // `+1` is not two hex digits (the hand-written decoder took it for 0x01)
        assert_eq!(q["plus"], "% 1");
        assert_eq!(q.len(), 4, "empty pairs are skipped");
        assert!(decoded("").await.is_empty());
        let none = warp::test::request()
            .path("/api/v1/users")
            .filter(&query())
            .await
            .unwrap();
        assert!(none.is_empty(), "no query string");
    }

    /// What `recover` answered to `request` against `filter`: status and the error body's code
    /// and message.
    async fn answer<F>(request: warp::test::RequestBuilder, filter: F) -> (u16, String, String)
    where
        F: Filter<Extract = (&'static str,), Error = Rejection> + Clone + Send + Sync + 'static,
    {
        let filter = filter
            .map(|s: &'static str| s.into_response())
            .recover(recover)
            .unify();
        let r = request.reply(&filter).await;
        let body: serde_json::Value = serde_json::from_slice(r.body())
            .unwrap_or_else(|e| panic!("{e}: {} {:?}", r.status(), r.body()));
        (
            r.status().as_u16(),
            body["code"].as_str().unwrap().to_string(),
            body["message"].as_str().unwrap().to_string(),
        )
    }

    #[tokio::test]
    async fn every_rejection_is_a_typed_error() {
        let post_small = || {
            warp::post()
                .and(warp::body::content_length_limit(4))
                .and(warp::body::bytes())
                .map(|_| "ok")
        };
        let too_large = warp::test::request()
            .method("POST")
            .header("content-length", "5")
            .body("12345");
        assert_eq!(
            answer(too_large, post_small()).await,
            (
                413,
                "payload_too_large".into(),
                "body is larger than the limit".into()
            )
        );
        let no_length = warp::test::request().method("POST");
        let (status, code, message) = answer(no_length, post_small()).await;
        assert_eq!((status, code.as_str()), (400, "invalid_input"));
        assert_eq!(message, "content-length is required");
        let put = warp::test::request().method("PUT").path("/x");
        assert_eq!(
            answer(put, warp::path!("x").and(warp::get()).map(|| "ok")).await,
            (
                404,
                "not_found".into(),
                "no such endpoint for this method".into()
            )
        );
        let elsewhere = warp::test::request().path("/y");
        assert_eq!(
            answer(elsewhere, warp::path!("x").map(|| "ok")).await,
            (404, "not_found".into(), "no such endpoint".into())
        );
        // any other rejection, here a query that does not parse
        let bad_query = warp::test::request().path("/x?n=ten");
        let numbers = warp::query::<HashMap<String, u32>>().map(|_| "ok");
        assert_eq!(
            answer(bad_query, numbers).await,
            (400, "invalid_input".into(), "bad request".into())
        );
    }

    /// A POST that says its body is chunked, without a length, is refused `invalid_input`
    /// ("content-length is required") before it reaches the API: it is not taken for a POST
    /// without a body, which is (the second request, refused for want of a session).
    #[tokio::test]
    async fn a_chunked_post_without_a_length_is_refused_before_the_api() {
        let edge = Edge::for_tests(Default::default());
        let routes = routes(edge.clone(), CancellationToken::new());
        let body = |r: &warp::http::Response<Bytes>| -> serde_json::Value {
            serde_json::from_slice(r.body()).unwrap()
        };
        let chunked = warp::test::request()
            .method("POST")
            .path("/api/v1/users/me/invite_code")
            .header("transfer-encoding", "chunked")
            .reply(&routes)
            .await;
        assert_eq!(chunked.status(), 400);
        let b = body(&chunked);
        assert_eq!(b["code"], "invalid_input", "{b}");
        assert_eq!(b["message"], "content-length is required", "{b}");
        assert_eq!(edge.metrics.http_requests.get(), 0, "the API never saw it");
        let bodiless = warp::test::request()
            .method("POST")
            .path("/api/v1/users/me/invite_code")
            .reply(&routes)
            .await;
        assert_eq!(bodiless.status(), 401, "{}", body(&bodiless));
        assert_eq!(edge.metrics.http_requests.get(), 1);
    }
}
