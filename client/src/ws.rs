//! The WebSocket: the authenticated handshake, typed frames, request/reply by `rid` with the
//! events that arrive meanwhile queued, and reconnecting.

use crate::backoff::{retry, Backoff};
use crate::seqs::Seqs;
use crate::{Error, Result};
use futures::{SinkExt, StreamExt};
use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use topics::frames::Message as DmMessage;
use topics::{ClientFrame, ErrorBody, Event, Id, Request, Response, ServerFrame};

/// The stream under a [`Socket`].
pub type Ws = WebSocketStream<TcpStream>;

/// What a request/reply wait does with an event when [`ConnectOptions::max_queued_events`] are
/// already queued unread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WhenFull {
    /// The wait fails with [`Error::Backlog`] (the event that did not fit is gone with it):
    /// nothing is lost without the caller knowing.
    #[default]
    Fail,
    /// The event is dropped and counted ([`Socket::dropped_events`]), for callers that do not
    /// read events on this socket.
    DropNewest,
}

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
        Ok(Socket {
            ws,
            edge,
            inbox: Inbox::new(self.options.max_queued_events, self.options.when_full),
            next_rid: 0,
            seqs: Seqs::default(),
            reply_timeout: self.options.reply_timeout,
        })
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

/// Whether `f` is the reply or error frame of `rid`.
fn answers(f: &ServerFrame, rid: &str) -> bool {
    match f {
        ServerFrame::Reply { rid: Some(r), .. } | ServerFrame::Error { rid: Some(r), .. } => {
            r == rid
        }
        _ => false,
    }
}

/// What one read from the wire gave.
#[derive(Debug)]
pub enum Read {
    Frame(ServerFrame),
    /// A close frame, with its code.
    Closed(Option<u16>),
    /// The connection ended without a close frame.
    Eof,
    /// Nothing arrived in time.
    Nothing,
}

/// An open WebSocket to an edge.
pub struct Socket {
    ws: Ws,
    edge: Option<String>,
    inbox: Inbox,
    next_rid: u64,
    seqs: Seqs,
    reply_timeout: Duration,
}

/// The events that arrived while a reply was awaited, bounded.
#[derive(Debug)]
struct Inbox {
    events: VecDeque<Event>,
    capacity: usize,
    when_full: WhenFull,
    dropped: u64,
}

impl Inbox {
    fn new(capacity: usize, when_full: WhenFull) -> Self {
        Inbox {
            events: VecDeque::new(),
            capacity,
            when_full,
            dropped: 0,
        }
    }

    /// Sort a frame read while waiting for the answer to `rid`: the answer is given back,
    /// events are queued, anything else (other requests' answers, errors without a `rid`) is
    /// dropped.
    fn sort(&mut self, f: ServerFrame, rid: &str) -> Result<Option<ServerFrame>> {
        match f {
            ServerFrame::Event { data } => self.push(data).map(|_| None),
            f if answers(&f, rid) => Ok(Some(f)),
            _ => Ok(None),
        }
    }

    fn push(&mut self, e: Event) -> Result<()> {
        if self.events.len() < self.capacity {
            self.events.push_back(e);
            return Ok(());
        }
        match self.when_full {
            WhenFull::Fail => Err(Error::Backlog(self.events.len())),
            WhenFull::DropNewest => {
                self.dropped += 1;
                Ok(())
            }
        }
    }
}

impl Socket {
    /// Open a socket to `base` (`http://host:port`, or a `ws://…/ws` URL) with `token` and the
    /// default options.
    pub async fn connect(base: &str, token: &str) -> Result<Socket> {
        Connector::new(base, ConnectOptions::with_token(token))?
            .connect()
            .await
    }

    /// Which edge took the connection (`x-switchboard-edge`).
    pub fn edge(&self) -> Option<&str> {
        self.edge.as_deref()
    }

    /// The highest sequence seen per conversation on this socket.
    pub fn seqs(&self) -> &Seqs {
        &self.seqs
    }

    /// Carry over what an earlier socket saw (before [`Socket::sync`]).
    pub fn set_seqs(&mut self, seqs: Seqs) {
        self.seqs = seqs;
    }

    /// A request id not used before on this socket.
    pub fn next_rid(&mut self) -> String {
        self.next_rid += 1;
        format!("r{}", self.next_rid)
    }

