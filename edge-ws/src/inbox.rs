//! This edge's own topic: answers to requests, deliveries, broadcasts and close commands. It is
//! read from the latest offset — what was addressed to connections of an earlier process of
//! this edge is of no use to anyone.

use crate::hub::{Hub, Outbound};
use crate::Edge;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::Message;
use runtime::metrics::Metrics;
use runtime::trace::Carrier;
use std::sync::Arc;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Utf8Bytes;
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
                    Ok(em) if runtime::trace::enabled() => {
                        dispatch_in(&edge.hub, &edge.metrics, em, &header_trace(&m))
                    }
                    Ok(em) => dispatch(&edge.hub, &edge.metrics, em),
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

/// The trace context in a record's headers.
fn header_trace(m: &rdkafka::message::BorrowedMessage<'_>) -> Carrier {
    use rdkafka::message::Headers;
    let mut c = Carrier::default();
    for h in m.headers().iter().flat_map(|hs| hs.iter()) {
        if let (true, Some(Ok(v))) = (Carrier::wants(h.key), h.value.map(std::str::from_utf8)) {
            c.0.push((h.key.to_string(), v.to_string()));
        }
    }
    c
}

/// [`dispatch`] with tracing on: each item is applied inside an `edge.write` span whose parent
/// is the item's own trace context ([`EdgeMessage::Traced`]) or else the record's (`parent`);
/// an item with neither (or only an untraced request's) gets no span.
pub fn dispatch_in(hub: &Hub, metrics: &Metrics, msg: EdgeMessage, parent: &Carrier) {
    match msg {
        EdgeMessage::Traced { traceparent, item } => dispatch_in(
            hub,
            metrics,
            *item,
            &Carrier::from_traceparent(Some(&traceparent)),
        ),
        EdgeMessage::Batch { items } => {
            for item in items {
                dispatch_in(hub, metrics, item, parent);
            }
        }
        item if !parent.sampled() => dispatch(hub, metrics, item),
        item => {
            let span = tracing::info_span!(
                "edge.write",
                otel.kind = "consumer",
                op = item.op(),
                conns = item_conns(&item),
            );
            runtime::trace::set_parent(&span, parent);
            let _in = span.enter();
            dispatch(hub, metrics, item);
        }
    }
}

/// How many connections an item addresses (0: every connection, or a waiting call).
fn item_conns(msg: &EdgeMessage) -> usize {
    match msg {
        EdgeMessage::Deliver { conns, .. } | EdgeMessage::Close { conns, .. } => conns.len(),
        EdgeMessage::Reply { .. } => 1,
        _ => 0,
    }
}

