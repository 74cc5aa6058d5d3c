//! The round trip of a request: publish its envelope to its domain's topic and wait for the
//! worker's answer on this edge's own topic.

use crate::Edge;
use std::time::Duration;
use topics::{Auth, EdgeMessage, Envelope, ErrorBody, ErrorCode, Request, WIRE_VERSION};

/// Publish a request and wait for its worker's answer on this edge's topic.
pub async fn call(
    edge: &Edge,
    conn: u64,
    request: Request,
    auth: Auth,
    peer: Option<String>,
) -> Result<EdgeMessage, ErrorBody> {
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
        return Err(ErrorBody::new(
            ErrorCode::Unavailable,
            "this edge is overloaded; retry",
        ));
    };
    if let Err(e) = publish(edge, &env).await {
        edge.hub.forget(req);
        return Err(e);
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
            Err(ErrorBody::new(
                ErrorCode::Unavailable,
                "the service did not answer in time; retry",
            ))
        }
    }
}

/// Publish an envelope to its domain's topic; on failure, the error for the client.
pub async fn publish(edge: &Edge, env: &Envelope) -> Result<(), ErrorBody> {
    let topic = edge.topics.requests(env.domain());
    let tp = runtime::telemetry::new_traceparent();
    // timed from before the publish: the answer may come before the broker's acknowledgement
    edge.hub.published(env.req, env.request.kind_index());
    edge.publisher
        .send(&topic, &env.key(), &env.encode(), Some(&tp))
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