    /// Send a request with a new `rid`; the `rid`.
    pub async fn send(&mut self, request: Request) -> Result<String> {
        let rid = self.next_rid();
        let frame = ClientFrame {
            rid: Some(rid.clone()),
            request,
        };
        let text = serde_json::to_string(&frame).expect("client frames always serialise");
        self.send_text(text).await?;
        Ok(rid)
    }

    /// Send a JSON frame as it is, with a new `rid` set on it (for frames the typed
    /// [`Request`] cannot express, such as invalid ones); the `rid`.
    pub async fn send_json(&mut self, mut frame: serde_json::Value) -> Result<String> {
        let rid = self.next_rid();
        if let Some(o) = frame.as_object_mut() {
            o.insert("rid".into(), serde_json::Value::String(rid.clone()));
        }
        self.send_text(frame.to_string()).await?;
        Ok(rid)
    }

    pub async fn send_text(&mut self, text: String) -> Result<()> {
        self.send_message(Message::text(text)).await
    }

    /// Send any WebSocket message (a ping, a close, a binary frame).
    pub async fn send_message(&mut self, m: Message) -> Result<()> {
        Ok(self.ws.send(m).await?)
    }

    /// Read the wire until a frame, a close or the end arrives, for at most `within` (pings and
    /// pongs are skipped). Queued events are not looked at.
    pub async fn read(&mut self, within: Duration) -> Result<Read> {
        self.read_until(Instant::now() + within).await
    }

