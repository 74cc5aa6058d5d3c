//! The at-least-once consumer loop shared by workers and the router, apart from what a record
//! means. Records are spread over `lanes` by key (so one key is always handled in order); each
//! lane hands its handler a batch (what arrived, bounded by count, bytes and a short wait), the
//! handler's effects are made durable, and only then are the batch's offsets stored. A record the
//! handler cannot process goes to the dead-letter topic alone, with its reason, and the partition
//! keeps flowing; a transient failure (a database down) is retried with backoff, without skipping
//! the record and without handling the records that already succeeded again. A partition taken
//! away by a rebalance is handed over only once its records in flight are finished and their
//! offsets stored, so the next owner neither skips nor repeats them.

use crate::kafka::Publisher;
use crate::metrics::{Labels, Metrics};
use futures::future::BoxFuture;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{Headers, Message};
use rdkafka::statistics::Statistics;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// One record, owned, as handlers see it.
#[derive(Clone, Debug)]
pub struct Inbound {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    /// The trace context headers (empty when tracing is off).
    pub trace: crate::trace::Carrier,
}

impl Inbound {
    /// What the record weighs against [`BatchSettings::max_bytes`]: key and payload.
    pub fn size(&self) -> usize {
        self.payload.len() + self.key.as_ref().map_or(0, Vec::len)
    }
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

/// What a consumer does with a batch: the records one lane collected, each key's records in
/// offset order (records of several keys may be interleaved).
///
/// The answer has one outcome per record, in the order of `records`:
/// - `Ok(())` — the record's effect is durable (committed, published with acks=all). Final.
/// - `Err(Poison)` — the record can never be processed: it alone is dead-lettered. Final.
/// - `Err(Transient)` — it is handed to the handler again, after a backoff, together with the
///   batch's other transient records (and only those), in the same order.
///
/// Per-key order is the handler's part of the contract: once a record failed transiently, no
/// later record **of the same key** may be applied in that call — answer `Transient` for those
/// too (the [`PerRecord`] adapter stops at the first transient failure). A missing outcome (a
/// shorter answer) counts as transient; extra outcomes are ignored.
pub trait BatchHandler: Send + Sync + 'static {
    fn handle_batch<'a>(
        &'a self,
        records: &'a [Inbound],
    ) -> BoxFuture<'a, Vec<Result<(), Failure>>>;
}

/// A per-record [`Handler`] as a [`BatchHandler`]: the batch's keys at once, each key's records
/// one after the other ([`by_key`]). Within a key, after a transient failure the rest of that
/// key is not attempted (answered transient); other keys go on. Records of different keys have
/// no order between them (they could as well be on different lanes), so a batch of 64 handshakes
/// costs about one handshake's wait, not 64.
pub struct PerRecord(pub Arc<dyn Handler>);

/// The reason given for the records [`PerRecord`] did not attempt.
pub const NOT_ATTEMPTED: &str = "not attempted: an earlier record of the batch failed";

impl BatchHandler for PerRecord {
    fn handle_batch<'a>(
        &'a self,
        records: &'a [Inbound],
    ) -> BoxFuture<'a, Vec<Result<(), Failure>>> {
        Box::pin(by_key(self.0.as_ref(), records))
    }
}

/// `records` handed to a per-record `handler`, one outcome each in the order given: the records
/// of one key [`in_order`], the keys concurrently (records without a key count as one key).
pub async fn by_key<'a>(
    handler: &dyn Handler,
    records: impl IntoIterator<Item = &'a Inbound>,
) -> Vec<Result<(), Failure>> {
    // Per key, in first-seen order: where its records stand in `records`, and the records.
    let mut group_of: HashMap<Option<&[u8]>, usize> = HashMap::new();
    let mut groups: Vec<(Vec<usize>, Vec<&Inbound>)> = Vec::new();
    let mut n = 0;
    for (i, r) in records.into_iter().enumerate() {
        let g = *group_of.entry(r.key.as_deref()).or_insert_with(|| {
            groups.push(Default::default());
            groups.len() - 1
        });
        groups[g].0.push(i);
        groups[g].1.push(r);
        n = i + 1;
    }
    let results =
        futures::future::join_all(groups.iter().map(|(_, rs)| in_order(handler, rs.clone()))).await;
    let mut out: Vec<Option<Result<(), Failure>>> = (0..n).map(|_| None).collect();
    for ((at, _), results) in groups.iter().zip(results) {
        for (&i, result) in at.iter().zip(results) {
            out[i] = Some(result);
        }
    }
    out.into_iter()
        .map(|o| o.expect("every record is in one group"))
        .collect()
}

/// `records` handed to a per-record `handler` one after the other, one outcome each; after a
/// transient failure the rest are not attempted (answered transient, [`NOT_ATTEMPTED`]).
pub async fn in_order<'a>(
    handler: &dyn Handler,
    records: impl IntoIterator<Item = &'a Inbound>,
) -> Vec<Result<(), Failure>> {
    let mut out = Vec::new();
    let mut failed = false;
    for record in records {
        if failed {
            out.push(Err(Failure::Transient(NOT_ATTEMPTED.into())));
            continue;
        }
        let result = handler.handle(record).await;
        failed = matches!(result, Err(Failure::Transient(_)));
        out.push(result);
    }
    out
}

/// How a lane collects a batch. The first record is taken as soon as it is there; more are added
/// while they keep arriving, until one bound is reached.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchSettings {
    /// At most this many records per batch.
    pub max_records: usize,
    /// At most this many bytes (keys and payloads) per batch; a record that would exceed it starts
    /// the next batch, and a single larger record is a batch of its own.
    pub max_bytes: usize,
    /// How long to wait for more records after the first one, when the lane's queue is empty.
    /// 0 takes only what is already queued (under load records queue while a batch is handled).
    pub max_wait_ms: u64,
}

impl Default for BatchSettings {
    fn default() -> Self {
        BatchSettings {
            max_records: 64,
            max_bytes: 1 << 20,
            max_wait_ms: 0,
        }
    }
}

#[derive(Clone, Debug)]
pub struct LoopSettings {
    /// Parallel lanes; records with the same key always share a lane.
    pub lanes: usize,
    /// Records queued per lane before polling pauses (backpressure to Kafka: nothing is dropped).
    pub lane_capacity: usize,
    pub dead_letter_topic: String,
    /// How long shutdown waits for in-flight records, and how long a revocation of partitions
    /// waits for theirs before handing them over.
    pub drain_timeout: Duration,
    /// How each lane collects its batches.
    pub batch: BatchSettings,
}

/// Tracks, per partition, which offsets are in flight so that only a contiguous prefix of
/// finished records is ever marked consumed.
#[derive(Default, Debug)]
pub struct OffsetTracker {
    parts: HashMap<(String, i32), Part>,
}

