//! The round trip of a request: publish its envelope to its domain's topic and wait for the
//! worker's answer on this edge's own topic ([`call`]: handshakes and HTTP calls). A WebSocket
//! frame is only handed to the producer ([`publish_frame`]): its answer reaches the socket
//! through the hub, or, if none came within `edge.request_timeout_ms`, its connection answers
//! `unavailable` ([`crate::flights`]).

use crate::hub::{Hub, Outbound};
use crate::Edge;
use std::sync::Arc;
use std::time::Duration;
use topics::{
    Auth, EdgeMessage, Envelope, ErrorBody, ErrorCode, Request, ServerFrame, WIRE_VERSION,
};
use tracing::Instrument;

/// Why a call has no answer: the error for the client, and whether the request may have reached
/// Kafka (a publish that failed or timed out may still have been written; a request refused
/// because the edge is overloaded was never sent), in which case its worker may still act on it.
#[derive(Debug)]
pub struct NoAnswer {
    pub error: ErrorBody,
    pub maybe_sent: bool,
}

/// Publish a request and wait for its worker's answer on this edge's topic. With tracing on, a
/// call sampled by `trace.sample_ratio` ([`runtime::trace::sample_root`]) is an `edge.request`
/// span, the root of the request's trace and parent of the publish; the others make no span.
pub async fn call(
    edge: &Edge,
    conn: u64,
    request: Request,
    auth: Auth,
    peer: Option<String>,
) -> Result<EdgeMessage, NoAnswer> {
    if !runtime::trace::sample_root() {
        return call_untraced(edge, conn, request, auth, peer).await;
    }
    let span = tracing::info_span!(
        "edge.request",
        otel.kind = "server",
        kind = request.kind(),
        edge = %edge.settings.id,
        conn,
    );
    call_untraced(edge, conn, request, auth, peer)
        .instrument(span)
        .await
}

async fn call_untraced(
    edge: &Edge,
    conn: u64,
    request: Request,
    auth: Auth,
    peer: Option<String>,
) -> Result<EdgeMessage, NoAnswer> {
    let req = edge.hub.next_id();
    let env = envelope(edge, conn, req, None, auth, peer, request);
    let Some(answer) = edge.hub.expect(req) else {
        return Err(NoAnswer {
            error: ErrorBody::new(ErrorCode::Unavailable, "this edge is overloaded; retry"),
            maybe_sent: false,
        });
    };
    // One deadline for the publish and the answer: a publish may wait out a partition leader's
    // move (up to `kafka.message_timeout_ms`), longer than a caller should.
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(edge.settings.request_timeout_ms);
    let answer = async {
        publish(edge, &env).await?;
        Ok(answer.await)
    };
    match tokio::time::timeout_at(deadline, answer).await {
        Ok(Ok(Ok(msg))) => Ok(msg),
        Ok(Err(error)) => {
            edge.hub.forget(req);
            Err(NoAnswer {
                error,
                maybe_sent: true,
            })
        }
        _ => {
            edge.hub.forget(req);
            Err(NoAnswer {
                error: ErrorBody::new(
                    ErrorCode::Unavailable,
                    "the service did not answer in time; retry",
                ),
                maybe_sent: true,
            })
        }
    }
}

/// A request of connection `conn` (0: an HTTP call) wrapped now, with its deadline: this edge
/// answers `unavailable` at `sent_at_ms + edge.request_timeout_ms` if no answer came by then, and a
/// worker that reaches it later drops it ([`Envelope::expired`]).
pub fn envelope(
    edge: &Edge,
    conn: u64,
    req: u64,
    rid: Option<String>,
    auth: Auth,
    peer: Option<String>,
    request: Request,
) -> Envelope {
    let sent_at_ms = runtime::now_ms();
    Envelope {
        v: WIRE_VERSION,
        edge: edge.settings.id.clone(),
        conn,
        req,
        rid,
        auth,
        peer,
        sent_at_ms,
        deadline_ms: Some(sent_at_ms + edge.settings.request_timeout_ms),
        request,
    }
}

/// Publish an envelope to its domain's topic and wait for the broker; on failure, the error for
/// the client.
pub async fn publish(edge: &Edge, env: &Envelope) -> Result<(), ErrorBody> {
    let topic = edge.topics.requests(env.domain());
    // timed from before the publish: the answer may come before the broker's acknowledgement
    edge.hub.published(env.req, env.request.kind_index());
    edge.publisher
        .send(&topic, &env.key(), &env.encode())
        .await
        .map_err(|e| not_published(&edge.hub, env.req, &e))
}

/// Publish a client frame's envelope without waiting for the broker, so that its connection goes
/// on reading, writing and pinging meanwhile (and is woken by no acknowledgement). A publish that
/// fails later is answered through the hub with the error frame for the frame's `rid`; one refused
/// at once (the producer's queue is full) is the `Err` here.
///
/// With tracing on, a frame sampled by `trace.sample_ratio` is an `edge.request` span, the root
/// of the request's trace and parent of its publish; it ends once the record is queued. The
/// others make no span, and their records carry no trace context.
pub fn publish_frame(edge: &Edge, env: &Envelope) -> Result<(), ErrorBody> {
    let span = runtime::trace::sample_root().then(|| {
        tracing::info_span!(
            "edge.request",
            otel.kind = "server",
            kind = env.request.kind(),
            edge = %edge.settings.id,
            conn = env.conn,
        )
    });
    let _inside = span.as_ref().map(tracing::Span::enter);
    let (req, conn, rid) = (env.req, env.conn, env.rid.clone());
    // Its answer is awaited from now on: the connection answers `unavailable` at the deadline.
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(edge.settings.request_timeout_ms);
    if !edge.hub.track(conn, req, rid.clone(), deadline) {
        return Err(ErrorBody::new(
            ErrorCode::RateLimited,
            "too many requests waiting for their answer; wait for some",
        ));
    }
    let topic = edge.topics.requests(env.domain());
    edge.hub.published(env.req, env.request.kind_index());
    let (hub, metrics) = (Arc::clone(&edge.hub), edge.metrics.clone());
    edge.publisher
        .enqueue(&topic, &env.key(), &env.encode(), move |e| {
            let error = not_published(&hub, req, &e);
            // unless the deadline came first and answered it already
            if hub.settle(conn, req) {
                let frame = ServerFrame::error(rid, error).to_json();
                metrics.ws_frames_rejected.inc();
                hub.send(conn, Outbound::Text(frame.into()));
            }
        })
        .map_err(|e| {
            edge.hub.settle(conn, req);
            not_published(&edge.hub, env.req, &e)
        })
}

