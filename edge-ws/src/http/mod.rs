//! HTTP: the liveness answer (`/healthz`; `/metrics` is on the internal listener only), the
//! authenticated WebSocket handshake, and the REST API. Every API
//! call becomes an envelope answered by a worker through this edge's topic.

use crate::hub::ConnHandle;
use crate::session::{self, ConnCtx};
use crate::Edge;
use bytes::Bytes;
use hyper_util::rt::TokioIo;
use runtime::metrics;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use topics::{
    Auth, EdgeEvent, EdgeMessage, Envelope, ErrorBody, ErrorCode, Id, Request, ServerFrame,
    SessionGrant, SECURE_SESSION_COOKIE, SESSION_COOKIE, WIRE_VERSION, WS_AUTH_PROTOCOL_PREFIX,
    WS_PROTOCOL,
};
use warp::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use warp::hyper::upgrade::OnUpgrade;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

/// SHA-256 of a token, hex: what is sent to workers and stored; the token stays here.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The session cookie's name: `__Host-sb_session` with `secure_cookies`, else `sb_session`.
/// Only that one is read, so a cookie without the prefix cannot stand in for it.
pub fn session_cookie_name(secure: bool) -> &'static str {
    if secure {
        SECURE_SESSION_COOKIE
    } else {
        SESSION_COOKIE
    }
}

/// The bearer token of a request: `Authorization: Bearer …` or the session cookie `name`.
pub fn bearer(headers: &HeaderMap, name: &str) -> Option<String> {
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        if let Some(t) = v.strip_prefix("Bearer ") {
            return Some(t.trim().to_string());
        }
    }
    cookie(headers, name)
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
        .filter(|v| !v.is_empty())
}

/// The subprotocols a WebSocket client offered: (offers `switchboard.v1`, token from `auth.…`).
pub fn ws_protocols(headers: &HeaderMap) -> (bool, Option<String>) {
    let mut ours = false;
    let mut token = None;
    for v in headers.get_all(header::SEC_WEBSOCKET_PROTOCOL) {
        for p in v.to_str().unwrap_or("").split(',').map(str::trim) {
            if p == WS_PROTOCOL {
                ours = true;
            } else if let Some(t) = p.strip_prefix(WS_AUTH_PROTOCOL_PREFIX) {
                token = Some(t.to_string());
            }
        }
    }
    (ours, token)
}

/// Browsers send `Origin`; it must be on the allowlist. Clients that send none (SDKs) pass.
pub fn origin_allowed(edge: &Edge, headers: &HeaderMap) -> bool {
    match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(o) => edge.settings.allowed_origins.iter().any(|a| a == o),
    }
}

/// The client's address: the first `X-Forwarded-For` hop (set by our nginx), else the socket's.
pub fn peer(headers: &HeaderMap, remote: Option<SocketAddr>) -> Option<String> {
    headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| remote.map(|r| r.ip().to_string()))
}

fn error_response(code: ErrorCode, message: &str) -> Response {
    let mut r = warp::reply::json(&json!({"code": code, "message": message})).into_response();
    *r.status_mut() =
        StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r
}

/// 429 `rate_limited` for an API call over its client's rate, with `Retry-After` in seconds.
fn rate_limited(wait: Duration) -> Response {
    let mut r = error_response(ErrorCode::RateLimited, "too many requests; slow down");
    r.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(crate::limits::retry_after_secs(wait)),
    );
    r
}

/// Publish a request and wait for its worker's answer on this edge's topic.
pub async fn call(
    edge: &Edge,
    conn: u64,
    request: Request,
    auth: Auth,
    peer: Option<String>,
) -> Result<EdgeMessage, ErrorBody> {
    let req = edge.hub.next_id();
    let env = Envelope {
        v: WIRE_VERSION,
        edge: edge.settings.id.clone(),
        conn,
        req,
        rid: None,
        auth,
        peer,
        sent_at_ms: runtime::now_ms(),
        request,
    };
    let Some(answer) = edge.hub.expect(req) else {
        return Err(ErrorBody::new(
            ErrorCode::Unavailable,
            "this edge is overloaded; retry",
        ));
    };
    if let Err(e) = session::publish(edge, &env).await {
        edge.hub.forget(req);
        return Err(e);
    }
    match tokio::time::timeout(
        Duration::from_millis(edge.settings.request_timeout_ms),
        answer,
    )
    .await
    {
        Ok(Ok(msg)) => Ok(msg),
        _ => {
            edge.hub.forget(req);
            Err(ErrorBody::new(
                ErrorCode::Unavailable,
                "the service did not answer in time; retry",
            ))
        }
    }
}