    async fn read_until(&mut self, deadline: Instant) -> Result<Read> {
        loop {
            let m = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Ok(Read::Nothing),
                Ok(None) => return Ok(Read::Eof),
                Ok(Some(m)) => m?,
            };
            match m {
                Message::Text(t) => {
                    let f: ServerFrame =
                        serde_json::from_str(&t).map_err(|source| Error::BadFrame {
                            text: t.to_string(),
                            source,
                        })?;
                    self.seqs.observe(&f);
                    return Ok(Read::Frame(f));
                }
                Message::Close(c) => return Ok(Read::Closed(c.map(|c| u16::from(c.code)))),
                _ => continue,
            }
        }
    }

    /// Wait (up to the reply timeout) for the reply or error frame of `rid`, queueing the
    /// events that arrive meanwhile; other frames are dropped.
    pub async fn reply(&mut self, rid: &str) -> Result<ServerFrame> {
        self.reply_within(rid, self.reply_timeout).await
    }

    pub async fn reply_within(&mut self, rid: &str, within: Duration) -> Result<ServerFrame> {
        let deadline = Instant::now() + within;
        loop {
            match self.read_until(deadline).await? {
                Read::Frame(f) => {
                    if let Some(answer) = self.inbox.sort(f, rid)? {
                        return Ok(answer);
                    }
                }
                Read::Closed(code) => return Err(Error::Closed { code }),
                Read::Eof => return Err(Error::Closed { code: None }),
                Read::Nothing => return Err(Error::Timeout),
            }
        }
    }

    /// Send `request` and wait for its reply: the reply's data, or [`Error::Api`] with the
    /// error the server sent.
    pub async fn request(&mut self, request: Request) -> Result<Response> {
        let rid = self.send(request).await?;
        match self.reply(&rid).await? {
            ServerFrame::Reply { data, .. } => Ok(data),
            ServerFrame::Error { code, message, .. } => Err(Error::Api {
                status: None,
                error: ErrorBody { code, message },
            }),
            ServerFrame::Event { .. } => unreachable!("reply() returns replies and errors"),
        }
    }

    /// The next event: a queued one, or one arriving within `within` (`None` if none does).
    pub async fn next_event(&mut self, within: Duration) -> Result<Option<Event>> {
        if let Some(e) = self.inbox.events.pop_front() {
            return Ok(Some(e));
        }
        let deadline = Instant::now() + within;
        loop {
            match self.read_until(deadline).await? {
                Read::Frame(ServerFrame::Event { data }) => return Ok(Some(data)),
                Read::Frame(_) => continue,
                Read::Closed(code) => return Err(Error::Closed { code }),
                Read::Eof => return Err(Error::Closed { code: None }),
                Read::Nothing => return Ok(None),
            }
        }
    }

    /// Events queued unread.
    pub fn queued_events(&self) -> usize {
        self.inbox.events.len()
    }

    /// Events dropped under [`WhenFull::DropNewest`].
    pub fn dropped_events(&self) -> u64 {
        self.inbox.dropped
    }

    /// Wait up to `within` for the server to close the socket, skipping frames: its close
    /// code (`None` when it ended without a close frame).
    pub async fn closed(&mut self, within: Duration) -> Result<Option<u16>> {
        let deadline = Instant::now() + within;
        loop {
            match self.read_until(deadline).await? {
                Read::Frame(_) => continue,
                Read::Closed(code) => return Ok(code),
                Read::Eof => return Ok(None),
                Read::Nothing => return Err(Error::Timeout),
            }
        }
    }

    /// Ask `dm.sync` for every message after the last one seen in each followed conversation,
    /// following `more` until everything is in: the missed messages per conversation, in order.
    pub async fn sync(&mut self) -> Result<BTreeMap<Id, Vec<DmMessage>>> {
        let mut plan = self.seqs.plan_sync();
        let mut out: BTreeMap<Id, Vec<DmMessage>> = BTreeMap::new();
        while let Some(req) = plan.next_request(&self.seqs) {
            match self.request(req).await? {
                Response::Synced { conversations } => {
                    plan.absorb(&conversations);
                    for c in conversations {
                        out.entry(c.conversation_id).or_default().extend(c.messages);
                    }
                }
                other => return Err(Error::UnexpectedReply(format!("{other:?}"))),
            }
        }
        Ok(out)
    }

    /// Close politely (a close frame; errors of an already broken socket are ignored).
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }

    /// The bare stream, for callers that read and write frames themselves.
    pub fn into_inner(self) -> Ws {
        self.ws
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

    fn event(n: u64) -> ServerFrame {
        ServerFrame::Event {
            data: Event::ConnectionRemoved { user_id: Id(n) },
        }
    }

    fn reply(rid: Option<&str>) -> ServerFrame {
        ServerFrame::Reply {
            rid: rid.map(str::to_string),
            data: Response::Pong,
        }
    }

    #[test]
    fn keeps_events_aside_while_waiting_for_the_answer() {
        let mut inbox = Inbox::new(8, WhenFull::Fail);
        assert_eq!(inbox.sort(event(1), "r2").unwrap(), None);
        assert_eq!(inbox.sort(reply(Some("r1")), "r2").unwrap(), None);
        assert_eq!(inbox.sort(reply(None), "r2").unwrap(), None);
        let no_rid = ServerFrame::Error {
            rid: None,
            code: topics::ErrorCode::InvalidInput,
            message: "bad frame".into(),
        };
        assert_eq!(inbox.sort(no_rid, "r2").unwrap(), None);
        assert_eq!(inbox.sort(event(2), "r2").unwrap(), None);
        let err = ServerFrame::Error {
            rid: Some("r2".into()),
            code: topics::ErrorCode::NotFound,
            message: "no".into(),
        };
        assert_eq!(inbox.sort(err.clone(), "r2").unwrap(), Some(err));
        assert_eq!(
            inbox.sort(reply(Some("r3")), "r3").unwrap(),
            Some(reply(Some("r3")))
        );
        let kept: Vec<Event> = inbox.events.drain(..).collect();
        assert_eq!(
            kept,
            [
                Event::ConnectionRemoved { user_id: Id(1) },
                Event::ConnectionRemoved { user_id: Id(2) }
            ]
        );
    }

    #[test]
    fn a_full_queue_fails_or_drops_as_chosen() {
        let mut strict = Inbox::new(1, WhenFull::Fail);
        strict.sort(event(1), "r").unwrap();
        assert!(matches!(strict.sort(event(2), "r"), Err(Error::Backlog(1))));
        // the answer still gets through a full queue
        assert!(strict.sort(reply(Some("r")), "r").unwrap().is_some());
        let mut lax = Inbox::new(0, WhenFull::DropNewest);
        lax.sort(event(1), "r").unwrap();
        lax.sort(event(2), "r").unwrap();
        assert_eq!((lax.events.len(), lax.dropped), (0, 2));
    }

    #[test]
    fn defaults_bound_the_event_queue() {
        let o = ConnectOptions::with_token("t");
        assert_eq!(o.token.as_deref(), Some("t"));
        assert_eq!(o.max_queued_events, 4096);
        assert_eq!(o.when_full, WhenFull::Fail);
    }
}
