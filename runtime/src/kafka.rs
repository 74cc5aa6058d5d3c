//! Kafka clients configured the way the brief asks: an idempotent producer whose sends fail fast
//! enough for an edge to tell its client, and consumers that store offsets only when told to.

use crate::metrics::Metrics;
use crate::{KafkaSettings, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{DeliveryResult, Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, FutureProducer, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientConfig;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tracing::Instrument;

fn base(s: &KafkaSettings) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &s.brokers)
        .set("socket.nagle.disable", "true")
        .set("broker.address.family", "v4");
    c
}

/// How long a worker's or the router's producer holds records by default (`linger.ms`): they
/// already publish a batch's records together, and each hop's wait adds to a message's latency.
pub const LINGER_MS: u64 = 1;

/// An idempotent producer (acks=all), holding records `kafka.linger_ms` ([`LINGER_MS`] when
/// unset) to send them in one request.
pub fn producer(s: &KafkaSettings) -> Result<FutureProducer> {
    Ok(producer_config(s).create()?)
}

fn producer_config(s: &KafkaSettings) -> ClientConfig {
    let mut c = base(s);
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", s.linger_ms.unwrap_or(LINGER_MS).to_string())
        .set("compression.type", "lz4")
        .set("message.timeout.ms", s.message_timeout_ms.to_string())
        .set("queue.buffering.max.messages", "100000")
        // An edge does not wait for the broker before reading a connection's next frame: this
        // queue is what bounds the frames in flight (a full queue refuses at once: `unavailable`).
        .set("queue.buffering.max.kbytes", QUEUE_MAX_KBYTES.to_string());
    c
}

/// The most a producer holds in memory before it refuses records, in KiB (librdkafka's default is
/// 1 GiB): 64 MiB, about 6 s of 10,000 requests a second at 1 KiB each.
pub const QUEUE_MAX_KBYTES: u64 = 64 * 1024;

/// A consumer in `group` that never stores offsets by itself: the caller stores them after the
/// effect of a record is durable, and they are committed every second, when partitions are
/// revoked, and at shutdown. The context is the caller's choice: the consumer loop's
/// (`consume::LoopContext`, which hands revoked partitions over only once their records in
/// flight are finished) or the default one for a plain reader.
pub fn consumer<C: ConsumerContext + Default + 'static>(
    s: &KafkaSettings,
    group: &str,
    from_latest: bool,
) -> Result<StreamConsumer<C>> {
    Ok(consumer_config(s, group, from_latest).create_with_context(C::default())?)
}

/// How often a loop consumer's librdkafka reports its statistics (consumer lag).
pub const STATS_INTERVAL_MS: u64 = 5_000;

/// A consumer for the consumer loop: [`consumer`], plus librdkafka's statistics every
/// [`STATS_INTERVAL_MS`], from which the loop's context keeps `sb_consumer_lag` per partition.
pub fn loop_consumer(
    s: &KafkaSettings,
    group: &str,
    from_latest: bool,
) -> Result<crate::consume::LoopConsumer> {
    let context = crate::consume::LoopContext {
        group: group.to_string(),
        ..Default::default()
    };
    Ok(consumer_config(s, group, from_latest)
        .set("statistics.interval.ms", STATS_INTERVAL_MS.to_string())
        .create_with_context(context)?)
}

/// Records a consumer holds fetched and not yet taken before it stops fetching
/// (`queued.min.messages`; librdkafka counts a partition's queue, which for these consumers is
/// the consumer's one queue of every partition): several of the largest batches a handler takes.
pub const PREFETCH_RECORDS: usize = 2_000;

/// How long a consumer holding [`PREFETCH_RECORDS`] waits before it looks again
/// (`fetch.queue.backoff.ms`; librdkafka's default, 1 s, would leave a fast handler idle).
pub const PREFETCH_BACKOFF_MS: u64 = 10;

/// The most one fetch takes of one partition (`max.partition.fetch.bytes`; librdkafka's default
/// is 1 MiB). A fetch's records are queued partition after partition: a consumer that is behind
/// would otherwise take 1 MiB of one partition's records before the next partition's, and the
/// conversations of the others would wait seconds. A larger record is still fetched whole.
pub const FETCH_PARTITION_BYTES: usize = 64 * 1024;