fn session_cookie(edge: &Edge, value: &str, max_age_s: u64) -> HeaderValue {
    let secure = if edge.settings.secure_cookies {
        "; Secure"
    } else {
        ""
    };
    let name = session_cookie_name(edge.settings.secure_cookies);
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_s}{secure}"
    ))
    .expect("cookie is ascii")
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

/// A call's client address and, when it presents one, its session token as (hash, token).
type Caller = (Option<String>, Option<(String, String)>);

/// What every API call passes before it is routed: the client's rate (per address, then per
/// session token) and the origin check. Gives the client's address and the token with its hash.
/// The refusal is the finished answer (large, but made at most once per call).
#[allow(clippy::result_large_err)]
fn admit(edge: &Edge, headers: &HeaderMap, remote: Option<SocketAddr>) -> Result<Caller, Response> {
    edge.metrics.inc(metrics::HTTP_REQUESTS_TOTAL, &[]);
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
async fn api(
    edge: Arc<Edge>,
    method: Method,
    path: warp::path::FullPath,
    query: String,
    headers: HeaderMap,
    remote: Option<SocketAddr>,
    body: Bytes,
) -> Result<Response, Rejection> {
    let (client, token) = match admit(&edge, &headers, remote) {
        Ok(admitted) => admitted,
        Err(refused) => return Ok(refused),
    };
    let query: HashMap<String, String> = serde_urlencoded_pairs(&query);
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
        Err(e) => Ok(error_response(e.code, &e.message)),
    }
}

/// The device label of a login, from its `User-Agent` (see [`topics::device`]).
pub fn device_label(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .and_then(topics::device::label)
}

/// `GET /api/v1/sessions/current`: whether the request opens a live session, without an error
/// status either way, so a page can check at start-up without a failed request in its console.
/// Signed in: the `user` reply of `GET /users/me`. Not: `200 {"kind":"signed_out"}`, and a
/// cookie that no longer opens a session is cleared.
async fn current_session(
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
        Err(e) => Ok(error_response(e.code, &e.message)),
    }
}

/// `a=1&b=x%20y` → map (percent-decoding; `+` is a space).
pub fn serde_urlencoded_pairs(q: &str) -> HashMap<String, String> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                    match u8::from_str_radix(hex, 16) {
                        Ok(b) => {
                            out.push(b);
                            i += 2;
                        }
                        Err(_) => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    q.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// The WebSocket settings of every connection: messages and frames up to `max_frame` (a larger
/// one closes the connection with 1009), a 4 KiB read buffer (tungstenite's 128 KiB default
/// costs ~135 KiB of memory per idle connection) and writes that go straight to the socket.
pub fn ws_config(max_frame: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(max_frame * 4)
        .max_message_size(Some(max_frame))
        .max_frame_size(Some(max_frame))
}

/// Is this a well-formed WebSocket upgrade request? Its `Sec-WebSocket-Key` when it is.
pub fn upgrade_key(headers: &HeaderMap) -> Option<String> {
    let has = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)?
        .to_str()
        .ok()?
        .to_string();
    (has(header::CONNECTION, "upgrade")
        && has(header::UPGRADE, "websocket")
        && headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_some_and(|v| v == "13"))
    .then_some(key)
}