/// Apply one record of the edge topic to this edge's connections and waiting calls.
pub fn dispatch(hub: &Hub, metrics: &Metrics, msg: EdgeMessage) {
    let sent = |n: u64| {
        metrics.ws_frames_out.inc_by(n);
    };
    match msg {
        EdgeMessage::Reply { req, .. } => {
            // An HTTP call or a handshake may be waiting for it; otherwise it answers a frame,
            // unless that frame was answered already (at its deadline: `unavailable`).
            match hub.answer(req, msg) {
                Some(EdgeMessage::Reply { conn, frame, .. }) if conn != 0 => {
                    if !hub.settle(conn, req) {
                        metrics.ws_late_replies.inc();
                    } else if hub.send(conn, Outbound::Text(frame.into())) {
                        sent(1);
                    }
                }
                _ => {}
            }
        }
        EdgeMessage::Deliver {
            conns,
            frame,
            persisted_at_ms,
        } => {
            let frame = Utf8Bytes::from(frame);
            // a new direct message: from its commit (the worker's clock) to its socket's queue
            let age =
                persisted_at_ms.map(|at| runtime::now_ms().saturating_sub(at) as f64 / 1000.0);
            for conn in conns {
                if hub.send(conn, Outbound::Text(frame.clone())) {
                    sent(1);
                    if let Some(age) = age {
                        metrics.dm_delivery_seconds.observe(age);
                    }
                }
            }
        }
        EdgeMessage::Broadcast { frame } => sent(hub.broadcast(frame.into()) as u64),
        EdgeMessage::Close {
            conns,
            frame,
            reason,
        } => {
            let frame = Utf8Bytes::from(frame);
            for conn in conns {
                hub.send(conn, Outbound::Close(frame.clone(), reason.clone()));
            }
        }
        EdgeMessage::Batch { items } => {
            for item in items {
                dispatch(hub, metrics, item);
            }
        }
        EdgeMessage::Traced { item, .. } => dispatch(hub, metrics, *item),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::ConnHandle;
    use tokio::sync::mpsc;
    use topics::Id;

    fn conn(hub: &Hub, id: u64) -> mpsc::Receiver<Outbound> {
        let (tx, rx) = mpsc::channel(8);
        hub.register(
            id,
            ConnHandle {
                user_id: Id(1),
                session_id: "s".into(),
                tx,
                kill: CancellationToken::new(),
            },
        );
        rx
    }

    fn reply(conn: u64, req: u64, frame: &str) -> EdgeMessage {
        EdgeMessage::Reply {
            conn,
            req,
            frame: frame.into(),
            error: None,
            session: None,
            clear_session: false,
        }
    }

    /// Connection `conn` sent request `req` over its socket and waits for its answer.
    fn sent_frame(hub: &Hub, conn: u64, req: u64) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        assert!(hub.track(conn, req, None, deadline));
    }

    fn drain(rx: &mut mpsc::Receiver<Outbound>) -> Vec<Outbound> {
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    }

    fn text(s: &str) -> Outbound {
        Outbound::Text(s.into())
    }

    #[test]
    fn records_reach_their_connections_in_order() {
        let metrics = Metrics::default();
        let hub = Hub::new(1, metrics.clone());
        let (mut a, mut b) = (conn(&hub, 1), conn(&hub, 2));
        sent_frame(&hub, 1, 10);
        dispatch(
            &hub,
            &metrics,
            EdgeMessage::Batch {
                items: vec![
                    reply(1, 10, "r"),
                    EdgeMessage::Deliver {
                        conns: vec![1, 2, 99],
                        frame: "d".into(),
                        persisted_at_ms: None,
                    },
                    EdgeMessage::Broadcast { frame: "b".into() },
                    EdgeMessage::Close {
                        conns: vec![2],
                        frame: "bye".into(),
                        reason: "revoked".into(),
                    },
                ],
            },
        );
        assert_eq!(drain(&mut a), vec![text("r"), text("d"), text("b")]);
        assert_eq!(
            drain(&mut b),
            vec![
                text("d"),
                text("b"),
                Outbound::Close("bye".into(), "revoked".into())
            ]
        );
        // the frames written: a reply, two deliveries (99 is gone), two broadcasts
        assert_eq!(metrics.ws_frames_out.get(), 5);
    }

    #[test]
    fn a_new_message_is_timed_from_its_commit_to_each_socket_queue() {
        let metrics = Metrics::new(runtime::metrics::Role::Edge);
        let hub = Hub::new(1, metrics.clone());
        let (_a, _b) = (conn(&hub, 1), conn(&hub, 2));
        let deliver = |persisted_at_ms| EdgeMessage::Deliver {
            conns: vec![1, 2, 99],
            frame: "d".into(),
            persisted_at_ms,
        };
        dispatch(&hub, &metrics, deliver(None));
        let count = |m: &Metrics| {
            runtime::metrics::sample(&m.render(), "sb_dm_delivery_duration_seconds_count")
        };
        assert_eq!(count(&metrics), Some(0.0), "not a new message");
        dispatch(&hub, &metrics, deliver(Some(runtime::now_ms() - 3)));
        assert_eq!(count(&metrics), Some(2.0), "one per socket reached");
        let text = metrics.render();
        let first = runtime::metrics::sample(
            &text,
            "sb_dm_delivery_duration_seconds_bucket{le=\"0.0025\"}",
        );
        assert_eq!(first, Some(0.0), "3 ms or more: {text}");
        // a clock ahead of this edge's counts as no time, not a negative one
        dispatch(&hub, &metrics, deliver(Some(runtime::now_ms() + 60_000)));
        let zero = runtime::metrics::sample(
            &metrics.render(),
            "sb_dm_delivery_duration_seconds_bucket{le=\"0.0005\"}",
        );
        assert_eq!(zero, Some(2.0));
    }

    #[test]
    fn traced_items_reach_their_connections_like_plain_ones() {
        let metrics = Metrics::default();
        let hub = Hub::new(1, metrics.clone());
        let mut a = conn(&hub, 1);
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let header = Carrier::from_traceparent(Some(tp));
        let deliver = |frame: &str| EdgeMessage::Deliver {
            conns: vec![1],
            frame: frame.into(),
            persisted_at_ms: None,
        };
        // each record answers its own request (a request is answered once)
        let record = |req| {
            sent_frame(&hub, 1, req);
            EdgeMessage::Batch {
                items: vec![
                    EdgeMessage::traced(reply(1, req, "r"), Some(tp.into())),
                    EdgeMessage::traced(deliver("d"), Some(tp.into())),
                    deliver("plain"),
                    EdgeMessage::Broadcast { frame: "b".into() },
                ],
            }
        };
        dispatch_in(&hub, &metrics, record(10), &header);
        let expected = vec![text("r"), text("d"), text("plain"), text("b")];
        assert_eq!(drain(&mut a), expected);
        // without any trace context, and through the untraced path: the same frames
        dispatch_in(&hub, &metrics, record(11), &Carrier::default());
        assert_eq!(drain(&mut a), expected);
        dispatch(&hub, &metrics, record(12));
        assert_eq!(drain(&mut a), expected);
        assert_eq!(item_conns(&deliver("x")), 1);
        assert_eq!(item_conns(&reply(1, 1, "x")), 1);
        assert_eq!(item_conns(&EdgeMessage::Broadcast { frame: "b".into() }), 0);
    }

    #[test]
    fn a_reply_someone_waits_for_goes_to_them_not_to_a_socket() {
        let metrics = Metrics::default();
        let hub = Hub::new(1, metrics.clone());
        let mut a = conn(&hub, 1);
        let mut waiting = hub.expect(10).unwrap();
        dispatch(&hub, &metrics, reply(1, 10, "answer"));
        assert_eq!(waiting.try_recv().unwrap(), reply(1, 10, "answer"));
        assert!(drain(&mut a).is_empty());
        // an HTTP call's reply (conn 0) that nobody waits for any more is dropped
        dispatch(&hub, &metrics, reply(0, 11, "late"));
        assert!(drain(&mut a).is_empty());
        assert_eq!(metrics.ws_frames_out.get(), 0);
    }

    /// A frame's request is answered at most once: a second reply (a redelivered request), one
    /// after the edge answered `unavailable` at the deadline, or one for a closed connection is
    /// dropped and counted.
    #[tokio::test(start_paused = true)]
    async fn a_reply_to_a_request_answered_already_is_dropped_and_counted() {
        let metrics = Metrics::default();
        let hub = Hub::new(1, metrics.clone());
        let mut a = conn(&hub, 1);
        sent_frame(&hub, 1, 10);
        sent_frame(&hub, 1, 11);
        dispatch(&hub, &metrics, reply(1, 10, "first"));
        dispatch(&hub, &metrics, reply(1, 10, "again"));
        assert_eq!(drain(&mut a), vec![text("first")]);
        assert_eq!(metrics.ws_late_replies.get(), 1);
        tokio::time::advance(std::time::Duration::from_secs(5)).await;
        let (due, next) = hub.expire(1, tokio::time::Instant::now());
        assert_eq!(
            (due, next),
            (vec![None], None),
            "11 is answered by the edge"
        );
        dispatch(&hub, &metrics, reply(1, 11, "late"));
        assert!(drain(&mut a).is_empty());
        assert_eq!(metrics.ws_late_replies.get(), 2);
        sent_frame(&hub, 1, 12);
        hub.unregister(1);
        dispatch(&hub, &metrics, reply(1, 12, "closed"));
        assert_eq!(metrics.ws_late_replies.get(), 3);
        assert_eq!(metrics.ws_frames_out.get(), 1);
    }
}