fn consumer_config(s: &KafkaSettings, group: &str, from_latest: bool) -> ClientConfig {
    let mut c = base(s);
    c.set("group.id", group)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set(
            "auto.offset.reset",
            if from_latest { "latest" } else { "earliest" },
        )
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        // `fetch.min.bytes` is 1: the broker answers as soon as a record is there, so a longer wait
        // costs no latency and stops idle consumers polling the broker 100 times a second.
        .set("fetch.wait.max.ms", "100")
        // Prefetch about this many records ahead of the application, not librdkafka's 100,000
        // (up to 64 MiB). A consumer that keeps up never gets near it and fetches as before; one
        // that is behind stops fetching one produce request's records at a time at the head of
        // the log, and takes what piled up in slices of every partition in turn instead.
        .set("queued.min.messages", PREFETCH_RECORDS.to_string())
        .set("fetch.queue.backoff.ms", PREFETCH_BACKOFF_MS.to_string())
        .set(
            "max.partition.fetch.bytes",
            FETCH_PARTITION_BYTES.to_string(),
        )
        .set("partition.assignment.strategy", "cooperative-sticky");
    if let Some(id) = &s.group_instance_id {
        c.set("group.instance.id", id);
    }
    c
}

/// Create topics that do not exist yet (existing ones are left as they are).
pub async fn ensure_topics(
    s: &KafkaSettings,
    names: &[String],
    partitions: i32,
    retention_ms: Option<u64>,
) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = base(s).create()?;
    let retention = retention_ms.map(|r| r.to_string());
    let min_isr = if s.replication_factor >= 3 { "2" } else { "1" };
    let new: Vec<NewTopic> = names
        .iter()
        .map(|n| {
            let mut t = NewTopic::new(n, partitions, TopicReplication::Fixed(s.replication_factor))
                .set("min.insync.replicas", min_isr);
            if let Some(r) = &retention {
                // Kafka deletes whole segments only: a segment rolls at 1 GiB or 7 days by
                // default, so without `segment.ms` a busy topic keeps records for up to a week.
                t = t.set("retention.ms", r).set("segment.ms", r);
            }
            t
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(new.iter(), &opts).await? {
        match result {
            Ok(_) => {}
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(crate::Error::Config(format!(
                    "creating topic {topic}: {code}"
                )))
            }
        }
    }
    Ok(())
}

/// Request topics carry commands (and, for sign-up and login, passwords), not a history: they
/// are kept one hour, long enough to ride out a worker outage, then deleted by the broker.
/// Per-edge topics likewise (they carry fresh tokens in login replies).
pub const REQUEST_RETENTION_MS: u64 = 3_600_000;
/// Dead-lettered records are kept a week for inspection.
pub const DEAD_LETTER_RETENTION_MS: u64 = 7 * 24 * 3_600_000;

/// Create the shared topics (requests, deliveries, dead letters) if missing.
pub async fn ensure_shared_topics(s: &KafkaSettings) -> Result<()> {
    let t = s.topics();
    let mut requests: Vec<String> = topics::Domain::ALL.iter().map(|d| t.requests(*d)).collect();
    requests.push(t.deliver());
    ensure_topics(s, &requests, s.partitions, Some(REQUEST_RETENTION_MS)).await?;
    ensure_topics(
        s,
        &[t.dead_letter()],
        s.partitions,
        Some(DEAD_LETTER_RETENTION_MS),
    )
    .await
}

/// A producer with the send timeout and metrics every publisher needs.
#[derive(Clone)]
pub struct Publisher {
    producer: ThreadedProducer<Delivery>,
}

/// A publish that did not reach the broker in time.
#[derive(Debug, thiserror::Error)]
#[error("publish to {topic} failed: {source}")]
pub struct PublishError {
    pub topic: String,
    #[source]
    pub source: KafkaError,
}

/// Who hears how a record ended.
enum Done {
    /// A task awaits the outcome ([`Publisher::send`]).
    Wait(oneshot::Sender<std::result::Result<(), KafkaError>>),
    /// Nobody waits; this runs if the record fails ([`Publisher::enqueue`]).
    OnFailure(Box<dyn FnOnce(PublishError) + Send + Sync>),
}