async fn upgrade(
    edge: Arc<Edge>,
    stop: CancellationToken,
    headers: HeaderMap,
    remote: Option<SocketAddr>,
    on_upgrade: Option<OnUpgrade>,
) -> Result<Response, Rejection> {
    let refuse = |code: ErrorCode, msg: &str| {
        edge.metrics.inc(
            metrics::WS_HANDSHAKES_REFUSED_TOTAL,
            &[("reason", code.as_str())],
        );
        Ok(error_response(code, msg))
    };
    let (Some(key), Some(on_upgrade)) = (upgrade_key(&headers), on_upgrade) else {
        return refuse(ErrorCode::InvalidInput, "expected a WebSocket upgrade");
    };
    if !origin_allowed(&edge, &headers) {
        return refuse(ErrorCode::Forbidden, "origin not allowed");
    }
    if edge.hub.len() >= edge.settings.max_connections {
        return refuse(ErrorCode::Unavailable, "edge is full; try another");
    }
    let (offers_ours, proto_token) = ws_protocols(&headers);
    let cookie_name = session_cookie_name(edge.settings.secure_cookies);
    let Some(token) = proto_token.or_else(|| cookie(&headers, cookie_name)) else {
        return refuse(ErrorCode::Unauthorized, "no session");
    };
    let conn = edge.hub.next_id();
    let peer = peer(&headers, remote);
    // Slots are taken before the session check (so a refused address costs no worker call) and
    // held by the connection's task until its socket is gone, however it ends; a handshake that
    // fails on the way drops them here.
    let address_slot = match &peer {
        Some(a) => match edge
            .limits
            .address_conns
            .acquire(a.clone(), edge.settings.max_connections_per_address)
        {
            Some(slot) => Some(slot),
            None => {
                return refuse(
                    ErrorCode::RateLimited,
                    &format!(
                        "too many connections from this address ({} per edge); close one first",
                        edge.settings.max_connections_per_address
                    ),
                )
            }
        },
        None => None,
    };
    let verified = call(
        &edge,
        conn,
        Request::Verify,
        Auth::Token {
            token_hash: token_hash(&token),
        },
        peer.clone(),
    )
    .await;
    let grant = match verified {
        Ok(EdgeMessage::Reply {
            session: Some(g), ..
        }) => g,
        Ok(EdgeMessage::Reply {
            error: Some(code), ..
        }) if code != ErrorCode::Unauthorized => return refuse(code, "session check failed"),
        Ok(_) => return refuse(ErrorCode::Unauthorized, "invalid or expired session"),
        Err(e) => return refuse(e.code, &e.message),
    };
    let Some(user_slot) = edge
        .limits
        .user_conns
        .acquire(grant.user_id, edge.settings.max_connections_per_user)
    else {
        return refuse(
            ErrorCode::RateLimited,
            &format!(
                "too many connections for this user ({} per edge); close one first",
                edge.settings.max_connections_per_user
            ),
        );
    };
    let slots = (user_slot, address_slot);
    let ctx = ConnCtx {
        conn,
        user_id: grant.user_id,
        username: grant.username,
        session_id: grant.session_id,
        peer,
    };
    let e2 = edge.clone();
    edge.connections.spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade did not complete");
                return;
            }
        };
        let config = ws_config(e2.settings.max_frame_bytes);
        let mut socket =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        let (tx, rx) = tokio::sync::mpsc::channel(e2.settings.outbound_queue);
        let kill = CancellationToken::new();
        e2.hub.register(
            ctx.conn,
            ConnHandle {
                user_id: ctx.user_id,
                session_id: ctx.session_id.clone(),
                tx,
                kill: kill.clone(),
            },
        );
        e2.emit(EdgeEvent::Connected {
            edge: e2.settings.id.clone(),
            conn: ctx.conn,
            user_id: ctx.user_id,
            username: ctx.username.clone(),
            session_id: ctx.session_id.clone(),
        })
        .await;
        let closed_by_us = session::drive(e2.clone(), ctx.clone(), &mut socket, rx, kill, stop)
            .await
            .is_some();
        e2.hub.unregister(ctx.conn);
        drop(slots);
        e2.emit(EdgeEvent::Disconnected {
            edge: e2.settings.id.clone(),
            conn: ctx.conn,
            user_id: ctx.user_id,
        })
        .await;
        if closed_by_us {
            linger(socket.get_mut()).await;
        }
    });
    let mut resp = Response::new(warp::hyper::body::Bytes::new().into());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&derive_accept_key(key.as_bytes())).expect("base64 is ascii"),
    );
    h.insert(
        "x-switchboard-edge",
        HeaderValue::from_str(&edge.settings.id).expect("edge ids are ascii"),
    );
    if offers_ours {
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(WS_PROTOCOL),
        );
    }
    Ok(resp)
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
        .and_then(upgrade);
    let current = warp::path!("api" / "v1" / "sessions" / "current")
        .and(warp::get())
        .and(with_edge.clone())
        .and(warp::header::headers_cloned())
        .and(crate::server::remote())
        .and_then(current_session);
    let query = warp::query::raw().or(warp::any().map(String::new)).unify();
    let base = warp::path("api")
        .and(warp::path("v1"))
        .and(with_edge)
        .and(warp::method())
        .and(warp::path::full())
        .and(query)
        .and(warp::header::headers_cloned())
        .and(crate::server::remote());
    let max = edge.settings.max_frame_bytes as u64;
    let with_body = base
        .clone()
        .and(warp::post())
        .and(warp::body::content_length_limit(max))
        .and(warp::body::bytes())
        .and_then(api);
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
    let empty_post = base.clone().and(warp::post()).and(no_body).and_then(api);
    let without_body = base
        .and(warp::get().or(warp::delete()).unify())
        .and(warp::any().map(Bytes::new))
        .and_then(api);
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

