//! One WebSocket connection, generic over any `Stream + Sink` of messages so unit tests can drive
//! it through channels. Reads frames (size limit, rate limit, parse), publishes them, writes what
//! the hub queues, pings, and closes on idle, on revocation, on a full queue or at shutdown.

use crate::hub::Outbound;
use crate::ratelimit::TokenBucket;
use crate::Edge;
use futures::{Sink, SinkExt, Stream, StreamExt};
use runtime::metrics;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;
use topics::frames::{parse_client_frame, salvage_rid};
use topics::{Auth, Envelope, ErrorBody, ErrorCode, Id, ServerFrame, WIRE_VERSION};

/// Close codes this edge uses (4000–4999 are the application's own).
pub mod close_code {
    pub const GOING_AWAY: u16 = 1001;
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
    pub username: String,
    pub session_id: String,
    pub peer: Option<String>,
}

/// Turn a client text frame into an envelope, or into the error frame the client gets instead.
pub fn prepare(
    edge: &Edge,
    ctx: &ConnCtx,
    text: &str,
    bucket: &mut TokenBucket,
    now: Instant,
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
    if !bucket.try_take(now) {
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
    Ok(Envelope {
        v: WIRE_VERSION,
        edge: edge.settings.id.clone(),
        conn: ctx.conn,
        req: edge.hub.next_id(),
        rid: frame.rid,
        auth: Auth::Session {
            session_id: ctx.session_id.clone(),
            user_id: ctx.user_id,
        },
        peer: ctx.peer.clone(),
        sent_at_ms: runtime::now_ms(),
        request: frame.request,
    })
}

/// Publish an envelope to its domain's topic; on failure, the error for the client.
pub async fn publish(edge: &Edge, env: &Envelope) -> Result<(), ErrorBody> {
    let topic = edge.topics.requests(env.domain());
    let tp = runtime::telemetry::new_traceparent();
    edge.publisher
        .send(&topic, &env.key(), &env.encode(), Some(&tp))
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "frame not published");
            ErrorBody::new(
                ErrorCode::Unavailable,
                "could not accept the request; retry",
            )
        })
}

/// How long one write may take before the client counts as gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Write one message, giving up on a client that does not read.
async fn put<S: Sink<Message> + Unpin>(socket: &mut S, msg: Message) -> bool {
    matches!(
        tokio::time::timeout(WRITE_TIMEOUT, socket.send(msg)).await,
        Ok(Ok(()))
    )
}

enum Step {
    In(Option<Result<Message, WsError>>),
    Out(Option<Outbound>),
    Tick,
    Kill,
}

/// Run one connection until it ends. Returns the close code it ended with (None: the client
/// went away).
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
    let mut bucket = TokenBucket::new(s.frames_per_second, s.frame_burst, Instant::now());
    let idle = Duration::from_millis(s.idle_timeout_ms);
    let mut tick = tokio::time::interval(idle / 3);
    tick.tick().await;
    let mut last_seen = Instant::now();
    let close = |code: u16, reason: &str| {
        Message::Close(Some(CloseFrame {
            code: CloseCode::from(code),
            reason: reason.to_string().into(),
        }))
    };
    loop {
        let step = tokio::select! {
            m = socket.next() => Step::In(m),
            o = rx.recv() => Step::Out(o),
            _ = tick.tick() => Step::Tick,
            _ = kill.cancelled() => Step::Kill,
            _ = stop.cancelled() => Step::Kill,
        };
        match step {
            Step::In(None) => return None,
            Step::In(Some(Err(e))) => {
                tracing::debug!(error = %e, conn = ctx.conn, "socket read failed");
                if matches!(e, WsError::Capacity(_)) {
                    let _ = put(&mut socket, close(close_code::TOO_BIG, "message too big")).await;
                    return Some(close_code::TOO_BIG);
                }
                return None;
            }
            Step::In(Some(Ok(msg))) => {
                last_seen = Instant::now();
                if msg.is_close() {
                    return None;
                }
                let reply = if let Message::Text(text) = &msg {
                    edge.metrics.inc(metrics::WS_FRAMES_IN_TOTAL, &[]);
                    match prepare(&edge, &ctx, text.as_str(), &mut bucket, last_seen) {
                        Ok(env) => publish(&edge, &env)
                            .await
                            .err()
                            .map(|e| ServerFrame::error(env.rid.clone(), e)),
                        Err(frame) => Some(*frame),
                    }
                } else if msg.is_binary() {
                    Some(ServerFrame::error(
                        None,
                        ErrorBody::new(
                            ErrorCode::InvalidInput,
                            "binary frames are not supported; send JSON text",
                        ),
                    ))
                } else {
                    None // ping / pong: liveness only
                };
                if let Some(frame) = reply {
                    edge.metrics.inc(metrics::WS_FRAMES_REJECTED_TOTAL, &[]);
                    if !put(&mut socket, Message::text(frame.to_json())).await {
                        return None;
                    }
                }
            }
            Step::Out(Some(Outbound::Text(t))) => {
                if !put(&mut socket, Message::text(t.to_string())).await {
                    return None;
                }
            }
            Step::Out(Some(Outbound::Close(frame, reason))) => {
                if !frame.is_empty() {
                    let _ = put(&mut socket, Message::text(frame.to_string())).await;
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
            Step::Tick => {
                if last_seen.elapsed() >= idle {
                    let _ = put(&mut socket, close(close_code::IDLE, "idle timeout")).await;
                    return Some(close_code::IDLE);
                }
                if !put(&mut socket, Message::Ping(Default::default())).await {
                    return None;
                }
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
