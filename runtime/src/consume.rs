//! The at-least-once consumer loop shared by workers and the router, apart from what a record
//! means. Records are spread over `lanes` by key (so one key is always handled in order), the
//! handler's effect is made durable, and only then is the offset stored. A record the handler
//! cannot process goes to the dead-letter topic with its reason and the partition keeps flowing;
//! a transient failure (a database down) is retried with backoff, without skipping the record.

use crate::kafka::Publisher;
use crate::metrics::{self, Metrics};
use futures::future::BoxFuture;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// One record, owned, as handlers see it.
#[derive(Clone, Debug)]
pub struct Inbound {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub traceparent: Option<String>,
}

/// Why a record was not handled.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The record can never be processed (undecodable, unknown version): dead-letter it.
    #[error("poison record: {0}")]
    Poison(String),
    /// A dependency failed; the same record will be retried.
    #[error("transient failure: {0}")]
    Transient(String),
}

/// What a consumer does with one record.
pub trait Handler: Send + Sync + 'static {
    fn handle<'a>(&'a self, record: &'a Inbound) -> BoxFuture<'a, Result<(), Failure>>;
}

#[derive(Clone, Debug)]
pub struct LoopSettings {
    /// Parallel lanes; records with the same key always share a lane.
    pub lanes: usize,
    /// Records queued per lane before polling pauses (backpressure to Kafka: nothing is dropped).
    pub lane_capacity: usize,
    pub dead_letter_topic: String,
    /// How long shutdown waits for in-flight records.
    pub drain_timeout: Duration,
}

/// Tracks, per partition, which offsets are in flight so that only a contiguous prefix of
/// finished records is ever marked consumed.
#[derive(Default, Debug)]
pub struct OffsetTracker {
    parts: HashMap<(String, i32), Part>,
}

#[derive(Default, Debug)]
struct Part {
    in_flight: BTreeSet<i64>,
    highest_done: Option<i64>,
}

impl OffsetTracker {
    pub fn start(&mut self, topic: &str, partition: i32, offset: i64) {
        self.parts
            .entry((topic.to_string(), partition))
            .or_default()
            .in_flight
            .insert(offset);
    }

    /// Mark `offset` finished; returns the offset whose successor is now safe to commit from
    /// (every record up to and including it is finished), if that moved.
    pub fn finish(&mut self, topic: &str, partition: i32, offset: i64) -> Option<i64> {
        let p = self.parts.get_mut(&(topic.to_string(), partition))?;
        p.in_flight.remove(&offset);
        p.highest_done = Some(p.highest_done.map_or(offset, |h| h.max(offset)));
        match p.in_flight.first() {
            Some(&lowest) if lowest <= offset => None,
            Some(&lowest) => Some(lowest - 1),
            None => p.highest_done,
        }
    }

    pub fn in_flight(&self) -> usize {
        self.parts.values().map(|p| p.in_flight.len()).sum()
    }
}

fn lane_of(key: Option<&[u8]>, lanes: usize) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() % lanes as u64) as usize
}

fn to_inbound(m: &rdkafka::message::BorrowedMessage<'_>) -> Inbound {
    let traceparent = m.headers().and_then(|hs| {
        hs.iter()
            .find(|h| h.key == crate::telemetry::TRACEPARENT)
            .and_then(|h| h.value)
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(str::to_string)
    });
    Inbound {
        topic: m.topic().to_string(),
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(<[u8]>::to_vec),
        payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        traceparent,
    }
}

