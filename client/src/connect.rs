//! Opening sockets: the base URL, the options, the TCP connect from a chosen local address and
//! the authenticated handshake; reconnecting with backoff.

use crate::backoff::{retry, Backoff};
use crate::seqs::Seqs;
use crate::socket::{Socket, WhenFull, Ws};
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Error as WsError;
use topics::frames::Message as DmMessage;
use topics::{ErrorBody, Id};

/// How to open a socket.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// Sent as the `auth.<token>` subprotocol. Without one only `switchboard.v1` is offered
    /// (the edge then looks for the session cookie, which this client does not send).
    pub token: Option<String>,
    /// An `Origin` header, as a browser would send (SDKs send none).
    pub origin: Option<String>,
    /// Connect from this local address (loopback 127.0.0.x, say); any address otherwise.
    pub local_addr: Option<IpAddr>,
    /// tungstenite's settings (buffer sizes, message limits); its defaults otherwise.
    pub config: Option<WebSocketConfig>,
    /// Limit on the TCP connect and the handshake together.
    pub connect_timeout: Option<Duration>,
    /// How long [`Socket::request`] waits for the reply.
    pub reply_timeout: Duration,
    /// Events kept while waiting for replies, until read with [`Socket::next_event`].
    pub max_queued_events: usize,
    pub when_full: WhenFull,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            token: None,
            origin: None,
            local_addr: None,
            config: None,
            connect_timeout: Some(Duration::from_secs(10)),
            reply_timeout: Duration::from_secs(10),
            max_queued_events: 4096,
            when_full: WhenFull::Fail,
        }
    }
}

impl ConnectOptions {
    /// The defaults with a session token.
    pub fn with_token(token: &str) -> Self {
        ConnectOptions {
            token: Some(token.to_string()),
            ..Default::default()
        }
    }
}