/// After the edge sent a close frame: end our side (FIN) and read and drop what the client still
/// sends, for at most 2 s, until it closes too. Closing a socket that has unread data (the rest of
/// an oversized message, say) makes the kernel answer with a reset, and a proxy in between, nginx
/// here, may then drop the close frame it was still relaying: the client would see the
/// connection cut instead of the close code.
async fn linger<T: AsyncRead + AsyncWrite + Unpin>(io: &mut T) {
    let _ = io.shutdown().await;
    let mut sink = [0u8; 512];
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while matches!(io.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    #[test]
    fn finds_the_token() {
        let plain = session_cookie_name(false);
        let secure = session_cookie_name(true);
        assert_eq!((plain, secure), ("sb_session", "__Host-sb_session"));
        assert_eq!(
            bearer(&h(&[("authorization", "Bearer abc")]), plain).as_deref(),
            Some("abc")
        );
        assert_eq!(
            bearer(&h(&[("cookie", "x=1; sb_session=tok")]), plain).as_deref(),
            Some("tok")
        );
        assert_eq!(bearer(&h(&[("cookie", "sb_session=")]), plain), None);
        assert_eq!(bearer(&h(&[("authorization", "Basic x")]), plain), None);
        // With secure cookies only the prefixed cookie counts, not one a plain page could set.
        assert_eq!(bearer(&h(&[("cookie", "sb_session=tok")]), secure), None);
        assert_eq!(
            bearer(
                &h(&[("cookie", "sb_session=x; __Host-sb_session=tok")]),
                secure
            )
            .as_deref(),
            Some("tok")
        );
        assert_eq!(
            ws_protocols(&h(&[(
                "sec-websocket-protocol",
                "switchboard.v1, auth.T0k"
            )])),
            (true, Some("T0k".into()))
        );
        assert_eq!(ws_protocols(&h(&[])), (false, None));
        assert_eq!(token_hash("a").len(), 64);
    }

    #[test]
    fn recognises_upgrades_and_configures_small_buffers() {
        let good = [
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ];
        assert_eq!(
            upgrade_key(&h(&good)).as_deref(),
            Some("dGhlIHNhbXBsZSBub25jZQ==")
        );
        assert_eq!(upgrade_key(&h(&good[1..])), None, "no Connection: upgrade");
        assert_eq!(upgrade_key(&h(&good[..3])), None, "no key");
        let mut v12 = good;
        v12[2] = ("sec-websocket-version", "12");
        assert_eq!(upgrade_key(&h(&v12)), None);
        let c = ws_config(64 * 1024);
        assert_eq!(c.read_buffer_size, 4096);
        assert_eq!(c.max_message_size, Some(64 * 1024));
        assert_eq!(c.max_frame_size, Some(64 * 1024));
    }

    #[test]
    fn rate_limited_answers_say_when_to_retry() {
        let r = rate_limited(Duration::from_millis(1500));
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
    }

    #[test]
    fn labels_the_device_from_the_user_agent() {
        assert_eq!(
            device_label(&h(&[(
                "user-agent",
                "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
            )]))
            .as_deref(),
            Some("Chrome on Linux")
        );
        assert_eq!(device_label(&h(&[])), None);
        let mut m = HeaderMap::new();
        m.insert(
            header::USER_AGENT,
            HeaderValue::from_bytes(b"caf\xe9/1").unwrap(),
        );
        assert_eq!(device_label(&m), None, "not visible ASCII");
    }

    #[test]
    fn peers_and_queries() {
        assert_eq!(
            peer(&h(&[("x-forwarded-for", "1.2.3.4, 5.6.7.8")]), None).as_deref(),
            Some("1.2.3.4")
        );
        let r: SocketAddr = "127.0.0.9:5".parse().unwrap();
        assert_eq!(peer(&h(&[]), Some(r)).as_deref(), Some("127.0.0.9"));
        assert_eq!(peer(&h(&[]), None), None);
        let q = serde_urlencoded_pairs("username=a%20b&x=1+2&flag&bad=%zz&end=%4&u=%é");
        assert_eq!(q["username"], "a b");
        assert_eq!(q["x"], "1 2");
        assert_eq!(q["flag"], "");
        assert_eq!(q["bad"], "%zz");
        assert_eq!(q["end"], "%4");
        assert_eq!(q["u"], "%é");
    }

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