/// Handle one record until it is done: retry transient failures with backoff (until shutdown),
/// dead-letter poison ones. Returns false when shutdown interrupted a retry (offset not stored).
pub async fn process(
    handler: &dyn Handler,
    record: &Inbound,
    dlq: &Publisher,
    dead_letter_topic: &str,
    metrics: &Metrics,
    stop: &CancellationToken,
) -> bool {
    let mut backoff = Duration::from_millis(50);
    loop {
        let result = handler.handle(record).await;
        let failure = match result {
            Ok(()) => return true,
            Err(f) => f,
        };
        match failure {
            Failure::Poison(reason) => {
                tracing::warn!(topic = %record.topic, partition = record.partition, offset = record.offset, %reason, "dead-lettering record");
                let key = record
                    .key
                    .as_deref()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default();
                let mut payload = serde_json::json!({
                    "reason": reason,
                    "topic": record.topic,
                    "partition": record.partition,
                    "offset": record.offset,
                });
                payload["payload"] = match std::str::from_utf8(&record.payload) {
                    Ok(s) => serde_json::Value::String(s.to_string()),
                    Err(_) => serde_json::Value::String(hex::encode(&record.payload)),
                };
                let body = payload.to_string();
                match dlq
                    .send(
                        dead_letter_topic,
                        &key,
                        body.as_bytes(),
                        record.traceparent.as_deref(),
                    )
                    .await
                {
                    Ok(()) => {
                        metrics.inc(metrics::RECORDS_DEAD_LETTERED_TOTAL, &[]);
                        return true;
                    }
                    Err(e) => tracing::error!(error = %e, "dead-letter publish failed; retrying"),
                }
            }
            Failure::Transient(reason) => {
                metrics.inc(metrics::RECORDS_RETRIED_TOTAL, &[]);
                tracing::warn!(topic = %record.topic, offset = record.offset, %reason, "transient failure; retrying");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.cancelled() => return false,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Consume `consumer` (already subscribed) with `handler` until `stop`, then drain and commit.
pub async fn run(
    consumer: StreamConsumer,
    handler: Arc<dyn Handler>,
    dlq: Publisher,
    settings: LoopSettings,
    metrics: Metrics,
    stop: CancellationToken,
) {
    let consumer = Arc::new(consumer);
    let (done_tx, mut done_rx) = mpsc::channel::<(String, i32, i64, bool)>(1024);
    let mut lanes = Vec::with_capacity(settings.lanes);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..settings.lanes.max(1) {
        let (tx, mut rx) = mpsc::channel::<Inbound>(settings.lane_capacity.max(1));
        lanes.push(tx);
        let handler = handler.clone();
        let dlq = dlq.clone();
        let done = done_tx.clone();
        let topic = settings.dead_letter_topic.clone();
        let metrics = metrics.clone();
        let stop = stop.clone();
        tasks.spawn(async move {
            while let Some(rec) = rx.recv().await {
                let ok = process(handler.as_ref(), &rec, &dlq, &topic, &metrics, &stop).await;
                metrics.inc(
                    metrics::RECORDS_CONSUMED_TOTAL,
                    &[("topic_kind", crate::kafka::kind_of(&rec.topic))],
                );
                if done
                    .send((rec.topic, rec.partition, rec.offset, ok))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
    }
    drop(done_tx);
    let mut tracker = OffsetTracker::default();
    let n = lanes.len();
    let store = |tracker: &mut OffsetTracker, (t, p, o, ok): (String, i32, i64, bool)| {
        if !ok {
            return;
        }
        if let Some(upto) = tracker.finish(&t, p, o) {
            if let Err(e) = consumer.store_offset(&t, p, upto) {
                tracing::debug!(error = %e, topic = %t, partition = p, "offset not stored (partition revoked?)");
            }
        }
    };
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            Some(done) = done_rx.recv() => store(&mut tracker, done),
            msg = consumer.recv() => match msg {
                Ok(m) => {
                    let rec = to_inbound(&m);
                    drop(m);
                    tracker.start(&rec.topic, rec.partition, rec.offset);
                    let lane = lane_of(rec.key.as_deref(), n);
                    // A full lane blocks here: polling pauses, which is Kafka backpressure.
                    tokio::select! {
                        r = lanes[lane].send(rec) => if r.is_err() { break },
                        _ = stop.cancelled() => break,
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "consumer error");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    // Drain: stop feeding lanes, let in-flight records finish within the grace period.
    drop(lanes);
    let drain = async {
        while let Some(done) = done_rx.recv().await {
            store(&mut tracker, done);
        }
    };
    if tokio::time::timeout(settings.drain_timeout, drain)
        .await
        .is_err()
    {
        tracing::warn!(
            in_flight = tracker.in_flight(),
            "drain timed out; unfinished records will be redelivered"
        );
    }
    tasks.abort_all();
    if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
        tracing::debug!(error = %e, "final commit");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_contiguous_prefix_is_committed() {
        let mut t = OffsetTracker::default();
        for o in 10..14 {
            t.start("t", 0, o);
        }
        assert_eq!(t.in_flight(), 4);
        assert_eq!(t.finish("t", 0, 12), None, "10 and 11 still running");
        assert_eq!(t.finish("t", 0, 10), Some(10));
        assert_eq!(t.finish("t", 0, 11), Some(12));
        assert_eq!(t.finish("t", 0, 13), Some(13));
        assert_eq!(t.finish("t", 1, 0), None, "unknown partition");
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn same_key_same_lane() {
        for n in 1..20 {
            assert_eq!(lane_of(Some(b"c42"), n), lane_of(Some(b"c42"), n));
            assert!(lane_of(None, n) < n);
        }
    }
}