/// A record on its way: when it was handed over, and who hears the outcome.
pub struct InFlight {
    at: Instant,
    done: Done,
}

/// The producer's context: librdkafka's polling thread calls [`ProducerContext::delivery`] once
/// per record, when the broker has it or it failed. It keeps the publish metrics and tells whoever
/// is to be told; a record nobody waits for costs no task wake-up when it succeeds.
pub struct Delivery {
    metrics: Metrics,
}

impl ClientContext for Delivery {}

impl ProducerContext for Delivery {
    type DeliveryOpaque = Box<InFlight>;

    fn delivery(&self, result: &DeliveryResult<'_>, sent: Box<InFlight>) {
        match result {
            Ok(m) => {
                self.metrics
                    .produce_seconds
                    .observe(crate::metrics::since(sent.at));
                self.metrics.records_published.get(kind_of(m.topic())).inc();
                if let Done::Wait(tx) = sent.done {
                    let _ = tx.send(Ok(()));
                }
            }
            Err((e, m)) => {
                self.metrics.publish_failures.inc();
                match sent.done {
                    Done::Wait(tx) => {
                        let _ = tx.send(Err(e.clone()));
                    }
                    Done::OnFailure(tell) => tell(PublishError {
                        topic: m.topic().to_string(),
                        source: e.clone(),
                    }),
                }
            }
        }
    }
}

/// The `kafka.publish` span of a record published now: inside a traced request's span only
/// (outside any span, an edge's heartbeat say, or in an untraced request, a publish makes no
/// span and its record carries no context).
fn publish_span(topic: &str) -> Option<tracing::Span> {
    if !crate::trace::traced_current() {
        return None;
    }
    Some(tracing::info_span!(
        "kafka.publish",
        otel.kind = "producer",
        messaging.system = "kafka",
        messaging.destination.name = %topic,
    ))
}

impl Publisher {
    pub fn new(s: &KafkaSettings, metrics: Metrics) -> Result<Self> {
        Ok(Publisher {
            producer: producer_config(s).create_with_context(Delivery { metrics })?,
        })
    }

    /// Send one record and wait until the broker has it (or `message.timeout.ms` passed). With
    /// tracing on, the publish is a `kafka.publish` span, child of the current span, whose
    /// context travels in the record's headers (W3C `traceparent`, written by the propagator).
    /// Outside any span (an edge's heartbeat) a publish starts no trace of its own.
    pub async fn send(&self, topic: &str, key: &str, payload: &[u8]) -> Result<(), PublishError> {
        let Some(span) = publish_span(topic) else {
            return self.send_with(topic, key, payload, None).await;
        };
        let carrier = crate::trace::Carrier::of(&span);
        self.send_with(topic, key, payload, Some(&carrier))
            .instrument(span)
            .await
    }

    /// [`Publisher::send`] of a record that carries no trace context of its own, even inside a
    /// traced span: for a record whose items carry their own (a worker's batch for an edge holds
    /// the items of many requests, traced or not).
    pub async fn send_untraced(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
    ) -> Result<(), PublishError> {
        self.send_with(topic, key, payload, None).await
    }

    async fn send_with(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
        trace: Option<&crate::trace::Carrier>,
    ) -> Result<(), PublishError> {
        let (tx, rx) = oneshot::channel();
        self.hand_over(topic, key, payload, trace, Done::Wait(tx))?;
        // (a producer dropped with the record purges it, which is a failure like any other)
        rx.await
            .unwrap_or(Err(KafkaError::Canceled))
            .map_err(|source| PublishError {
                topic: topic.to_string(),
                source,
            })
    }

    /// Queue one record without waiting for the broker: `Ok` once it is queued; if it fails
    /// later (`message.timeout.ms` passed), `on_failure` runs on librdkafka's polling thread, so
    /// it must be quick and never block. A record refused at once (queue full, too large) is an
    /// `Err` here and `on_failure` is not called. With tracing on, inside a span, the record
    /// carries the context of a `kafka.publish` span like [`Publisher::send`]'s, which ends once
    /// the record is queued (nothing waits for the broker here).
    pub fn enqueue(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
        on_failure: impl FnOnce(PublishError) + Send + Sync + 'static,
    ) -> Result<(), PublishError> {
        let span = publish_span(topic);
        let carrier = span.as_ref().map(crate::trace::Carrier::of);
        let done = Done::OnFailure(Box::new(on_failure));
        self.hand_over(topic, key, payload, carrier.as_ref(), done)
    }