#[derive(Default, Debug)]
struct Part {
    /// Each offset in flight, with when it was taken from Kafka.
    in_flight: BTreeMap<i64, Instant>,
    highest_done: Option<i64>,
}

impl OffsetTracker {
    /// `offset` was taken from Kafka `at`.
    pub fn start(&mut self, topic: &str, partition: i32, offset: i64, at: Instant) {
        self.parts
            .entry((topic.to_string(), partition))
            .or_default()
            .in_flight
            .insert(offset, at);
    }

    /// Mark `offset` finished; returns the offset whose successor is now safe to commit from
    /// (every record up to and including it is finished), if that moved. An offset that is not
    /// in flight (its partition was revoked and forgotten meanwhile) changes nothing.
    pub fn finish(&mut self, topic: &str, partition: i32, offset: i64) -> Option<i64> {
        let p = self.parts.get_mut(&(topic.to_string(), partition))?;
        p.in_flight.remove(&offset)?;
        p.highest_done = Some(p.highest_done.map_or(offset, |h| h.max(offset)));
        match p.in_flight.first_key_value() {
            Some((&lowest, _)) if lowest <= offset => None,
            Some((&lowest, _)) => Some(lowest - 1),
            None => p.highest_done,
        }
    }

    pub fn in_flight(&self) -> usize {
        self.parts.values().map(|p| p.in_flight.len()).sum()
    }

    /// When the oldest record still in flight was taken from Kafka (`None`: nothing is). A
    /// partition's records are taken in offset order, so its lowest offset is its oldest.
    pub fn oldest_start(&self) -> Option<Instant> {
        self.parts
            .values()
            .filter_map(|p| p.in_flight.first_key_value().map(|(_, &at)| at))
            .min()
    }

    /// Records in flight on these partitions.
    pub fn in_flight_of(&self, partitions: &[(String, i32)]) -> usize {
        partitions
            .iter()
            .filter_map(|k| self.parts.get(k))
            .map(|p| p.in_flight.len())
            .sum()
    }

    /// Drop what is known of a partition (it was revoked): a later assignment starts afresh from
    /// the committed offset, and late finishes of the old records are ignored.
    pub fn forget(&mut self, topic: &str, partition: i32) {
        self.parts.remove(&(topic.to_string(), partition));
    }
}

/// The offsets in flight, shared by the poll loop, the lanes and the rebalance callback.
#[derive(Default)]
pub struct Shared {
    tracker: Mutex<OffsetTracker>,
    changed: Condvar,
    /// How long a revocation waits for the records in flight on the revoked partitions, in ms;
    /// 0 outside [`run`] (nothing is consuming, or the loop has stopped).
    revoke_wait_ms: AtomicU64,
    /// The loop's metrics (`sb_consumer_lag`, `sb_consumer_prefetched`), once [`run_batched`]
    /// runs (statistics before that are dropped).
    metrics: OnceLock<Metrics>,
}

impl Shared {
    fn tracker(&self) -> std::sync::MutexGuard<'_, OffsetTracker> {
        self.tracker.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A record was dispatched to a lane.
    pub fn start(&self, record: &Inbound) {
        let at = Instant::now();
        self.tracker()
            .start(&record.topic, record.partition, record.offset, at);
    }

    /// How long the oldest record in flight has been waiting in its lane or in its handler
    /// (zero when none is). A handler that never finishes makes it grow without bound, while
    /// `sb_consumer_lag` stops moving (its statistics arrive only while the loop polls).
    pub fn oldest_in_flight(&self, now: Instant) -> Duration {
        self.tracker()
            .oldest_start()
            .map_or(Duration::ZERO, |at| now.saturating_duration_since(at))
    }

    /// A batch is final: mark its records finished and `store` (topic, partition, offset) for
    /// every partition whose finished prefix moved. Storing happens under the lock, so two lanes
    /// never store one partition's offsets out of order.
    pub fn finish(&self, batch: &[Inbound], mut store: impl FnMut(&str, i32, i64)) {
        let mut tracker = self.tracker();
        let mut moved: BTreeMap<(&str, i32), i64> = BTreeMap::new();
        for r in batch {
            if let Some(upto) = tracker.finish(&r.topic, r.partition, r.offset) {
                moved.insert((r.topic.as_str(), r.partition), upto);
            }
        }
        for ((topic, partition), upto) in moved {
            store(topic, partition, upto);
        }
        drop(tracker);
        self.changed.notify_all();
    }

    pub fn in_flight(&self) -> usize {
        self.tracker().in_flight()
    }

    /// Wait (blocking the thread) until no record of `partitions` is in flight, for at most
    /// `limit`; then forget those partitions. Returns whether everything finished in time.
    pub fn await_revoked(&self, partitions: &[(String, i32)], limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut tracker = self.tracker();
        let mut drained = true;
        while tracker.in_flight_of(partitions) > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                drained = false;
                break;
            }
            tracker = self
                .changed
                .wait_timeout(tracker, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        for (topic, partition) in partitions {
            tracker.forget(topic, *partition);
        }
        drained
    }

    /// Partitions are being revoked (`lost`: the group already gave them to another member, after
    /// this one missed its session timeout — then there is nothing to hand over).
    fn revoked(&self, partitions: Vec<(String, i32)>, lost: bool) {
        let limit = Duration::from_millis(self.revoke_wait_ms.load(Ordering::Relaxed));
        let wait = || {
            if !self.await_revoked(&partitions, limit) {
                tracing::warn!(
                    ?partitions,
                    "records of revoked partitions still in flight; the next owner gets them again"
                );
            }
        };
        if limit.is_zero() || lost {
            // Not consuming (or stopped): nothing will finish; or lost: too late to hand over.
            self.await_revoked(&partitions, Duration::ZERO);
            return;
        }
        // The callback runs inside the poll of the loop's task. On a multi-threaded runtime the
        // lanes keep running on the other threads while this one waits; on a current-thread
        // runtime they could not, so the partitions are handed over at once (at-least-once: the
        // next owner may handle the records in flight again).
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::CurrentThread) => {
                tracing::debug!("current-thread runtime: revoking without waiting");
                self.await_revoked(&partitions, Duration::ZERO);
            }
            Ok(_) => tokio::task::block_in_place(wait),
            Err(_) => wait(),
        }
    }
}

/// The consumer context of the loop: before partitions are revoked, it waits for their records
/// in flight (at most the loop's `drain_timeout`), so that their offsets are stored and, by
/// librdkafka's commit on unassignment, committed before the next owner starts reading.
#[derive(Clone, Default)]
pub struct LoopContext {
    pub shared: Arc<Shared>,
    /// The consumer group, the `group` label of `sb_consumer_lag`.
    pub group: String,
}

