//! The round trip of a request: publish its envelope to its domain's topic and wait for the
//! worker's answer on this edge's own topic.

use crate::Edge;
use std::time::Duration;
use topics::{Auth, EdgeMessage, Envelope, ErrorBody, ErrorCode, Request, WIRE_VERSION};
use tracing::Instrument;

/// Why a call has no answer: the error for the client, and whether the request may have reached
/// Kafka (a publish that failed or timed out may still have been written; a request refused
/// because the edge is overloaded was never sent), in which case its worker may still act on it.
#[derive(Debug)]
pub struct NoAnswer {
    pub error: ErrorBody,
    pub maybe_sent: bool,
}

/// Publish a request and wait for its worker's answer on this edge's topic. With tracing on, the
/// call is an `edge.request` span (the root of the request's trace, sampled by
/// `trace.sample_ratio`), parent of the publish.
pub async fn call(
    edge: &Edge,
    conn: u64,
    request: Request,
    auth: Auth,
    peer: Option<String>,
) -> Result<EdgeMessage, NoAnswer> {
    if !runtime::trace::enabled() {
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
    let env = Envelope {
        v: WIRE_VERSION,
        edge: edge.settings.id.clone(),
        conn,
        req,
        rid: None,
        auth,
        peer,
        sent_at_ms: runtime::now_ms(),
        request,
    };
    let Some(answer) = edge.hub.expect(req) else {
        return Err(NoAnswer {
            error: ErrorBody::new(ErrorCode::Unavailable, "this edge is overloaded; retry"),
            maybe_sent: false,
        });
    };
    if let Err(error) = publish(edge, &env).await {
        edge.hub.forget(req);
        return Err(NoAnswer {
            error,
            maybe_sent: true,
        });
    }
    match tokio::time::timeout(
        Duration::from_millis(edge.settings.request_timeout_ms),
        answer,
    )
    .await
    {
        Ok(Ok(msg)) => Ok(msg),
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

/// Publish a WebSocket client's frame (its answer comes back through the edge topic to the
/// socket, nobody waits for it here); with tracing on, inside an `edge.request` span, the root of
/// the request's trace, parent of the publish.
pub async fn publish_frame(edge: &Edge, env: &Envelope) -> Result<(), ErrorBody> {
    if !runtime::trace::enabled() {
        return publish(edge, env).await;
    }
    let span = tracing::info_span!(
        "edge.request",
        otel.kind = "server",
        kind = env.request.kind(),
        edge = %edge.settings.id,
        conn = env.conn,
    );
    publish(edge, env).instrument(span).await
}

/// Publish an envelope to its domain's topic; on failure, the error for the client.
pub async fn publish(edge: &Edge, env: &Envelope) -> Result<(), ErrorBody> {
    let topic = edge.topics.requests(env.domain());
    // timed from before the publish: the answer may come before the broker's acknowledgement
    edge.hub.published(env.req, env.request.kind_index());
    edge.publisher
        .send(&topic, &env.key(), &env.encode())
        .await
        .map_err(|e| {
            edge.hub.unpublished(env.req);
            tracing::warn!(error = %runtime::telemetry::Chain(&e), "frame not published");
            ErrorBody::new(
                ErrorCode::Unavailable,
                "could not accept the request; retry",
            )
        })
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
}
