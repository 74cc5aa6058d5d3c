//! One WebSocket connection, generic over any `Stream + Sink` of messages so unit tests can drive
//! it through channels. Reads frames (size limit, rate limit, parse), publishes them without
//! waiting for the broker (a publish that fails later comes back through the hub as an error
//! frame), writes what the hub queues, pings, and closes on idle, on revocation, on a full queue or
//! at shutdown.
//! [`run`] is a connection's whole life after the handshake: registered, driven, unregistered.

use super::upgrade::ws_config;
use crate::hub::Outbound;
use crate::limits::Slot;
use crate::ratelimit::TokenBucket;
use crate::rpc::publish_frame;
use crate::Edge;
use futures::{Sink, SinkExt, Stream, StreamExt};
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use topics::frames::{parse_client_frame, salvage_rid};
use topics::{Auth, EdgeEvent, Envelope, ErrorBody, ErrorCode, Id, ServerFrame};
use warp::hyper::upgrade::OnUpgrade;

/// Close codes this edge uses (4000–4999 are the application's own).
pub mod close_code {
    pub const GOING_AWAY: u16 = 1001;
    /// A client close frame that carried no code (RFC 6455 §7.1.5; never sent on the wire).
    pub const NO_STATUS: u16 = 1005;
    /// A text message that is not UTF-8 (RFC 6455 §8.1).
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const TOO_BIG: u16 = 1009;
    pub const IDLE: u16 = 4000;
    pub const REVOKED: u16 = 4001;
    pub const TOO_SLOW: u16 = 4002;
}

/// Who is on the other end of a connection.
#[derive(Clone, Debug)]
pub struct ConnCtx {
    pub conn: u64,
    pub user_id: Id,
    pub session_id: String,
    pub peer: Option<String>,
}

/// Turn a client text frame into an envelope, or into the error frame the client gets instead.
pub fn prepare(
    edge: &Edge,
    ctx: &ConnCtx,
    text: &str,
    within_rate: bool,
) -> Result<Envelope, Box<ServerFrame>> {
    let fail = |code, msg: &str| {
        Box::new(ServerFrame::error(
            salvage_rid(text),
            ErrorBody::new(code, msg),
        ))
    };
    if text.len() > edge.settings.max_request_bytes {
        return Err(fail(
            ErrorCode::PayloadTooLarge,
            "frame is larger than the limit",
        ));
    }
    if !within_rate {
        return Err(fail(ErrorCode::RateLimited, "too many frames; slow down"));
    }
    let frame =
        parse_client_frame(text).map_err(|e| Box::new(ServerFrame::error(salvage_rid(text), e)))?;
    if !frame.request.allowed_over_ws() {
        return Err(Box::new(ServerFrame::error(
            frame.rid,
            ErrorBody::new(
                ErrorCode::InvalidInput,
                format!("{} is not available over WebSocket", frame.request.kind()),
            ),
        )));
    }
    Ok(crate::rpc::envelope(
        edge,
        ctx.conn,
        edge.hub.next_id(),
        frame.rid,
        Auth::Session {
            session_id: ctx.session_id.clone(),
            user_id: ctx.user_id,
        },
        ctx.peer.clone(),
        frame.request,
    ))
}

/// How long one write may take before the client counts as gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Write one message, giving up on a client that does not read.
async fn put<S: Sink<Message> + Unpin>(socket: &mut S, msg: Message) -> bool {
    put_all(socket, vec![msg]).await
}

/// Write several frames and flush once: what queued for a socket while it was being written goes
/// out with one flush (one write to the socket where there were one per frame).
async fn put_all<S: Sink<Message> + Unpin>(socket: &mut S, frames: Vec<Message>) -> bool {
    let write = async {
        for m in frames {
            socket.feed(m).await?;
        }
        socket.flush().await
    };
    matches!(tokio::time::timeout(WRITE_TIMEOUT, write).await, Ok(Ok(())))
}

/// At most this many queued frames are written before one flush.
const FRAMES_PER_FLUSH: usize = 64;

enum Step {
    In(Option<Result<Message, WsError>>),
    Out(Option<Outbound>),
    Ping,
    Idle,
    Kill,
    /// The frame bucket has a token again: read on.
    Resume,
    /// The oldest request waiting for its answer reached its deadline.
    Expire,
}