impl ClientContext for LoopContext {
    /// librdkafka's statistics (every `statistics.interval.ms`): the lag of each assigned
    /// partition, and what the consumer holds fetched. They arrive on the consumer's queue, so
    /// only while the loop polls: a loop blocked on a full lane reports none
    /// ([`Shared::oldest_in_flight`] shows that instead).
    fn stats(&self, statistics: Statistics) {
        if let Some(m) = self.shared.metrics.get() {
            record_lag(&m.consumer_lag, &self.group, &statistics);
            record_prefetched(&m.consumer_prefetched, &self.group, &statistics);
        }
    }
}

/// Set `sb_consumer_lag{group,topic,partition}` from one statistics report: every partition
/// with a known lag; the series of a partition whose lag is unknown (not assigned, or no
/// offset yet) are removed rather than left at a stale value.
pub fn record_lag(lag: &Family<Labels, Gauge>, group: &str, statistics: &Statistics) {
    for (name, topic) in &statistics.topics {
        for (partition, p) in &topic.partitions {
            if *partition < 0 {
                continue; // librdkafka's internal "unassigned" partition
            }
            let labels = vec![
                ("group", group.to_string()),
                ("topic", name.clone()),
                ("partition", partition.to_string()),
            ];
            if p.consumer_lag >= 0 {
                lag.get_or_create(&labels).set(p.consumer_lag);
            } else {
                lag.remove(&labels);
            }
        }
    }
}

/// Set `sb_consumer_prefetched{group}` from one statistics report: the records librdkafka holds
/// fetched and not yet taken by the loop (bounded by `kafka::PREFETCH_RECORDS` and one fetch).
/// The loop's consumer forwards every partition's fetch queue to its one queue, so each assigned
/// partition reports that queue's length (`fetchq_cnt`): the largest is taken, not the sum.
pub fn record_prefetched(prefetched: &Family<Labels, Gauge>, group: &str, statistics: &Statistics) {
    let held = statistics
        .topics
        .values()
        .flat_map(|t| t.partitions.iter())
        .filter(|(partition, _)| **partition >= 0)
        .map(|(_, p)| p.fetchq_cnt)
        .max()
        .unwrap_or(0);
    prefetched
        .get_or_create(&vec![("group", group.to_string())])
        .set(held);
}

impl ConsumerContext for LoopContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let partitions = tpl
                .elements()
                .iter()
                .map(|e| (e.topic().to_string(), e.partition()))
                .collect();
            self.shared.revoked(partitions, consumer.assignment_lost());
        }
    }
}

/// The consumer the loop runs on.
pub type LoopConsumer = StreamConsumer<LoopContext>;

fn lane_of(key: Option<&[u8]>, lanes: usize) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() % lanes as u64) as usize
}

fn to_inbound(m: &rdkafka::message::BorrowedMessage<'_>) -> Inbound {
    let mut trace = crate::trace::Carrier::default();
    if crate::trace::enabled() {
        if let Some(hs) = m.headers() {
            for h in hs.iter() {
                if let (true, Some(Ok(v))) = (
                    crate::trace::Carrier::wants(h.key),
                    h.value.map(std::str::from_utf8),
                ) {
                    trace.0.push((h.key.to_string(), v.to_string()));
                }
            }
        }
    }
    Inbound {
        topic: m.topic().to_string(),
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(<[u8]>::to_vec),
        payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        trace,
    }
}

/// Why a batch was closed (the `bound` label of `sb_consumer_batches_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    /// `max_records` reached.
    Records,
    /// `max_bytes` reached (or the next record would exceed it).
    Bytes,
    /// The queue stayed empty for `max_wait_ms` after the first record.
    Wait,
    /// The lane was closed (shutdown).
    Closed,
}

impl Bound {
    pub fn as_str(self) -> &'static str {
        match self {
            Bound::Records => "records",
            Bound::Bytes => "bytes",
            Bound::Wait => "wait",
            Bound::Closed => "closed",
        }
    }
}

/// A lane's side of its queue: collects batches.
pub struct Collector {
    rx: mpsc::Receiver<Inbound>,
    /// A record taken from the queue that did not fit the last batch: it starts the next one.
    carry: Option<Inbound>,
    settings: BatchSettings,
}

impl Collector {
    pub fn new(rx: mpsc::Receiver<Inbound>, settings: BatchSettings) -> Self {
        Collector {
            rx,
            carry: None,
            settings,
        }
    }

    /// The next batch: waits for a first record (`None` once the queue is closed and empty), then
    /// adds what is queued or arrives within `max_wait_ms`, up to `max_records` and `max_bytes`.
    pub async fn next(&mut self) -> Option<(Vec<Inbound>, Bound)> {
        let first = match self.carry.take() {
            Some(r) => r,
            None => self.rx.recv().await?,
        };
        let max_records = self.settings.max_records.max(1);
        let max_bytes = self.settings.max_bytes;
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(self.settings.max_wait_ms);
        let mut bytes = first.size();
        let mut batch = vec![first];
        loop {
            if batch.len() >= max_records {
                return Some((batch, Bound::Records));
            }
            if bytes >= max_bytes {
                return Some((batch, Bound::Bytes));
            }
            let next = match self.rx.try_recv() {
                Ok(r) => r,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    return Some((batch, Bound::Closed))
                }
                Err(mpsc::error::TryRecvError::Empty) => {
                    match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                        Ok(Some(r)) => r,
                        Ok(None) => return Some((batch, Bound::Closed)),
                        Err(_) => return Some((batch, Bound::Wait)),
                    }
                }
            };
            let n = next.size();
            if bytes + n > max_bytes {
                self.carry = Some(next);
                return Some((batch, Bound::Bytes));
            }
            bytes += n;
            batch.push(next);
        }
    }
}

/// Where poison records go.
pub trait DeadLetters: Send + Sync {
    fn dead_letter<'a>(
        &'a self,
        record: &'a Inbound,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), String>>;
}

/// The dead-letter topic, through a publisher.
pub struct DeadLetterTopic {
    pub publisher: Publisher,
    pub topic: String,
}

/// The dead-letter record of `record`: the reason, where it came from and its payload (as text
/// when it is UTF-8, else hex).
pub fn dead_letter_body(record: &Inbound, reason: &str) -> String {
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
    payload.to_string()
}

impl DeadLetters for DeadLetterTopic {
    fn dead_letter<'a>(
        &'a self,
        record: &'a Inbound,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let key = record
                .key
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            let body = dead_letter_body(record, reason);
            let traced = record.trace.sampled();
            let span = crate::hop_span!(traced, "dead_letter", topic = %record.topic, offset = record.offset);
            crate::trace::set_parent(&span, &record.trace);
            self.publisher
                .send(&self.topic, &key, body.as_bytes())
                .instrument(span)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Sleep `backoff` (then double it, up to 5 s); false if shutdown came first.
async fn back_off(backoff: &mut Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(*backoff) => {}
        _ = stop.cancelled() => return false,
    }
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
    true
}