/// A request that did not reach Kafka: no answer will come; the error for its client.
fn not_published(hub: &Hub, req: u64, e: &runtime::kafka::PublishError) -> ErrorBody {
    hub.unpublished(req);
    tracing::warn!(error = %runtime::telemetry::Chain(e), "frame not published");
    ErrorBody::new(
        ErrorCode::Unavailable,
        "could not accept the request; retry",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::MAX_PENDING;
    use topics::Id;

    fn auth() -> Auth {
        Auth::Session {
            session_id: "s".into(),
            user_id: Id(1),
        }
    }

    /// An edge whose pending map is full refuses the call before publishing anything, and says
    /// so: the handshake that made it must not announce an abandoned connection it never sent.
    #[tokio::test]
    async fn an_overloaded_edge_refuses_a_call_it_never_sent() {
        let edge = Edge::for_tests(Default::default());
        let held: Vec<_> = (0..MAX_PENDING as u64)
            .map(|i| edge.hub.expect(u64::MAX - i).expect("room"))
            .collect();
        let err = call(&edge, 7, Request::Ping, auth(), None)
            .await
            .expect_err("overloaded");
        assert!(!err.maybe_sent);
        assert_eq!(err.error.code, ErrorCode::Unavailable);
        drop(held);
    }

    /// A connection with `MAX_IN_FLIGHT` requests waiting for their answer has its next frame
    /// refused before it is published; an answer makes room again.
    #[tokio::test]
    async fn a_frame_past_the_in_flight_bound_is_refused_before_it_is_published() {
        let edge = Edge::for_tests(Default::default());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        for req in 1..=crate::flights::MAX_IN_FLIGHT as u64 {
            assert!(edge.hub.track(7, req, None, deadline));
        }
        let env = Envelope {
            v: WIRE_VERSION,
            edge: "edge-0".into(),
            conn: 7,
            req: edge.hub.next_id() + 1_000_000,
            rid: Some("r".into()),
            auth: auth(),
            peer: None,
            sent_at_ms: 0,
            deadline_ms: None,
            request: Request::Ping,
        };
        let err = publish_frame(&edge, &env).expect_err("bounded");
        assert_eq!(err.code, ErrorCode::RateLimited);
        assert!(edge.hub.settle(7, 1));
        assert!(publish_frame(&edge, &env).is_ok(), "room again");
    }

    /// A publish that waits for the broker counts against the call's own deadline: the caller
    /// hears `unavailable` after `request_timeout_ms`, not after the producer's longer
    /// `message_timeout_ms`, and is told the request may still arrive.
    #[tokio::test(start_paused = true)]
    async fn a_call_whose_publish_waits_ends_at_the_request_deadline() {
        let edge = Edge::for_tests(crate::EdgeSettings {
            request_timeout_ms: 100,
            ..Default::default()
        });
        let t0 = tokio::time::Instant::now();
        let err = call(&edge, 7, Request::Ping, auth(), None)
            .await
            .expect_err("no broker");
        assert_eq!(t0.elapsed(), Duration::from_millis(100));
        assert!(err.maybe_sent);
        assert_eq!(err.error.code, ErrorCode::Unavailable);
    }

    /// A frame the producer refuses at once (here a record over the broker's 1 MB message limit,
    /// which no frame within `max_frame_bytes` makes) is an `Err` for its client right away, and
    /// its request is no longer awaited: the connection will not answer `unavailable` for it a
    /// second time at its deadline, and it no longer counts against the in-flight bound.
    #[tokio::test]
    async fn a_frame_the_producer_refuses_at_once_is_answered_once() {
        let edge = Edge::for_tests(Default::default());
        let env = Envelope {
            v: WIRE_VERSION,
            edge: "edge-0".into(),
            conn: 7,
            req: edge.hub.next_id(),
            rid: Some("r".into()),
            auth: auth(),
            peer: None,
            sent_at_ms: 0,
            deadline_ms: None,
            request: Request::DmSend {
                conversation_id: Id(3),
                client_msg_id: "c".into(),
                text: "x".repeat(2_000_000),
                after_client_msg_id: None,
            },
        };
        let err = publish_frame(&edge, &env).expect_err("too large for the producer");
        assert_eq!(err.code, ErrorCode::Unavailable);
        assert_eq!(err.message, "could not accept the request; retry");
        assert_eq!(edge.metrics.publish_failures.get(), 1);
        assert_eq!(edge.hub.next_deadline(7), None, "not awaited any more");
        let far = tokio::time::Instant::now() + Duration::from_secs(3600);
        assert_eq!(edge.hub.expire(7, far).0, Vec::<Option<String>>::new());
    }
}
