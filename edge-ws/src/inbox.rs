//! This edge's own topic: answers to requests, deliveries, broadcasts and close commands. It is
//! read from the latest offset — what was addressed to connections of an earlier process of
//! this edge is of no use to anyone.

use crate::hub::Outbound;
use crate::Edge;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::Message;
use runtime::metrics;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use topics::{EdgeMessage, Topics};

pub async fn subscribe(
    kafka: &runtime::KafkaSettings,
    topics: &Topics,
    edge_id: &str,
) -> runtime::Result<StreamConsumer> {
    // Assigned, not subscribed: no group rebalance to wait for, and reading starts exactly at
    // the end as it is now, so no answer published after this point can be missed.
    let group = topics.group(&format!("edge.{edge_id}"));
    let mut consumer: StreamConsumer = runtime::kafka::consumer(kafka, &group, true)?;
    let topic = topics.edge(edge_id);
    // A topic created a moment ago may not be known to every broker yet: retry for a while.
    // librdkafka's watermark query blocks its thread (up to 5 s a try), so it runs on a blocking
    // thread, and the pause between tries is the runtime's: other tasks run meanwhile.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let high = loop {
        let t = topic.clone();
        let (c, watermarks) = tokio::task::spawn_blocking(move || {
            let w = consumer.fetch_watermarks(&t, 0, Duration::from_secs(5));
            (consumer, w)
        })
        .await
        .map_err(std::io::Error::from)?;
        consumer = c;
        match watermarks {
            Ok((_, high)) => break high,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(error = %runtime::telemetry::Chain(&e), %topic, "edge topic not ready yet");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, rdkafka::Offset::Offset(high))?;
    consumer.assign(&tpl)?;
    Ok(consumer)
}

pub async fn run(edge: Arc<Edge>, consumer: StreamConsumer, stop: CancellationToken) {
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => return,
            m = consumer.recv() => m,
        };
        match msg {
            Ok(m) => {
                let payload = m.payload().unwrap_or_default();
                match serde_json::from_slice::<EdgeMessage>(payload) {
                    Ok(em) => dispatch(&edge, em),
                    Err(e) => {
                        tracing::warn!(error = %runtime::telemetry::Chain(&e), offset = m.offset(), "undecodable edge record skipped")
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %runtime::telemetry::Chain(&e), "edge consumer error");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// Apply one record of the edge topic.
pub fn dispatch(edge: &Edge, msg: EdgeMessage) {
    match msg {
        EdgeMessage::Reply { req, .. } => {
            // An HTTP call or a handshake may be waiting for it; otherwise it answers a frame.
            if let Some(EdgeMessage::Reply { conn, frame, .. }) = edge.hub.answer(req, msg) {
                if conn != 0 && edge.hub.send(conn, Outbound::Text(Arc::from(frame))) {
                    edge.metrics.inc(metrics::WS_FRAMES_OUT_TOTAL, &[]);
                }
            }
        }
        EdgeMessage::Deliver { conns, frame } => {
            let frame: Arc<str> = Arc::from(frame);
            for conn in conns {
                if edge.hub.send(conn, Outbound::Text(frame.clone())) {
                    edge.metrics.inc(metrics::WS_FRAMES_OUT_TOTAL, &[]);
                }
            }
        }
        EdgeMessage::Broadcast { frame } => {
            let n = edge.hub.broadcast(Arc::from(frame));
            edge.metrics
                .get(metrics::WS_FRAMES_OUT_TOTAL, &[])
                .add(n as u64);
        }
        EdgeMessage::Close {
            conns,
            frame,
            reason,
        } => {
            let frame: Arc<str> = Arc::from(frame);
            for conn in conns {
                edge.hub
                    .send(conn, Outbound::Close(frame.clone(), reason.clone()));
            }
        }
        EdgeMessage::Batch { items } => {
            for item in items {
                dispatch(edge, item);
            }
        }
    }
}