/// The WebSocket URL of a base URL: `http://host:port` and `ws://host:port` become
/// `ws://host:port/ws`; a URL with a path keeps it. TLS schemes are refused (see the crate doc).
pub fn ws_url(base: &str) -> Result<String> {
    let bad = |why: &str| Error::Url {
        url: base.to_string(),
        why: why.to_string(),
    };
    let rest = if let Some(r) = base.strip_prefix("http://") {
        r
    } else if let Some(r) = base.strip_prefix("ws://") {
        r
    } else if base.starts_with("https://") || base.starts_with("wss://") {
        return Err(bad("TLS is not supported: put a proxy in front"));
    } else {
        return Err(bad("expected http:// or ws://"));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if authority.is_empty() {
        return Err(bad("no host"));
    }
    let path = if path.is_empty() || path == "/" {
        "/ws"
    } else {
        path
    };
    Ok(format!("ws://{authority}{path}"))
}

/// Where and how to (re)open sockets: one base URL and one set of options.
#[derive(Clone, Debug)]
pub struct Connector {
    url: String,
    options: ConnectOptions,
}

impl Connector {
    pub fn new(base: &str, options: ConnectOptions) -> Result<Connector> {
        Ok(Connector {
            url: ws_url(base)?,
            options,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn options(&self) -> &ConnectOptions {
        &self.options
    }

    /// Use a new token from now on (after a `session.refresh` rotated it).
    pub fn set_token(&mut self, token: &str) {
        self.options.token = Some(token.to_string());
    }

    /// Open a socket: TCP from the local address if one is set, then the handshake.
    pub async fn connect(&self) -> Result<Socket> {
        let open = open(&self.url, &self.options);
        let (ws, edge) = match self.options.connect_timeout {
            Some(t) => tokio::time::timeout(t, open)
                .await
                .map_err(|_| Error::Timeout)??,
            None => open.await?,
        };
        Ok(Socket::new(ws, edge, &self.options))
    }

    /// Open a socket, retrying with `backoff` while the failure is retryable (a refused
    /// session is not).
    pub async fn reconnect(&self, backoff: &Backoff) -> Result<Socket> {
        retry(backoff, |_| self.connect()).await
    }

    /// Reconnect, carry over the sequences the previous socket saw, and `dm.sync` what was
    /// missed meanwhile: the new socket and the missed messages per conversation.
    pub async fn resume(
        &self,
        backoff: &Backoff,
        seqs: Seqs,
    ) -> Result<(Socket, BTreeMap<Id, Vec<DmMessage>>)> {
        let mut socket = self.reconnect(backoff).await?;
        socket.set_seqs(seqs);
        let missed = socket.sync().await?;
        Ok((socket, missed))
    }
}

/// TCP connect and handshake: the stream and the `x-switchboard-edge` that took it.
async fn open(url: &str, o: &ConnectOptions) -> Result<(Ws, Option<String>)> {
    let mut req = url.into_client_request()?;
    let bad = |why: &str| Error::Url {
        url: url.to_string(),
        why: why.to_string(),
    };
    let host = req
        .uri()
        .host()
        .ok_or_else(|| bad("no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = req.uri().port_u16().unwrap_or(80);
    let dst = pick(
        tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(Error::Connect)?,
        o.local_addr,
    )
    .ok_or_else(|| bad("the host has no address"))?;
    let sock = if dst.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(Error::Connect)?;
    if let Some(ip) = o.local_addr {
        sock.bind(SocketAddr::new(ip, 0)).map_err(Error::Bind)?;
    }
    let stream = sock.connect(dst).await.map_err(Error::Connect)?;
    let _ = stream.set_nodelay(true);
    let protos = match &o.token {
        Some(t) => format!(
            "{}, {}{t}",
            topics::WS_PROTOCOL,
            topics::WS_AUTH_PROTOCOL_PREFIX
        ),
        None => topics::WS_PROTOCOL.to_string(),
    };
    let protos = HeaderValue::from_str(&protos).map_err(|_| Error::BadToken)?;
    req.headers_mut().insert("sec-websocket-protocol", protos);
    if let Some(origin) = &o.origin {
        let v = HeaderValue::from_str(origin).map_err(|_| bad("the origin is not a header"))?;
        req.headers_mut().insert("origin", v);
    }
    match tokio_tungstenite::client_async_with_config(req, stream, o.config).await {
        Ok((ws, resp)) => {
            let edge = resp
                .headers()
                .get("x-switchboard-edge")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            Ok((ws, edge))
        }
        Err(WsError::Http(resp)) => Err(Error::Refused {
            status: resp.status().as_u16(),
            body: resp
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice::<ErrorBody>(b).ok()),
        }),
        Err(e) => Err(e.into()),
    }
}

/// The first address of the local address's family (any first without one).
fn pick(addrs: impl Iterator<Item = SocketAddr>, local: Option<IpAddr>) -> Option<SocketAddr> {
    let mut addrs = addrs.peekable();
    let first = addrs.peek().copied();
    match local {
        Some(l) => addrs.find(|a| a.is_ipv4() == l.is_ipv4()),
        None => first,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_a_base_into_the_websocket_url() {
        assert_eq!(
            ws_url("http://127.0.0.1:8080").unwrap(),
            "ws://127.0.0.1:8080/ws"
        );
        assert_eq!(
            ws_url("http://127.0.0.1:8080/").unwrap(),
            "ws://127.0.0.1:8080/ws"
        );
        assert_eq!(ws_url("ws://h:1").unwrap(), "ws://h:1/ws");
        assert_eq!(ws_url("ws://h:1/ws").unwrap(), "ws://h:1/ws");
        assert_eq!(ws_url("ws://h:1/other").unwrap(), "ws://h:1/other");
        for bad in ["wss://h/ws", "https://h", "h:1", "http://", "ftp://h"] {
            assert!(matches!(ws_url(bad), Err(Error::Url { .. })), "{bad}");
        }
    }

    #[test]
    fn picks_an_address_of_the_local_family() {
        let v6: SocketAddr = "[::1]:80".parse().unwrap();
        let v4: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let local4: IpAddr = "127.0.0.2".parse().unwrap();
        assert_eq!(pick([v6, v4].into_iter(), Some(local4)), Some(v4));
        assert_eq!(pick([v6, v4].into_iter(), None), Some(v6));
        assert_eq!(pick([v6].into_iter(), Some(local4)), None);
    }

    #[test]
    fn defaults_bound_the_event_queue() {
        let o = ConnectOptions::with_token("t");
        assert_eq!(o.token.as_deref(), Some("t"));
        assert_eq!(o.max_queued_events, 4096);
        assert_eq!(o.when_full, WhenFull::Fail);
    }
}
