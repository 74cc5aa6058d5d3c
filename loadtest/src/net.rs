//! Sockets: the open-files limit, loopback source addresses, and the authenticated WebSocket
//! handshake (token in the `Sec-WebSocket-Protocol` header, as browsers and SDKs send it).
//!
//! A client socket bound to `127.0.0.x:0` gets its own ephemeral port range (~28k ports), so
//! spreading sockets over 127.0.0.2 ..= 127.0.0.50 lifts the ceiling to ~1.4M without
//! `IP_BIND_ADDRESS_NO_PORT` (which no safe crate in the workspace exposes).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::WebSocketStream;

pub type Ws = WebSocketStream<TcpStream>;

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

/// TCP connect from `src` (if any), then the WebSocket handshake with the session token.
pub async fn connect_ws(
    target: &str,
    token: &str,
    src: Option<IpAddr>,
    timeout: Duration,
) -> Result<Opened, String> {
    let fut = async {
        let dst: SocketAddr = target.parse().map_err(|_| "bad_target".to_string())?;
        let sock = TcpSocket::new_v4().map_err(|e| io_reason(&e))?;
        if let Some(ip) = src {
            sock.bind(SocketAddr::new(ip, 0))
                .map_err(|e| format!("bind_{}", io_reason(&e)))?;
        }
        let stream = sock.connect(dst).await.map_err(|e| io_reason(&e))?;
        let _ = stream.set_nodelay(true);
        let mut req = format!("ws://{target}/ws")
            .into_client_request()
            .map_err(|e| reason(&e))?;
        let protos = HeaderValue::from_str(&format!("switchboard.v1, auth.{token}"))
            .map_err(|_| "bad_token".to_string())?;
        req.headers_mut().insert("sec-websocket-protocol", protos);
        let (ws, resp) =
            tokio_tungstenite::client_async_with_config(req, stream, Some(client_config()))
                .await
                .map_err(|e| reason(&e))?;
        let edge = resp
            .headers()
            .get("x-switchboard-edge")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("unknown")
            .to_string();
        Ok(Opened { ws, edge })
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err("timeout".into()),
    }
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
