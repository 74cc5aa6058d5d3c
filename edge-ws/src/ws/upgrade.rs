//! The WebSocket handshake: check the upgrade, the origin, the edge's and the client's
//! connection caps and the session (the check also puts the connection in the registry), then
//! register the connection in the hub, answer 101 and start the connection's task
//! ([`connection::run`]) on the upgraded socket.

use super::connection::{self, ConnCtx};
use crate::http::auth::{
    cookie, origin_allowed, peer, session_cookie_name, token_hash, ws_protocols,
};
use crate::http::error_response;
use crate::hub::ConnHandle;
use crate::rpc::call;
use crate::Edge;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use topics::{Auth, EdgeEvent, EdgeMessage, ErrorCode, Request, WS_PROTOCOL};
use warp::http::{header, HeaderMap, HeaderValue, StatusCode};
use warp::hyper::upgrade::OnUpgrade;
use warp::reply::Response;
use warp::Rejection;

/// Frames written to a socket gather up to this many bytes before they go to it; a flush sends
/// them at once.
const WRITE_BUFFER: usize = 4 * 1024;

/// The WebSocket settings of every connection: messages and frames up to `max_frame` (a larger
/// one closes the connection with 1009), a 4 KiB read buffer (tungstenite's 128 KiB default
/// costs ~135 KiB of memory per idle connection) and a 4 KiB write buffer: frames queued
/// together go out in one write when the connection flushes ([`WRITE_BUFFER`]; with none, each
/// frame was a write of its own).
pub fn ws_config(max_frame: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(WRITE_BUFFER + max_frame * 4)
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

pub async fn upgrade(
    edge: Arc<Edge>,
    stop: CancellationToken,
    headers: HeaderMap,
    remote: Option<SocketAddr>,
    on_upgrade: Option<OnUpgrade>,
) -> Result<Response, Rejection> {
    let refuse = |code: ErrorCode, msg: &str| {
        edge.metrics.ws_handshakes_refused.get(code.as_str()).inc();
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
        Err(e) => {
            // A check that may have been sent may still register the connection: mark it
            // abandoned (one the edge never sent needs nothing).
            if e.maybe_sent {
                edge.emit(EdgeEvent::Abandoned {
                    edge: edge.settings.id.clone(),
                    conn,
                })
                .await;
            }
            return refuse(e.error.code, &e.error.message);
        }
    };
    // From here the connection is in the registry (the check put it there): every way out
    // takes it back out, here or when the connection's task ends.
    let Some(user_slot) = edge
        .limits
        .user_conns
        .acquire(grant.user_id, edge.settings.max_connections_per_user)
    else {
        edge.emit(EdgeEvent::Disconnected {
            edge: edge.settings.id.clone(),
            conn,
            user_id: grant.user_id,
        })
        .await;
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
        session_id: grant.session_id,
        peer,
    };
    // In the hub before the answer goes out: what is delivered to the connection from now on
    // waits in its queue until the socket is open.
    let (tx, rx) = mpsc::channel(edge.settings.outbound_queue);
    let kill = CancellationToken::new();
    edge.hub.register(
        conn,
        ConnHandle {
            user_id: ctx.user_id,
            session_id: ctx.session_id.clone(),
            tx,
            kill: kill.clone(),
        },
    );
    edge.connections.spawn(connection::run(
        edge.clone(),
        ctx,
        on_upgrade,
        (rx, kill),
        slots,
        stop,
    ));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::tests::h;

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

    /// A well-formed upgrade that carries a session token.
    fn offer() -> HeaderMap {
        h(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("sec-websocket-protocol", "switchboard.v1, auth.some-token"),
        ])
    }

    /// The status of a refused handshake, checking that the edge counted it under `code`.
    async fn refused(edge: &Arc<Edge>, headers: HeaderMap, code: ErrorCode) -> u16 {
        let on_upgrade = Some(warp::hyper::upgrade::on(warp::http::Request::new(())));
        let r = upgrade(
            edge.clone(),
            CancellationToken::new(),
            headers,
            None,
            on_upgrade,
        )
        .await
        .expect("answered");
        let counted = edge.metrics.ws_handshakes_refused.get(code.as_str()).get();
        assert_eq!(counted, 1, "counted as {code:?}");
        r.status().as_u16()
    }

    /// What is not an upgrade, and an upgrade to an edge at its connection cap, are refused with
    /// their typed error before any session check.
    #[tokio::test]
    async fn a_request_that_is_no_upgrade_and_an_edge_that_is_full_are_refused() {
        let edge = Edge::for_tests(Default::default());
        let plain = h(&[("sec-websocket-protocol", "auth.some-token")]);
        assert_eq!(refused(&edge, plain, ErrorCode::InvalidInput).await, 400);
        let full = Edge::for_tests(crate::EdgeSettings {
            max_connections: 0,
            ..Default::default()
        });
        assert_eq!(refused(&full, offer(), ErrorCode::Unavailable).await, 503);
        assert_eq!(edge.hub.len() + full.hub.len(), 0);
    }

    /// A session check that cannot be published is refused `unavailable`; the check may have
    /// reached Kafka all the same, so the edge also announces the connection abandoned (so that a
    /// late check cannot leave it in the registry): two publishes, both failed here, where no
    /// broker answers. Real time: librdkafka's own timers.
    #[tokio::test]
    async fn a_session_check_that_cannot_be_published_is_refused_and_the_connection_abandoned() {
        let edge = Edge::without_broker(100);
        assert_eq!(refused(&edge, offer(), ErrorCode::Unavailable).await, 503);
        assert_eq!(
            edge.metrics.publish_failures.get(),
            2,
            "the check and the abandon"
        );
        assert_eq!(edge.hub.len(), 0, "no connection registered");
    }

    /// An edge too loaded to wait for one more answer refuses the handshake `unavailable` without
    /// sending the session check, and so announces nothing: a connection it never sent cannot be
    /// in the registry. (With no broker here, a publish would fail, awaited by the handshake, and
    /// be counted.)
    #[tokio::test]
    async fn an_overloaded_edge_refuses_the_handshake_and_announces_nothing() {
        let edge = Edge::without_broker(100);
        let held: Vec<_> = (0..crate::hub::MAX_PENDING as u64)
            .map(|i| edge.hub.expect(u64::MAX - i).expect("room"))
            .collect();
        assert_eq!(refused(&edge, offer(), ErrorCode::Unavailable).await, 503);
        assert_eq!(edge.metrics.publish_failures.get(), 0, "nothing published");
        assert_eq!(edge.hub.len(), 0, "no connection registered");
        drop(held);
    }
}