    fn hand_over(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
        trace: Option<&crate::trace::Carrier>,
        done: Done,
    ) -> Result<(), PublishError> {
        let sent = Box::new(InFlight {
            at: Instant::now(),
            done,
        });
        let mut record = BaseRecord::with_opaque_to(topic, sent)
            .key(key)
            .payload(payload);
        if let Some(c) = trace.filter(|c| !c.0.is_empty()) {
            let mut headers = OwnedHeaders::new_with_capacity(c.0.len());
            for (k, v) in &c.0 {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v),
                });
            }
            record = record.headers(headers);
        }
        self.producer.send(record).map_err(|(source, _)| {
            self.producer.context().metrics.publish_failures.inc();
            PublishError {
                topic: topic.to_string(),
                source,
            }
        })
    }

    /// Readiness: the cluster answers a metadata request (on a blocking thread, like the flush).
    pub async fn reachable(&self) -> Result<(), String> {
        let producer = self.producer.clone();
        let timeout = crate::health::CHECK_TIMEOUT;
        match tokio::task::spawn_blocking(move || producer.client().fetch_metadata(None, timeout))
            .await
        {
            Ok(Ok(m)) if !m.brokers().is_empty() => Ok(()),
            Ok(Ok(_)) => Err("no broker in the cluster metadata".into()),
            Ok(Err(e)) => Err(crate::telemetry::Chain(&e).to_string()),
            Err(e) => Err(crate::telemetry::Chain(&e).to_string()),
        }
    }

    /// Wait for everything queued to be delivered (shutdown), at most `timeout`. librdkafka's
    /// flush blocks its thread, so it runs on a blocking thread: the runtime's workers go on
    /// with other tasks meanwhile.
    pub async fn flush(&self, timeout: Duration) {
        let producer = self.producer.clone();
        match tokio::task::spawn_blocking(move || producer.flush(timeout)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %crate::telemetry::Chain(&e), "producer flush did not finish")
            }
            Err(e) => {
                tracing::warn!(error = %crate::telemetry::Chain(&e), "producer flush did not finish")
            }
        }
    }
}