/// Handle one batch until every record's outcome is final: dead-letter poison records one by one
/// (retrying the publish, not the handler), hand the transiently failed records — only those, in
/// order — back to the handler with backoff until shutdown. Returns false when shutdown
/// interrupted it (then nothing of the batch may be marked finished).
pub async fn process_batch(
    handler: &dyn BatchHandler,
    batch: &[Inbound],
    dlq: &dyn DeadLetters,
    metrics: &Metrics,
    stop: &CancellationToken,
) -> bool {
    let mut pending: Vec<usize> = (0..batch.len()).collect();
    let mut retry_copy: Vec<Inbound>;
    let mut backoff = FIRST_BACKOFF;
    loop {
        let records: &[Inbound] = if pending.len() == batch.len() {
            batch
        } else {
            retry_copy = pending.iter().map(|&i| batch[i].clone()).collect();
            &retry_copy
        };
        let outcomes = handler.handle_batch(records).await;
        if outcomes.len() < records.len() {
            tracing::error!(
                records = records.len(),
                outcomes = outcomes.len(),
                "batch handler answered too few outcomes; retrying the rest"
            );
        }
        let mut outcomes = outcomes.into_iter();
        let mut retry = Vec::new();
        let mut failed_keys: HashSet<Option<&[u8]>> = HashSet::new();
        let mut poison: Vec<(usize, String)> = Vec::new();
        for &i in &pending {
            let record = &batch[i];
            match outcomes.next() {
                Some(Ok(())) => {
                    if failed_keys.contains(&record.key.as_deref()) {
                        tracing::error!(topic = %record.topic, offset = record.offset, "batch handler applied a record after an earlier one of its key failed (per-key order broken)");
                    }
                }
                Some(Err(Failure::Poison(reason))) => poison.push((i, reason)),
                Some(Err(Failure::Transient(reason))) => {
                    if reason != NOT_ATTEMPTED {
                        tracing::warn!(topic = %record.topic, partition = record.partition, offset = record.offset, %reason, "transient failure; retrying");
                    }
                    failed_keys.insert(record.key.as_deref());
                    retry.push(i);
                }
                None => {
                    failed_keys.insert(record.key.as_deref());
                    retry.push(i);
                }
            }
        }
        for (i, reason) in poison {
            let record = &batch[i];
            tracing::warn!(topic = %record.topic, partition = record.partition, offset = record.offset, %reason, "dead-lettering record");
            let mut publish_backoff = FIRST_BACKOFF;
            loop {
                match dlq.dead_letter(record, &reason).await {
                    Ok(()) => {
                        metrics.records_dead_lettered.inc();
                        break;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "dead-letter publish failed; retrying")
                    }
                }
                if !back_off(&mut publish_backoff, stop).await {
                    return false;
                }
            }
        }
        if retry.is_empty() {
            return true;
        }
        metrics.records_retried.inc_by(retry.len() as u64);
        pending = retry;
        if !back_off(&mut backoff, stop).await {
            return false;
        }
    }
}

/// Consume `consumer` (already subscribed) with a per-record `handler` until `stop`, then drain
/// and commit: [`run_batched`] with the [`PerRecord`] adapter.
pub async fn run(
    consumer: LoopConsumer,
    handler: Arc<dyn Handler>,
    dlq: Publisher,
    settings: LoopSettings,
    metrics: Metrics,
    stop: CancellationToken,
) {
    run_batched(
        consumer,
        Arc::new(PerRecord(handler)),
        dlq,
        settings,
        metrics,
        stop,
    )
    .await
}

