//! Who is calling: the session token (`Authorization: Bearer`, the session cookie or a
//! WebSocket subprotocol), its hash, the session cookie the edge sets, the origin check, the
//! client's address and the device label of a login.

use crate::Edge;
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use topics::{SECURE_SESSION_COOKIE, SESSION_COOKIE, WS_AUTH_PROTOCOL_PREFIX, WS_PROTOCOL};
use warp::http::{header, HeaderMap, HeaderValue};

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

pub(crate) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
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

pub(crate) fn session_cookie(edge: &Edge, value: &str, max_age_s: u64) -> HeaderValue {
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

/// The device label of a login, from its `User-Agent` (see [`topics::device`]).
pub fn device_label(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .and_then(topics::device::label)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::tests::h;

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
    fn peers() {
        assert_eq!(
            peer(&h(&[("x-forwarded-for", "1.2.3.4, 5.6.7.8")]), None).as_deref(),
            Some("1.2.3.4")
        );
        let r: SocketAddr = "127.0.0.9:5".parse().unwrap();
        assert_eq!(peer(&h(&[]), Some(r)).as_deref(), Some("127.0.0.9"));
        assert_eq!(peer(&h(&[]), None), None);
    }
}