/// The kind of a topic for metric labels: `edge` for every per-edge topic, else the domain part.
pub fn kind_of(topic: &str) -> &str {
    let mut parts = topic.split('.');
    let _prefix = parts.next();
    match parts.next() {
        Some("edge") => "edge",
        Some(k) => k,
        None => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn a_flush_lets_other_tasks_run_while_it_waits() {
        // Nothing listens on port 1: the record stays queued, so the flush waits its whole
        // timeout (the record itself would time out only after `message_timeout_ms`, 15 s).
        let s = KafkaSettings {
            brokers: "127.0.0.1:1".into(),
            ..Default::default()
        };
        let p = Publisher::new(&s, Metrics::default()).unwrap();
        let mut send = Box::pin(p.send("t.x.v1", "k", b"v"));
        assert!(
            futures::poll!(&mut send).is_pending(),
            "queued, not delivered"
        );
        // The test runs on a current-thread runtime: a task spawned now runs only when this one
        // yields. Blocking inside the flush, it would run only after the flush.
        let flushing = Arc::new(AtomicBool::new(true));
        let during = tokio::spawn({
            let flushing = flushing.clone();
            async move { flushing.load(Ordering::SeqCst) }
        });
        let timeout = Duration::from_millis(300);
        let t0 = std::time::Instant::now();
        p.flush(timeout).await;
        flushing.store(false, Ordering::SeqCst);
        assert!(t0.elapsed() >= timeout, "the flush waited for the record");
        assert!(during.await.unwrap(), "another task ran during the flush");
    }

    /// Readiness against a cluster that does not answer: an error from librdkafka, within the
    /// check's timeout.
    #[tokio::test]
    async fn an_unreachable_cluster_is_not_reachable() {
        let s = KafkaSettings {
            brokers: "127.0.0.1:1".into(),
            ..Default::default()
        };
        let p = Publisher::new(&s, Metrics::default()).unwrap();
        let t0 = std::time::Instant::now();
        let e = p.reachable().await.expect_err("nothing listens on port 1");
        assert!(
            t0.elapsed() < crate::health::CHECK_TIMEOUT + Duration::from_secs(2),
            "{:?}",
            t0.elapsed()
        );
        assert!(e.contains("Meta data fetch error"), "{e}");
    }

    /// A queued record that fails later is told to its `on_failure` (once, with its topic) and
    /// counted; one refused at once (larger than `message.max.bytes`) is the `Err` of `enqueue`
    /// and its `on_failure` never runs.
    #[tokio::test]
    async fn an_enqueued_record_that_fails_is_told_and_one_refused_at_once_is_returned() {
        let s = KafkaSettings {
            brokers: "127.0.0.1:1".into(),
            message_timeout_ms: 200,
            ..Default::default()
        };
        let metrics = Metrics::default();
        let p = Publisher::new(&s, metrics.clone()).unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        p.enqueue("t.x.v1", "k", b"v", move |e| {
            let _ = tx.send(e);
        })
        .expect("queued");
        let failed = tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .expect("told in time")
            .expect("told");
        assert_eq!(failed.topic, "t.x.v1");
        assert_eq!(metrics.publish_failures.get(), 1);

        let told = Arc::new(AtomicBool::new(false));
        let refused = p
            .enqueue("t.x.v1", "k", &vec![0u8; 2 << 20], {
                let told = told.clone();
                move |_| told.store(true, Ordering::SeqCst)
            })
            .expect_err("too large");
        assert_eq!(refused.topic, "t.x.v1");
        assert_eq!(metrics.publish_failures.get(), 2);
        p.flush(Duration::from_millis(300)).await;
        assert!(!told.load(Ordering::SeqCst), "a refused record is not told");
    }

    /// What a producer holds is bounded in bytes: records that would take it past
    /// [`QUEUE_MAX_KBYTES`] are refused at once (the edge's frames in flight rely on it).
    #[tokio::test]
    async fn a_producer_holds_at_most_its_byte_bound() {
        let s = KafkaSettings {
            brokers: "127.0.0.1:1".into(),
            ..Default::default()
        };
        let p = Publisher::new(&s, Metrics::default()).unwrap();
        let record = vec![0u8; 900_000];
        let fits = (QUEUE_MAX_KBYTES * 1024) as usize / record.len();
        for _ in 0..fits {
            p.enqueue("t.x.v1", "k", &record, |_| {})
                .expect("within the bound");
        }
        let refused = p
            .enqueue("t.x.v1", "k", &record, |_| {})
            .expect_err("past the bound");
        assert_eq!(
            refused.source,
            KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)
        );
    }

    #[tokio::test]
    async fn a_loop_consumer_knows_its_group_for_the_lag_labels() {
        let s = KafkaSettings {
            brokers: "127.0.0.1:1".into(),
            ..Default::default()
        };
        use rdkafka::consumer::Consumer;
        let c = loop_consumer(&s, "sb.worker-dms", false).unwrap();
        assert_eq!(c.context().group, "sb.worker-dms");
    }

    /// A consumer that is behind holds a few batches fetched, not librdkafka's 100,000 records,
    /// and looks again soon once it has taken them (e2e `fetching.rs` checks the slices per
    /// partition against the broker).
    #[test]
    fn a_consumer_prefetches_a_bounded_amount_in_slices_per_partition() {
        let c = consumer_config(&KafkaSettings::default(), "g", false);
        let set = |key| c.get(key).map(str::to_string);
        assert_eq!(set("queued.min.messages"), Some("2000".into()));
        assert_eq!(set("fetch.queue.backoff.ms"), Some("10".into()));
        assert_eq!(set("max.partition.fetch.bytes"), Some("65536".into()));
    }

    #[test]
    fn topic_kinds() {
        assert_eq!(kind_of("sb.edge.edge-0.v1"), "edge");
        assert_eq!(kind_of("sb.dms.v1"), "dms");
        assert_eq!(kind_of("x"), "unknown");
    }
}