/// Run one connection until it ends. Returns the close code it ended with: the edge's own, or
/// the client's when the edge answered the client's close (None: the client went away without
/// a close handshake).
pub async fn drive<S>(
    edge: Arc<Edge>,
    ctx: ConnCtx,
    mut socket: S,
    mut rx: mpsc::Receiver<Outbound>,
    kill: CancellationToken,
    stop: CancellationToken,
) -> Option<u16>
where
    S: Stream<Item = Result<Message, WsError>> + Sink<Message> + Unpin,
{
    let s = &edge.settings;
    let now = || tokio::time::Instant::now().into_std();
    // Every frame the client sends but a close takes a token: text, binary, ping and pong.
    let mut bucket = TokenBucket::new(s.frames_per_second, s.frame_burst, now());
    let idle = Duration::from_millis(s.idle_timeout_ms);
    // Set when a ping or pong left the bucket empty: the socket is not read until a token is
    // back (TCP backpressure). A control frame cannot be refused with an error frame (it has no
    // request id) and tungstenite queues the pong for a ping as it reads it, so the only way to
    // meter pings is to read no faster than the rate.
    let resume = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(resume);
    let mut paused = false;
    // Pings every third of the idle timeout; the idle deadline is its own timer, moved on by
    // every frame the client sends (pongs included), so a silent socket closes exactly `idle`
    // after the last thing it sent, not at the next ping tick.
    let mut ping = tokio::time::interval(idle / 3);
    ping.tick().await;
    let idle_deadline = tokio::time::sleep(idle);
    tokio::pin!(idle_deadline);
    let close = |code: u16, reason: &str| {
        Message::Close(Some(CloseFrame {
            code: CloseCode::from(code),
            reason: reason.to_string().into(),
        }))
    };
    // An outbound item taken from the queue while gathering frames for one write, handled next.
    let mut next_out: Option<Outbound> = None;
    // One timer for every request waiting for its answer: set to the oldest one's deadline while
    // any waits (`armed`), answering `unavailable` for those unanswered when it fires.
    let deadline = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(deadline);
    let mut armed = false;
    loop {
        let step = if let Some(o) = next_out.take() {
            Step::Out(Some(o))
        } else {
            tokio::select! {
            m = socket.next(), if !paused => Step::In(m),
            _ = &mut resume, if paused => Step::Resume,
            _ = &mut deadline, if armed => Step::Expire,
            o = rx.recv() => Step::Out(o),
            _ = ping.tick() => Step::Ping,
            _ = &mut idle_deadline => Step::Idle,
            _ = kill.cancelled() => Step::Kill,
            _ = stop.cancelled() => Step::Kill,
            }
        };
        match step {
            Step::In(None) => return None,
            Step::In(Some(Err(e))) => {
                tracing::debug!(error = %runtime::telemetry::Chain(&e), conn = ctx.conn, "socket read failed");
                let (code, why) = match e {
                    WsError::Capacity(_) => (close_code::TOO_BIG, "message too big"),
                    WsError::Utf8(_) => (close_code::INVALID_PAYLOAD, "text is not valid UTF-8"),
                    _ => return None,
                };
                edge.metrics.ws_frames_rejected.inc();
                let _ = put(&mut socket, close(code, why)).await;
                return Some(code);
            }
            Step::Resume => paused = false,
            Step::Expire => {
                let (due, next) = edge.hub.expire(ctx.conn, tokio::time::Instant::now());
                armed = next.is_some();
                if let Some(at) = next {
                    deadline.as_mut().reset(at);
                }
                if !due.is_empty() {
                    edge.metrics.ws_requests_timed_out.inc_by(due.len() as u64);
                    let frames = due
                        .into_iter()
                        .map(|rid| {
                            let error = ErrorBody::new(
                                ErrorCode::Unavailable,
                                "the service did not answer in time; retry",
                            );
                            Message::text(ServerFrame::error(rid, error).to_json())
                        })
                        .collect();
                    if !put_all(&mut socket, frames).await {
                        return None;
                    }
                }
            }
            Step::In(Some(Ok(msg))) => {
                let last_seen = now();
                idle_deadline
                    .as_mut()
                    .reset(tokio::time::Instant::now() + idle);
                if let Message::Close(frame) = msg {
                    // Answer the client's close (RFC 6455 §5.5.1): tungstenite has queued the
                    // echo of its frame; flushing writes it. Then the edge closes TCP.
                    let _ = tokio::time::timeout(WRITE_TIMEOUT, socket.flush()).await;
                    return Some(frame.map_or(close_code::NO_STATUS, |f| u16::from(f.code)));
                }
                let within_rate = bucket.try_take(last_seen);
                let reply = if let Message::Text(text) = &msg {
                    edge.metrics.ws_frames_in.inc();
                    match prepare(&edge, &ctx, text.as_str(), within_rate) {
                        Ok(env) => match publish_frame(&edge, &env) {
                            Ok(()) => {
                                if !armed {
                                    if let Some(at) = edge.hub.next_deadline(ctx.conn) {
                                        deadline.as_mut().reset(at);
                                        armed = true;
                                    }
                                }
                                None
                            }
                            Err(e) => Some(ServerFrame::error(env.rid.clone(), e)),
                        },
                        Err(frame) => Some(*frame),
                    }
                } else if msg.is_binary() {
                    let (code, why) = if within_rate {
                        (
                            ErrorCode::InvalidInput,
                            "binary frames are not supported; send JSON text",
                        )
                    } else {
                        (ErrorCode::RateLimited, "too many frames; slow down")
                    };
                    Some(ServerFrame::error(None, ErrorBody::new(code, why)))
                } else {
                    // ping / pong: liveness only. Once one leaves the bucket empty, read
                    // nothing more until a token is back (a wait past the idle timeout lets the
                    // idle close come first).
                    if !within_rate {
                        edge.metrics.ws_frames_rejected.inc();
                    }
                    let wait = bucket.wait(last_seen);
                    if !wait.is_zero() {
                        let wait = wait.min(idle + Duration::from_secs(1));
                        resume.as_mut().reset(tokio::time::Instant::now() + wait);
                        paused = true;
                    }
                    None
                };
                if let Some(frame) = reply {
                    edge.metrics.ws_frames_rejected.inc();
                    if !put(&mut socket, Message::text(frame.to_json())).await {
                        return None;
                    }
                }
            }
            Step::Out(Some(Outbound::Text(t))) => {
                let mut frames = vec![Message::Text(t)];
                while frames.len() < FRAMES_PER_FLUSH {
                    match rx.try_recv() {
                        Ok(Outbound::Text(t)) => frames.push(Message::Text(t)),
                        Ok(other) => {
                            next_out = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                if !put_all(&mut socket, frames).await {
                    return None;
                }
            }
            Step::Out(Some(Outbound::Close(frame, reason))) => {
                if !frame.is_empty() {
                    let _ = put(&mut socket, Message::Text(frame)).await;
                }
                let code = if reason.contains("shutting down") {
                    close_code::GOING_AWAY
                } else {
                    close_code::REVOKED
                };
                let _ = put(&mut socket, close(code, &reason)).await;
                return Some(code);
            }
            Step::Out(None) => return None,
            Step::Ping => {
                if !put(&mut socket, Message::Ping(Default::default())).await {
                    return None;
                }
            }
            Step::Idle => {
                let _ = put(&mut socket, close(close_code::IDLE, "idle timeout")).await;
                return Some(close_code::IDLE);
            }
            Step::Kill => {
                let (code, why) = if stop.is_cancelled() {
                    (close_code::GOING_AWAY, "edge shutting down")
                } else {
                    (close_code::TOO_SLOW, "client too slow")
                };
                let _ = tokio::time::timeout(Duration::from_secs(1), socket.send(close(code, why)))
                    .await;
                return Some(code);
            }
        }
    }
}

/// A WebSocket's life once the handshake is answered: wait for the upgrade, run [`drive`] on
/// the queue the handshake registered in the hub, then unregister the connection (from the hub
/// and, through presence, from the registry) and give back its connection slots (held until
/// here, however it ends). The handshake check registered it; nothing is announced here.
pub async fn run(
    edge: Arc<Edge>,
    ctx: ConnCtx,
    on_upgrade: OnUpgrade,
    (rx, kill): (mpsc::Receiver<Outbound>, CancellationToken),
    slots: (Slot<Id>, Option<Slot<String>>),
    stop: CancellationToken,
) {
    let mut socket = match on_upgrade.await {
        Ok(u) => {
            let config = ws_config(edge.settings.max_frame_bytes);
            Some(
                WebSocketStream::from_raw_socket(TokioIo::new(u), Role::Server, Some(config)).await,
            )
        }
        Err(e) => {
            tracing::debug!(error = %runtime::telemetry::Chain(&e), "upgrade did not complete");
            None
        }
    };
    let closed_by_us = match &mut socket {
        Some(socket) => drive(edge.clone(), ctx.clone(), socket, rx, kill, stop)
            .await
            .is_some(),
        None => false,
    };
    edge.hub.unregister(ctx.conn);
    drop(slots);
    edge.emit(EdgeEvent::Disconnected {
        edge: edge.settings.id.clone(),
        conn: ctx.conn,
        user_id: ctx.user_id,
    })
    .await;
    if let (true, Some(socket)) = (closed_by_us, &mut socket) {
        linger(socket.get_mut()).await;
    }
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
mod tests;
