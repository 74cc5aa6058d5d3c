//! Sockets of the load generator: the open-files limit, loopback source addresses, the small
//! WebSocket buffers, and the short failure labels of the report. The handshake itself (token
//! in `Sec-WebSocket-Protocol`, as browsers and SDKs send it) is the Rust SDK's (`client/`).
//!
//! A client socket bound to `127.0.0.x:0` gets its own ephemeral port range (~28k ports), so
//! spreading sockets over 127.0.0.2 ..= 127.0.0.50 lifts the ceiling to ~1.4M without
//! `IP_BIND_ADDRESS_NO_PORT` (which no safe crate in the workspace exposes).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Error as WsError;

pub use client::Ws;

/// Lift the soft open-files limit to the hard one; returns (soft, hard) after.
pub fn raise_nofile() -> (u64, u64) {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut l = getrlimit(Resource::Nofile);
    if l.current != l.maximum {
        l.current = l.maximum;
        let _ = setrlimit(Resource::Nofile, l);
    }
    let l = getrlimit(Resource::Nofile);
    (l.current.unwrap_or(u64::MAX), l.maximum.unwrap_or(u64::MAX))
}

/// Source address of socket `i`: 127.0.0.2, .3, … round robin over `n` addresses (None: any).
pub fn source_addr(i: usize, n: u8) -> Option<IpAddr> {
    (n > 0).then(|| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % n as usize) as u8)))
}

/// Why a handshake failed, as a short label for the failure table.
pub fn reason(e: &WsError) -> String {
    match e {
        WsError::Http(resp) => format!("http_{}", resp.status().as_u16()),
        WsError::Io(io) => io_reason(io),
        WsError::ConnectionClosed | WsError::AlreadyClosed => "closed".into(),
        WsError::Protocol(_) => "ws_protocol".into(),
        WsError::Capacity(_) => "ws_capacity".into(),
        WsError::Url(_) => "bad_url".into(),
        _ => "ws_other".into(),
    }
}

pub fn io_reason(e: &std::io::Error) -> String {
    let kind = format!("{:?}", e.kind());
    let mut out = String::from("io_");
    for (i, ch) in kind.chars().enumerate() {
        if ch.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(ch.to_ascii_lowercase());
    }
    out
}

/// The label of an SDK error: how a connect failed (`bind_…` when the source address could not
/// be bound), or the error code the server answered.
pub fn label(e: &client::Error) -> String {
    use client::Error as E;
    match e {
        E::Url { .. } => "bad_url".into(),
        E::BadToken => "bad_token".into(),
        E::Bind(io) => format!("bind_{}", io_reason(io)),
        E::Connect(io) => io_reason(io),
        E::Refused { status, .. } | E::Unexpected { status, .. } => format!("http_{status}"),
        E::WebSocket(ws) => reason(ws),
        E::Http(_) => "http_failed".into(),
        E::Api { error, .. } => error.code.as_str().into(),
        E::UnexpectedReply(_) => "unexpected_reply".into(),
        E::BadFrame { .. } => "bad_frame".into(),
        E::Timeout => "timeout".into(),
        E::Closed { .. } => "closed".into(),
        E::Backlog(_) => "backlog".into(),
    }
}

/// What a successful handshake tells us.
pub struct Opened {
    pub ws: Ws,
    /// `x-switchboard-edge`: which edge took the connection.
    pub edge: String,
}

/// The client's WebSocket settings: a 4 KiB read buffer (tungstenite's 128 KiB default would
/// cost the generator ~135 KiB per idle socket) and frames written at once.
pub fn client_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
}

/// An SDK socket to `target` (`host:port`) from `src` (if any), with the small buffers. It
/// keeps no events while it waits for replies: the generator reads events itself.
pub async fn connect_socket(
    target: &str,
    token: &str,
    src: Option<IpAddr>,
    timeout: Duration,
) -> Result<client::Socket, String> {
    let _: SocketAddr = target.parse().map_err(|_| "bad_target".to_string())?;
    let options = client::ConnectOptions {
        token: Some(token.to_string()),
        local_addr: src,
        config: Some(client_config()),
        connect_timeout: Some(timeout),
        reply_timeout: Duration::from_secs(20),
        max_queued_events: 0,
        when_full: client::WhenFull::DropNewest,
        ..Default::default()
    };
    let connector =
        client::Connector::new(&format!("ws://{target}/ws"), options).map_err(|e| label(&e))?;
    connector.connect().await.map_err(|e| label(&e))
}

/// TCP connect from `src` (if any), then the WebSocket handshake with the session token.
pub async fn connect_ws(
    target: &str,
    token: &str,
    src: Option<IpAddr>,
    timeout: Duration,
) -> Result<Opened, String> {
    let socket = connect_socket(target, token, src, timeout).await?;
    let edge = socket.edge().unwrap_or("unknown").to_string();
    Ok(Opened {
        ws: socket.into_inner(),
        edge,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_over_source_addresses() {
        assert_eq!(source_addr(0, 49), Some("127.0.0.2".parse().unwrap()));
        assert_eq!(source_addr(48, 49), Some("127.0.0.50".parse().unwrap()));
        assert_eq!(source_addr(49, 49), Some("127.0.0.2".parse().unwrap()));
        assert_eq!(source_addr(7, 0), None);
    }

    #[test]
    fn labels_failures() {
        let e = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(io_reason(&e), "io_connection_refused");
        assert_eq!(reason(&WsError::Io(e)), "io_connection_refused");
        assert_eq!(reason(&WsError::ConnectionClosed), "closed");
        let e = std::io::Error::from(std::io::ErrorKind::AddrNotAvailable);
        assert_eq!(label(&client::Error::Bind(e)), "bind_io_addr_not_available");
        let refused = client::Error::Refused {
            status: 429,
            body: None,
        };
        assert_eq!(label(&refused), "http_429");
        let api = client::Error::Api {
            status: None,
            error: topics::ErrorBody::new(topics::ErrorCode::RateLimited, "slow down"),
        };
        assert_eq!(label(&api), "rate_limited");
        assert_eq!(label(&client::Error::Timeout), "timeout");
    }

    #[test]
    fn lifts_the_open_files_limit() {
        let (soft, hard) = raise_nofile();
        assert_eq!(soft, hard);
    }

    #[tokio::test]
    async fn reports_refused_and_timed_out_handshakes() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        // Accepts TCP (backlog) but never answers the upgrade.
        let r = connect_ws(&addr, "t", None, Duration::from_millis(200)).await;
        assert_eq!(r.err().as_deref(), Some("timeout"));
        drop(l);
        let r = connect_ws(&addr, "t", source_addr(0, 1), Duration::from_secs(5)).await;
        assert_eq!(r.err().as_deref(), Some("io_connection_refused"));
        assert_eq!(
            connect_ws("nope", "t", None, Duration::from_secs(1))
                .await
                .err()
                .as_deref(),
            Some("bad_target")
        );
    }
}
