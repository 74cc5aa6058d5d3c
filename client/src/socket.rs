//! An open socket: typed frames out with a fresh `rid`, typed frames in, the reply matched by
//! `rid` while events wait in a bounded queue, and `dm.sync` from the sequences seen.

use crate::connect::{ConnectOptions, Connector};
use crate::seqs::Seqs;
use crate::{Error, Result};
use futures::{SinkExt, StreamExt};
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
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
    pub(crate) fn new(ws: Ws, edge: Option<String>, o: &ConnectOptions) -> Socket {
        Socket {
            ws,
            edge,
            inbox: Inbox::new(o.max_queued_events, o.when_full),
            next_rid: 0,
            seqs: Seqs::default(),
            reply_timeout: o.reply_timeout,
        }
    }

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
}