/// Consume `consumer` (already subscribed) with `handler` until `stop`, then drain and commit.
pub async fn run_batched(
    consumer: LoopConsumer,
    handler: Arc<dyn BatchHandler>,
    dlq: Publisher,
    settings: LoopSettings,
    metrics: Metrics,
    stop: CancellationToken,
) {
    let consumer = Arc::new(consumer);
    let shared = consumer.context().shared.clone();
    let _ = shared.metrics.set(metrics.clone());
    // what waits in the lanes or is being handled, read when scraped (weak: the consumer's
    // context owns `shared`)
    let scraped = (
        Arc::downgrade(&shared),
        metrics.consumer_in_flight.clone(),
        metrics.consumer_oldest_in_flight.clone(),
    );
    metrics.on_scrape(move || {
        if let Some(s) = scraped.0.upgrade() {
            scraped.1.set(s.in_flight() as i64);
            scraped
                .2
                .set(s.oldest_in_flight(Instant::now()).as_secs_f64());
        }
    });
    shared.revoke_wait_ms.store(
        settings.drain_timeout.as_millis().max(1) as u64,
        Ordering::Relaxed,
    );
    let dlq = Arc::new(DeadLetterTopic {
        publisher: dlq,
        topic: settings.dead_letter_topic.clone(),
    });
    let mut lanes = Vec::with_capacity(settings.lanes);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..settings.lanes.max(1) {
        let (tx, rx) = mpsc::channel::<Inbound>(settings.lane_capacity.max(1));
        lanes.push(tx);
        let mut collector = Collector::new(rx, settings.batch.clone());
        let handler = handler.clone();
        let dlq = dlq.clone();
        let consumer = consumer.clone();
        let shared = shared.clone();
        let metrics = metrics.clone();
        let stop = stop.clone();
        tasks.spawn(async move {
            while let Some((batch, bound)) = collector.next().await {
                metrics.consumer_batches.get(bound.as_str()).inc();
                metrics.consumer_batch_records.observe(batch.len() as f64);
                if !process_batch(handler.as_ref(), &batch, dlq.as_ref(), &metrics, &stop).await
                {
                    // Interrupted by shutdown: the rest of this lane stays unfinished too (a
                    // later record of a key must not be handled before an earlier one).
                    break;
                }
                let mut i = 0;
                while i < batch.len() {
                    let kind = crate::kafka::kind_of(&batch[i].topic);
                    let n = batch[i..]
                        .iter()
                        .take_while(|r| r.topic == batch[i].topic)
                        .count();
                    metrics.records_consumed.get(kind).inc_by(n as u64);
                    i += n;
                }
                shared.finish(&batch, |t, p, upto| {
                    if let Err(e) = consumer.store_offset(t, p, upto) {
                        tracing::debug!(error = %crate::telemetry::Chain(&e), topic = %t, partition = p, "offset not stored (partition revoked?)");
                    }
                });
            }
        });
    }
    let n = lanes.len();
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            msg = consumer.recv() => match msg {
                Ok(m) => {
                    let rec = to_inbound(&m);
                    drop(m);
                    shared.start(&rec);
                    let lane = lane_of(rec.key.as_deref(), n);
                    // A full lane blocks here: polling pauses, which is Kafka backpressure.
                    tokio::select! {
                        r = lanes[lane].send(rec) => if r.is_err() { break },
                        _ = stop.cancelled() => break,
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %crate::telemetry::Chain(&e), "consumer error");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    // Drain: stop feeding lanes, let in-flight records finish within the grace period.
    drop(lanes);
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(settings.drain_timeout, drain)
        .await
        .is_err()
    {
        tracing::warn!(
            in_flight = shared.in_flight(),
            "drain timed out; unfinished records will be redelivered"
        );
    }
    tasks.abort_all();
    // Nothing finishes any more: closing the consumer revokes without waiting.
    shared.revoke_wait_ms.store(0, Ordering::Relaxed);
    if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
        tracing::debug!(error = %crate::telemetry::Chain(&e), "final commit");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(topic: &str, lags: &[(i32, i64)]) -> Statistics {
        let partitions = lags
            .iter()
            .map(|&(p, lag)| {
                (
                    p,
                    rdkafka::statistics::Partition {
                        partition: p,
                        consumer_lag: lag,
                        ..Default::default()
                    },
                )
            })
            .collect();
        let mut s = Statistics::default();
        s.topics.insert(
            topic.to_string(),
            rdkafka::statistics::Topic {
                topic: topic.to_string(),
                partitions,
                ..Default::default()
            },
        );
        s
    }

    #[test]
    fn consumer_lag_follows_the_statistics_per_partition() {
        let m = Metrics::default();
        let ctx = LoopContext {
            group: "sb.worker-dms".into(),
            ..Default::default()
        };
        // before the loop runs, statistics go nowhere
        ctx.stats(stats("sb.dms.v1", &[(0, 9)]));
        assert!(!m.render().contains("sb_consumer_lag{"));
        let _ = ctx.shared.metrics.set(m.clone());
        ctx.stats(stats("sb.dms.v1", &[(-1, 5), (0, 7), (1, 0)]));
        let text = m.render();
        assert!(text.contains("# TYPE sb_consumer_lag gauge"), "{text}");
        assert!(text.contains(
            "sb_consumer_lag{group=\"sb.worker-dms\",topic=\"sb.dms.v1\",partition=\"0\"} 7"
        ));
        assert!(text.contains("partition=\"1\"} 0"));
        assert!(!text.contains("partition=\"-1\""), "{text}");
        // a partition whose lag is no longer known (revoked) loses its series
        ctx.stats(stats("sb.dms.v1", &[(0, 2), (1, -1)]));
        let text = m.render();
        assert!(text.contains("partition=\"0\"} 2"));
        assert!(!text.contains("partition=\"1\""), "{text}");
    }

    /// Every partition reports the length of the consumer's one queue: the gauge is that length,
    /// not the sum over partitions (nor librdkafka's "unassigned" partition -1).
    #[test]
    fn the_prefetched_records_are_the_consumers_one_queue() {
        let m = Metrics::default();
        let ctx = LoopContext {
            group: "sb.worker-dms".into(),
            ..Default::default()
        };
        let queued = |held: &[(i32, i64)]| {
            let mut s = stats("sb.dms.v1", &[]);
            let topic = s.topics.get_mut("sb.dms.v1").unwrap();
            for &(p, n) in held {
                topic.partitions.insert(
                    p,
                    rdkafka::statistics::Partition {
                        partition: p,
                        fetchq_cnt: n,
                        ..Default::default()
                    },
                );
            }
            s
        };
        ctx.stats(queued(&[(0, 9)]));
        assert!(!m.render().contains("sb_consumer_prefetched{"));
        let _ = ctx.shared.metrics.set(m.clone());
        ctx.stats(queued(&[(-1, 5000), (0, 1800), (1, 1800), (2, 1800)]));
        let text = m.render();
        assert!(
            text.contains("# TYPE sb_consumer_prefetched gauge"),
            "{text}"
        );
        assert!(
            text.contains("sb_consumer_prefetched{group=\"sb.worker-dms\"} 1800"),
            "{text}"
        );
        ctx.stats(queued(&[]));
        assert!(m
            .render()
            .contains("sb_consumer_prefetched{group=\"sb.worker-dms\"} 0"));
    }

    #[test]
    fn only_a_contiguous_prefix_is_committed() {
        let mut t = OffsetTracker::default();
        for o in 10..14 {
            t.start("t", 0, o, Instant::now());
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

    fn rec(offset: i64, key: &str, payload: &str) -> Inbound {
        Inbound {
            topic: "sb.dms.v1".into(),
            partition: 0,
            offset,
            key: Some(key.as_bytes().to_vec()),
            payload: payload.as_bytes().to_vec(),
            trace: Default::default(),
        }
    }

    fn settings(max_records: usize, max_bytes: usize, max_wait_ms: u64) -> BatchSettings {
        BatchSettings {
            max_records,
            max_bytes,
            max_wait_ms,
        }
    }

    fn offsets(batch: &[Inbound]) -> Vec<i64> {
        batch.iter().map(|r| r.offset).collect()
    }

    #[test]
    fn batch_defaults_are_small_and_parse() {
        let d = BatchSettings::default();
        assert_eq!(
            (d.max_records, d.max_bytes, d.max_wait_ms),
            (64, 1 << 20, 0)
        );
        let s: BatchSettings = serde_json::from_str(r#"{"max_records": 8}"#).unwrap();
        assert_eq!(s, settings(8, 1 << 20, 0));
        assert!(serde_json::from_str::<BatchSettings>(r#"{"bogus": 1}"#).is_err());
        assert_eq!(rec(0, "k1", "abc").size(), 5);
        let mut no_key = rec(0, "", "abc");
        no_key.key = None;
        assert_eq!(no_key.size(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_is_bounded_by_its_record_count() {
        let (tx, rx) = mpsc::channel(16);
        for o in 0..5 {
            tx.send(rec(o, "k", "x")).await.unwrap();
        }
        let mut c = Collector::new(rx, settings(3, 1 << 20, 5));
        let (b, bound) = c.next().await.unwrap();
        assert_eq!((offsets(&b), bound), (vec![0, 1, 2], Bound::Records));
        let started = tokio::time::Instant::now();
        let (b, bound) = c.next().await.unwrap();
        assert_eq!((offsets(&b), bound), (vec![3, 4], Bound::Wait));
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(5),
            "waited max_wait"
        );
        drop(tx);
        assert!(c.next().await.is_none(), "closed and empty");
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_is_bounded_by_its_bytes() {
        let (tx, rx) = mpsc::channel(16);
        // 10 bytes each (key "k" + 9 bytes), then one record of 40 bytes, then one of 10.
        for o in 0..3 {
            tx.send(rec(o, "k", "123456789")).await.unwrap();
        }
        tx.send(rec(3, "k", &"y".repeat(39))).await.unwrap();
        tx.send(rec(4, "k", "123456789")).await.unwrap();
        drop(tx);
        let mut c = Collector::new(rx, settings(100, 25, 0));
        let (b, bound) = c.next().await.unwrap();
        assert_eq!(
            (offsets(&b), bound),
            (vec![0, 1], Bound::Bytes),
            "the third would make 30 > 25 bytes"
        );
        let (b, bound) = c.next().await.unwrap();
        assert_eq!(
            (offsets(&b), bound),
            (vec![2], Bound::Bytes),
            "the carried record starts the next batch; 40 bytes do not fit beside it"
        );
        let (b, bound) = c.next().await.unwrap();
        assert_eq!(
            (offsets(&b), bound),
            (vec![3], Bound::Bytes),
            "a record over the limit is a batch of its own"
        );
        let (b, bound) = c.next().await.unwrap();
        assert_eq!((offsets(&b), bound), (vec![4], Bound::Closed));
        assert!(c.next().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_waits_a_few_ms_for_more_records() {
        let (tx, rx) = mpsc::channel(16);
        let mut c = Collector::new(rx, settings(100, 1 << 20, 5));
        let sender = tokio::spawn(async move {
            tx.send(rec(0, "a", "x")).await.unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
            tx.send(rec(1, "b", "x")).await.unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
            tx.send(rec(2, "a", "x")).await.unwrap();
            // After the 5 ms window of the first batch: the next batch.
            tokio::time::sleep(Duration::from_millis(10)).await;
            tx.send(rec(3, "a", "x")).await.unwrap();
        });
        let (b, bound) = c.next().await.unwrap();
        assert_eq!((offsets(&b), bound), (vec![0, 1, 2], Bound::Wait));
        let (b, bound) = c.next().await.unwrap();
        assert_eq!((offsets(&b), bound), (vec![3], Bound::Closed));
        sender.await.unwrap();
        assert!(c.next().await.is_none());

        // With no wait, only what is queued already.
        let (tx, rx) = mpsc::channel(16);
        let mut c = Collector::new(rx, settings(100, 1 << 20, 0));
        tx.send(rec(0, "a", "x")).await.unwrap();
        tx.send(rec(1, "a", "x")).await.unwrap();
        let started = tokio::time::Instant::now();
        let (b, bound) = c.next().await.unwrap();
        assert_eq!((offsets(&b), bound), (vec![0, 1], Bound::Wait));
        assert_eq!(started.elapsed(), Duration::ZERO);

        // The lane closed while its batch waits for more: the batch ends then, not at the wait.
        let (tx, rx) = mpsc::channel(16);
        let mut c = Collector::new(rx, settings(100, 1 << 20, 1_000));
        tx.send(rec(0, "a", "x")).await.unwrap();
        let closer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            drop(tx);
        });
        let started = tokio::time::Instant::now();
        let (b, bound) = c.next().await.unwrap();
        assert_eq!((offsets(&b), bound), (vec![0], Bound::Closed));
        assert!(started.elapsed() < Duration::from_millis(1_000));
        closer.await.unwrap();
        assert_eq!(
            [Bound::Records, Bound::Bytes, Bound::Wait, Bound::Closed].map(Bound::as_str),
            ["records", "bytes", "wait", "closed"]
        );
    }

    /// A batch handler that answers from a script, one answer per call, and remembers what it
    /// was given. Without a scripted answer every record succeeds.
    #[derive(Default)]
    struct Scripted {
        answers: Mutex<Vec<Vec<&'static str>>>,
        calls: Mutex<Vec<Vec<i64>>>,
    }

    impl Scripted {
        fn new(answers: Vec<Vec<&'static str>>) -> Self {
            Scripted {
                answers: Mutex::new(answers.into_iter().rev().collect()),
                calls: Mutex::default(),
            }
        }
        fn calls(&self) -> Vec<Vec<i64>> {
            self.calls.lock().unwrap().clone()
        }
    }

    impl BatchHandler for Scripted {
        fn handle_batch<'a>(
            &'a self,
            records: &'a [Inbound],
        ) -> BoxFuture<'a, Vec<Result<(), Failure>>> {
            self.calls.lock().unwrap().push(offsets(records));
            let answer = self.answers.lock().unwrap().pop();
            Box::pin(async move {
                let answer = answer.unwrap_or_else(|| vec!["ok"; records.len()]);
                answer
                    .into_iter()
                    .map(|a| match a {
                        "ok" => Ok(()),
                        "poison" => Err(Failure::Poison("bad bytes".into())),
                        other => Err(Failure::Transient(other.into())),
                    })
                    .collect()
            })
        }
    }

    /// Dead letters in memory; the first `fail` publishes fail.
    #[derive(Default)]
    struct Letters {
        fail: Mutex<usize>,
        sent: Mutex<Vec<(i64, String)>>,
    }

    impl DeadLetters for Letters {
        fn dead_letter<'a>(
            &'a self,
            record: &'a Inbound,
            reason: &'a str,
        ) -> BoxFuture<'a, Result<(), String>> {
            Box::pin(async move {
                let mut fail = self.fail.lock().unwrap();
                if *fail > 0 {
                    *fail -= 1;
                    return Err("broker down".into());
                }
                self.sent
                    .lock()
                    .unwrap()
                    .push((record.offset, dead_letter_body(record, reason)));
                Ok(())
            })
        }
    }

    fn batch_of(n: i64) -> Vec<Inbound> {
        (0..n)
            .map(|o| rec(o, &format!("k{}", o % 2), "{}"))
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_poison_record_is_dead_lettered_alone() {
        let h = Scripted::new(vec![vec!["ok", "poison", "ok", "ok"]]);
        let dlq = Letters::default();
        let m = Metrics::default();
        let stop = CancellationToken::new();
        assert!(process_batch(&h, &batch_of(4), &dlq, &m, &stop).await);
        assert_eq!(
            h.calls(),
            vec![vec![0, 1, 2, 3]],
            "handled once, not retried"
        );
        let sent = dlq.sent.lock().unwrap().clone();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].0, 1);
        let body: serde_json::Value = serde_json::from_str(&sent[0].1).unwrap();
        assert_eq!(body["reason"], "bad bytes");
        assert_eq!(body["offset"], 1);
        assert_eq!(body["payload"], "{}");
        assert_eq!(m.records_dead_lettered.get(), 1);
        assert_eq!(m.records_retried.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_dead_letter_publish_is_retried_without_the_handler() {
        let h = Scripted::new(vec![vec!["poison", "ok"]]);
        let dlq = Letters {
            fail: Mutex::new(2),
            ..Default::default()
        };
        let started = tokio::time::Instant::now();
        assert!(
            process_batch(
                &h,
                &batch_of(2),
                &dlq,
                &Metrics::default(),
                &CancellationToken::new()
            )
            .await
        );
        assert_eq!(started.elapsed(), Duration::from_millis(50 + 100));
        assert_eq!(h.calls().len(), 1);
        assert_eq!(dlq.sent.lock().unwrap().len(), 1);

        // Shutdown while the dead-letter topic is unreachable: the batch is not final.
        let h = Scripted::new(vec![vec!["poison"]]);
        let dlq = Letters {
            fail: Mutex::new(usize::MAX),
            ..Default::default()
        };
        let stop = CancellationToken::new();
        stop.cancel();
        assert!(!process_batch(&h, &batch_of(1), &dlq, &Metrics::default(), &stop).await);
    }

    #[tokio::test(start_paused = true)]
    async fn only_the_transiently_failed_records_are_retried_in_order() {
        // Round 1: 0 ok, 1 transient (key k1), 2 ok (key k0), 3 transient (k1, after 1).
        // Round 2: 1 ok, 3 transient. Round 3: 3 ok.
        let h = Scripted::new(vec![
            vec!["ok", "db down", "ok", "db down"],
            vec!["ok", "db down"],
            vec!["ok"],
        ]);
        let dlq = Letters::default();
        let m = Metrics::default();
        let started = tokio::time::Instant::now();
        assert!(process_batch(&h, &batch_of(4), &dlq, &m, &CancellationToken::new()).await);
        assert_eq!(
            h.calls(),
            vec![vec![0, 1, 2, 3], vec![1, 3], vec![3]],
            "records that succeeded are not handled again"
        );
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(50 + 100),
            "backoff doubles"
        );
        assert_eq!(m.records_retried.get(), 3);
        assert!(dlq.sent.lock().unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_interrupts_a_retry_and_a_short_answer_is_retried() {
        let stop = CancellationToken::new();
        let h = Scripted::new(vec![vec!["ok", "db down"]]);
        let stopper = stop.clone();
        let cancel = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            stopper.cancel();
        });
        let m = Metrics::default();
        assert!(!process_batch(&h, &batch_of(2), &Letters::default(), &m, &stop).await);
        cancel.await.unwrap();
        assert_eq!(h.calls(), vec![vec![0, 1]]);

        // An answer with fewer outcomes than records: the missing ones are retried, and the
        // handler's fault is logged.
        let h = Scripted::new(vec![vec!["ok"], vec!["ok", "poison"]]);
        let dlq = Letters::default();
        let logs = crate::telemetry::LogCapture::default();
        let capture = logs.install("warn");
        assert!(process_batch(&h, &batch_of(3), &dlq, &m, &CancellationToken::new()).await);
        drop(capture);
        assert_eq!(h.calls(), vec![vec![0, 1, 2], vec![1, 2]]);
        assert_eq!(dlq.sent.lock().unwrap()[0].0, 2);
        let short = logs.with_message("batch handler answered too few outcomes; retrying the rest");
        assert_eq!(short.len(), 1, "{}", logs.text());
        assert_eq!(short[0]["level"], "ERROR");
        assert_eq!(short[0]["records"], 3);
        assert_eq!(short[0]["outcomes"], 1);

        // A handler that breaks per-key order is reported (it cannot be undone), not retried.
        let h = Scripted::new(vec![vec!["db down", "ok", "ok"], vec!["ok"]]);
        assert!(process_batch(&h, &batch_of(3), &dlq, &m, &CancellationToken::new()).await);
        assert_eq!(h.calls(), vec![vec![0, 1, 2], vec![0]]);
    }

    /// A per-record handler that fails transiently on the offsets in `transient` once each.
    struct OneByOne {
        transient: Mutex<HashSet<i64>>,
        seen: Mutex<Vec<i64>>,
    }

    impl Handler for OneByOne {
        fn handle<'a>(&'a self, record: &'a Inbound) -> BoxFuture<'a, Result<(), Failure>> {
            Box::pin(async move {
                self.seen.lock().unwrap().push(record.offset);
                if record.payload == b"poison" {
                    return Err(Failure::Poison("undecodable".into()));
                }
                if self.transient.lock().unwrap().remove(&record.offset) {
                    return Err(Failure::Transient("redis down".into()));
                }
                Ok(())
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_per_record_handler_stops_a_key_at_a_transient_failure_and_the_other_keys_go_on() {
        let inner = Arc::new(OneByOne {
            transient: Mutex::new([2].into()),
            seen: Mutex::default(),
        });
        let h = PerRecord(inner.clone());
        // Offsets 0..4 of key k0 (1 poison, 2 transient once), 4 and 5 of key k1.
        let mut batch: Vec<Inbound> = (0..6)
            .map(|o| rec(o, if o < 4 { "k0" } else { "k1" }, "{}"))
            .collect();
        batch[1].payload = b"poison".to_vec();
        let out = h.handle_batch(&batch).await;
        let shown: Vec<String> = out
            .iter()
            .map(|o| match o {
                Ok(()) => "ok".to_string(),
                Err(f) => f.to_string(),
            })
            .collect();
        assert_eq!(
            shown,
            [
                "ok".to_string(),
                "poison record: undecodable".into(),
                "transient failure: redis down".into(),
                format!("transient failure: {NOT_ATTEMPTED}"),
                "ok".into(),
                "ok".into(),
            ]
        );
        assert_eq!(
            *inner.seen.lock().unwrap(),
            vec![0, 1, 2, 4, 5],
            "3 not attempted; k1 handled although k0 failed"
        );

        // Through the loop: the poison record is dead-lettered, 2 and 3 handled again, in order.
        inner.seen.lock().unwrap().clear();
        inner.transient.lock().unwrap().insert(2);
        let dlq = Letters::default();
        let m = Metrics::default();
        assert!(process_batch(&h, &batch, &dlq, &m, &CancellationToken::new()).await);
        assert_eq!(*inner.seen.lock().unwrap(), vec![0, 1, 2, 4, 5, 2, 3]);
        assert_eq!(dlq.sent.lock().unwrap().len(), 1);
        assert_eq!(m.records_retried.get(), 2);
    }

    /// A per-record handler that takes 10 ms per record and logs the order records started in.
    #[derive(Default)]
    struct Slow {
        started: Mutex<Vec<i64>>,
    }

    impl Handler for Slow {
        fn handle<'a>(&'a self, record: &'a Inbound) -> BoxFuture<'a, Result<(), Failure>> {
            Box::pin(async move {
                self.started.lock().unwrap().push(record.offset);
                tokio::time::sleep(Duration::from_millis(10)).await;
                Ok(())
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_keys_of_a_batch_are_handled_at_once_and_each_key_in_order() {
        let inner = Arc::new(Slow::default());
        let h = PerRecord(inner.clone());
        // Keys a, b, a, c, b, a: three keys, a has three records.
        let batch: Vec<Inbound> = ["a", "b", "a", "c", "b", "a"]
            .iter()
            .enumerate()
            .map(|(o, k)| rec(o as i64, k, "{}"))
            .collect();
        let t0 = tokio::time::Instant::now();
        let out = h.handle_batch(&batch).await;
        assert!(out.iter().all(Result::is_ok));
        assert_eq!(
            t0.elapsed(),
            Duration::from_millis(30),
            "the longest key's three records, not six"
        );
        let order = inner.started.lock().unwrap().clone();
        let of = |key: &[i64]| -> Vec<i64> {
            order.iter().copied().filter(|o| key.contains(o)).collect()
        };
        assert_eq!(of(&[0, 2, 5]), vec![0, 2, 5], "key a in offset order");
        assert_eq!(of(&[1, 4]), vec![1, 4], "key b in offset order");
        assert_eq!(
            &order[..3],
            &[0, 1, 3],
            "every key's first record starts at once"
        );
    }

    /// The age of the oldest record in flight: of the partitions' lowest offsets, the one taken
    /// first; a finished record no longer counts, and with nothing in flight it is zero.
    #[test]
    fn the_oldest_record_in_flight_is_the_first_taken_of_any_partition() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut t = OffsetTracker::default();
        assert_eq!(t.oldest_start(), None);
        t.start("t", 0, 5, at(10));
        t.start("t", 1, 7, at(20));
        t.start("t", 0, 6, at(30));
        assert_eq!(t.oldest_start(), Some(at(10)));
        assert_eq!(t.finish("t", 0, 5), Some(5));
        assert_eq!(
            t.oldest_start(),
            Some(at(20)),
            "partition 1's record is now the oldest"
        );
        t.finish("t", 1, 7);
        assert_eq!(t.oldest_start(), Some(at(30)));
        t.finish("t", 0, 6);
        assert_eq!(t.oldest_start(), None);

        let s = Shared::default();
        let now = Instant::now();
        assert_eq!(s.oldest_in_flight(now), Duration::ZERO, "nothing in flight");
        let r = rec(1, "k", "x");
        s.start(&r);
        let waited = s.oldest_in_flight(now + Duration::from_secs(90));
        assert!(waited > Duration::from_secs(89), "{waited:?}");
        s.finish(std::slice::from_ref(&r), |_, _, _| {});
        assert_eq!(s.oldest_in_flight(Instant::now()), Duration::ZERO);
    }

    #[test]
    fn revoked_and_unknown_offsets_are_forgotten() {
        let mut t = OffsetTracker::default();
        t.start("t", 0, 5, Instant::now());
        t.start("t", 1, 7, Instant::now());
        let p0 = [("t".to_string(), 0)];
        assert_eq!(t.in_flight_of(&p0), 1);
        t.forget("t", 0);
        assert_eq!(t.in_flight_of(&p0), 0);
        assert_eq!(t.finish("t", 0, 5), None, "late finish of a revoked record");
        // Assigned again, from the committed offset 3: the old record 5 must not count as done.
        t.start("t", 0, 3, Instant::now());
        assert_eq!(t.finish("t", 0, 5), None, "not in flight");
        assert_eq!(t.finish("t", 0, 3), Some(3));
        assert_eq!(t.in_flight(), 1);
    }

    #[test]
    fn shared_offsets_are_stored_per_partition_once_a_batch_is_final() {
        let s = Shared::default();
        let mut b = batch_of(3);
        b[2].partition = 1;
        for r in &b {
            s.start(r);
        }
        let mut stored = Vec::new();
        s.finish(&b[1..], |t, p, o| stored.push((t.to_string(), p, o)));
        assert_eq!(
            stored,
            vec![("sb.dms.v1".to_string(), 1, 2)],
            "0 still in flight"
        );
        s.finish(&b[..1], |t, p, o| stored.push((t.to_string(), p, o)));
        assert_eq!(stored[1], ("sb.dms.v1".to_string(), 0, 1));
        assert_eq!(s.in_flight(), 0);
    }

    #[test]
    fn a_revocation_waits_for_the_records_in_flight() {
        let s = Arc::new(Shared::default());
        let b = batch_of(2);
        for r in &b {
            s.start(r);
        }
        let parts = vec![("sb.dms.v1".to_string(), 0)];
        assert!(
            !s.await_revoked(&parts, Duration::from_millis(1)),
            "nothing finishes: gives up"
        );
        assert_eq!(s.in_flight(), 0, "and forgets the partition");

        for r in &b {
            s.start(r);
        }
        let finisher = {
            let s = s.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                s.finish(&b, |_, _, _| {});
            })
        };
        assert!(s.await_revoked(&parts, Duration::from_secs(10)));
        finisher.join().unwrap();

        // Outside the loop (no wait configured) and outside a runtime, a revocation does not wait.
        s.start(&rec(9, "k", "x"));
        s.revoked(parts.clone(), false);
        assert_eq!(s.in_flight(), 0);
        s.revoke_wait_ms.store(1, Ordering::Relaxed);
        s.start(&rec(9, "k", "x"));
        s.revoked(parts.clone(), false);
        assert_eq!(s.in_flight(), 0, "waited 1 ms, then forgot");
        // A lost assignment is not waited for.
        s.revoke_wait_ms.store(60_000, Ordering::Relaxed);
        s.start(&rec(9, "k", "x"));
        let started = Instant::now();
        s.revoked(parts, true);
        assert_eq!(s.in_flight(), 0);
        assert!(started.elapsed() < Duration::from_secs(60));
    }

    #[tokio::test]
    async fn a_current_thread_runtime_revokes_without_waiting() {
        let s = Shared::default();
        s.revoke_wait_ms.store(60_000, Ordering::Relaxed);
        s.start(&rec(1, "k", "x"));
        s.revoked(vec![("sb.dms.v1".to_string(), 0)], false);
        assert_eq!(s.in_flight(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_multi_thread_runtime_revokes_once_the_lanes_finished() {
        let s = Arc::new(Shared::default());
        s.revoke_wait_ms.store(60_000, Ordering::Relaxed);
        let r = rec(1, "k", "x");
        s.start(&r);
        let lane = {
            let s = s.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                s.finish(&[r], |_, _, _| {});
            })
        };
        let started = Instant::now();
        s.revoked(vec![("sb.dms.v1".to_string(), 0)], false);
        assert!(started.elapsed() >= Duration::from_millis(20));
        assert!(started.elapsed() < Duration::from_secs(60));
        lane.await.unwrap();
    }
}
