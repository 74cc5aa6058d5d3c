//! The batched consumer loop (`runtime::consume::run_batched`) against the real Kafka of the
//! shared stack, each test on its own topics and consumer groups: a poison record in a batch is
//! dead-lettered alone, a transient failure retries only what failed and commits nothing before
//! the batch is final, a rebalance in the middle of a slow batch neither loses nor repeats a
//! record, and a record its handler holds ages in `sb_consumer_oldest_in_flight_seconds`.

use futures::future::BoxFuture;
use rdkafka::consumer::{Consumer, DefaultConsumerContext, StreamConsumer};
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};
use runtime::consume::{BatchHandler, BatchSettings, Failure, Inbound, LoopConsumer, LoopSettings};
use runtime::kafka::Publisher;
use runtime::metrics::Metrics;
use runtime::KafkaSettings;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Settings for this test's own topics (names start with a unique prefix).
fn kafka() -> KafkaSettings {
    let stack = e2e::stack();
    KafkaSettings {
        brokers: stack.kafka.brokers.clone(),
        topic_prefix: e2e::unique("batch"),
        replication_factor: stack.kafka.replication_factor,
        partitions: 1,
        message_timeout_ms: 5_000,
        ..Default::default()
    }
}

struct Topics {
    kafka: KafkaSettings,
    input: String,
    dead_letter: String,
    group: String,
}

async fn topics(partitions: i32) -> Topics {
    let kafka = kafka();
    let p = &kafka.topic_prefix;
    let t = Topics {
        input: format!("{p}.input.v1"),
        dead_letter: format!("{p}.dead-letter.v1"),
        group: format!("{p}.group"),
        kafka: kafka.clone(),
    };
    runtime::kafka::ensure_topics(
        &kafka,
        std::slice::from_ref(&t.input),
        partitions,
        Some(3_600_000),
    )
    .await
    .expect("input topic");
    runtime::kafka::ensure_topics(
        &kafka,
        std::slice::from_ref(&t.dead_letter),
        1,
        Some(3_600_000),
    )
    .await
    .expect("dead-letter topic");
    t
}

/// Publish `(partition, key, payload)` records, each acknowledged before the next.
async fn produce(t: &Topics, records: &[(i32, String, String)]) {
    let producer = runtime::kafka::producer(&t.kafka).expect("producer");
    for (partition, key, payload) in records {
        producer
            .send(
                FutureRecord::to(&t.input)
                    .partition(*partition)
                    .key(key)
                    .payload(payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("published");
    }
}

/// What the test handlers did, shared by every consumer of a test.
#[derive(Default)]
struct Log {
    /// Every record a handler was given, by consumer: (consumer, payload).
    attempts: Vec<(&'static str, String)>,
    /// Every record a handler answered `Ok` for.
    handled: Vec<(&'static str, String)>,
    /// The idempotent effect: a payload is in the set once, however often it is handled.
    effects: HashSet<String>,
    /// Handlings that found their effect already there (what at-least-once redelivery costs).
    repeated: Vec<String>,
    /// The payloads of each batch, by consumer.
    batches: Vec<(&'static str, Vec<String>)>,
}

impl Log {
    fn count(list: &[(&'static str, String)], payload: &str) -> usize {
        list.iter().filter(|(_, p)| p == payload).count()
    }
}

/// A batch handler with an idempotent effect. Payloads starting with `poison` are poison;
/// payloads in `failing` fail transiently (and, per the contract, so do later records of their
/// key in the same call); with `slow_first`, the first batch takes that long.
struct Probe {
    name: &'static str,
    log: Arc<Mutex<Log>>,
    failing: Mutex<HashSet<String>>,
    slow_first: Mutex<Option<Duration>>,
    started: Arc<Notify>,
}

impl Probe {
    fn new(name: &'static str, log: &Arc<Mutex<Log>>) -> Self {
        Probe {
            name,
            log: log.clone(),
            failing: Mutex::default(),
            slow_first: Mutex::default(),
            started: Arc::new(Notify::new()),
        }
    }
}

impl BatchHandler for Probe {
    fn handle_batch<'a>(
        &'a self,
        records: &'a [Inbound],
    ) -> BoxFuture<'a, Vec<Result<(), Failure>>> {
        Box::pin(async move {
            let payloads: Vec<String> = records
                .iter()
                .map(|r| String::from_utf8(r.payload.clone()).unwrap())
                .collect();
            self.log
                .lock()
                .unwrap()
                .batches
                .push((self.name, payloads.clone()));
            self.started.notify_one();
            let slow = self.slow_first.lock().unwrap().take();
            if let Some(d) = slow {
                tokio::time::sleep(d).await;
            }
            let failing = self.failing.lock().unwrap().clone();
            let mut failed_keys = HashSet::new();
            let mut out = Vec::new();
            let mut log = self.log.lock().unwrap();
            for (r, p) in records.iter().zip(payloads) {
                log.attempts.push((self.name, p.clone()));
                if p.starts_with("poison") {
                    out.push(Err(Failure::Poison(format!("{p} cannot be read"))));
                } else if failing.contains(&p) || failed_keys.contains(&r.key) {
                    failed_keys.insert(r.key.clone());
                    out.push(Err(Failure::Transient("store unavailable".into())));
                } else {
                    if !log.effects.insert(p.clone()) {
                        log.repeated.push(p.clone());
                    }
                    log.handled.push((self.name, p));
                    out.push(Ok(()));
                }
            }
            out
        })
    }
}

/// One running consumer loop.
struct Running {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    metrics: Metrics,
}

impl Running {
    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("the loop stops within its drain time")
            .expect("loop task");
    }
}

fn start(t: &Topics, handler: Arc<Probe>, lanes: usize, batch: BatchSettings) -> Running {
    start_with(
        t,
        handler,
        lanes,
        batch,
        &[&t.input],
        Duration::from_secs(10),
    )
}

/// [`start`], subscribed to `topics`, draining at most `drain_timeout` when stopped.
fn start_with(
    t: &Topics,
    handler: Arc<Probe>,
    lanes: usize,
    batch: BatchSettings,
    topics: &[&str],
    drain_timeout: Duration,
) -> Running {
    let consumer: LoopConsumer =
        runtime::kafka::consumer(&t.kafka, &t.group, false).expect("consumer");
    consumer.subscribe(topics).expect("subscribe");
    let metrics = Metrics::default();
    let publisher = Publisher::new(&t.kafka, metrics.clone()).expect("publisher");
    let settings = LoopSettings {
        lanes,
        lane_capacity: 64,
        dead_letter_topic: t.dead_letter.clone(),
        drain_timeout,
        batch,
    };
    let stop = CancellationToken::new();
    let task = tokio::spawn(runtime::consume::run_batched(
        consumer,
        handler,
        publisher,
        settings,
        metrics.clone(),
        stop.clone(),
    ));
    Running {
        stop,
        task,
        metrics,
    }
}

/// Wait (at most 60 s) until `done` holds for the log.
async fn until(log: &Arc<Mutex<Log>>, what: &str, done: impl Fn(&Log) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if done(&log.lock().unwrap()) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}; handled {:?}",
            log.lock().unwrap().handled
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The group's committed offset of each partition (`None`: nothing committed).
fn committed(t: &Topics, partitions: i32) -> Vec<Option<i64>> {
    let reader: StreamConsumer<DefaultConsumerContext> =
        runtime::kafka::consumer(&t.kafka, &t.group, false).expect("offset reader");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(&t.input, p);
    }
    let got = reader
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    (0..partitions)
        .map(
            |p| match got.find_partition(&t.input, p).unwrap().offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            },
        )
        .collect()
}

/// The records of the dead-letter topic (read from the start by a fresh group).
async fn dead_letters(t: &Topics, expected: usize) -> Vec<serde_json::Value> {
    use rdkafka::Message;
    let reader: StreamConsumer<DefaultConsumerContext> =
        runtime::kafka::consumer(&t.kafka, &e2e::unique("dlq-reader-"), false).expect("reader");
    reader.subscribe(&[&t.dead_letter]).unwrap();
    let mut found = Vec::new();
    while found.len() < expected {
        let m = tokio::time::timeout(Duration::from_secs(30), reader.recv())
            .await
            .expect("dead letter within 30 s")
            .expect("dead-letter read");
        found.push(serde_json::from_slice(m.payload().unwrap_or_default()).unwrap());
    }
    found
}

fn batch(max_records: usize, max_wait_ms: u64) -> BatchSettings {
    BatchSettings {
        max_records,
        max_bytes: 1 << 20,
        max_wait_ms,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_record_in_a_batch_is_dead_lettered_alone() {
    let t = topics(1).await;
    let payloads = ["r0", "r1", "poison-2", "r3", "r4", "r5"];
    let records: Vec<_> = payloads
        .iter()
        .map(|p| (0, "k".to_string(), p.to_string()))
        .collect();
    produce(&t, &records).await;

    let log = Arc::new(Mutex::new(Log::default()));
    let running = start(&t, Arc::new(Probe::new("a", &log)), 1, batch(64, 200));
    until(&log, "the five good records are handled", |l| {
        l.handled.len() >= 5
    })
    .await;
    let letters = dead_letters(&t, 1).await;
    running.stop().await;

    let l = log.lock().unwrap();
    assert!(
        l.batches
            .iter()
            .any(|(_, b)| b.len() > 1 && b.contains(&"poison-2".to_string())),
        "the poison record arrived in a batch with others: {:?}",
        l.batches
    );
    for p in payloads {
        assert_eq!(
            Log::count(&l.attempts, p),
            1,
            "{p} given to the handler once"
        );
        let handled = if p.starts_with("poison") { 0 } else { 1 };
        assert_eq!(Log::count(&l.handled, p), handled, "{p}");
    }
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0]["payload"], "poison-2");
    assert_eq!(letters[0]["reason"], "poison-2 cannot be read");
    assert_eq!(letters[0]["topic"], t.input.as_str());
    assert_eq!(letters[0]["offset"], 2);
    let (low, high) = {
        let reader: StreamConsumer<DefaultConsumerContext> =
            runtime::kafka::consumer(&t.kafka, &e2e::unique("wm-"), false).unwrap();
        reader
            .fetch_watermarks(&t.dead_letter, 0, Duration::from_secs(10))
            .unwrap()
    };
    assert_eq!(high - low, 1, "only the poison record is dead-lettered");
    assert_eq!(committed(&t, 1), vec![Some(6)], "every offset finished");
}

/// A handler that hangs shows in `sb_consumer_oldest_in_flight_seconds` (what
/// SwitchboardConsumerStuck watches): it grows while the record is held, and is 0 again once
/// the record is finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_held_by_its_handler_ages_in_the_oldest_in_flight_gauge() {
    use runtime::metrics::sample;
    let t = topics(1).await;
    let log = Arc::new(Mutex::new(Log::default()));
    let probe = Arc::new(Probe::new("a", &log));
    *probe.slow_first.lock().unwrap() = Some(Duration::from_secs(6));
    let running = start(&t, probe.clone(), 1, batch(64, 0));
    let oldest = |m: &Metrics| sample(&m.render(), "sb_consumer_oldest_in_flight_seconds");
    assert_eq!(oldest(&running.metrics), Some(0.0), "nothing in flight yet");
    produce(&t, &[(0, "k".to_string(), "held".to_string())]).await;
    probe.started.notified().await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let held = oldest(&running.metrics).expect("the gauge");
    assert!(
        (2.5..6.0).contains(&held),
        "held for {held} s while the handler sleeps"
    );
    until(&log, "the held record is handled", |l| l.handled.len() == 1).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while oldest(&running.metrics) != Some(0.0) {
        assert!(tokio::time::Instant::now() < deadline, "back to 0");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_failure_retries_what_failed_and_commits_only_after_success() {
    let t = topics(1).await;
    // Two keys in one lane: r3 (key b) fails; r5 and r7 (key b) must wait for it, r4 and r6
    // (key a) need not.
    let records: Vec<_> = (0..8)
        .map(|i| {
            let key = if i % 2 == 0 { "a" } else { "b" };
            (0, key.to_string(), format!("r{i}"))
        })
        .collect();
    produce(&t, &records).await;
    let log = Arc::new(Mutex::new(Log::default()));

    // 1. A consumer whose store keeps failing for r3.
    let failing = Probe::new("first", &log);
    failing.failing.lock().unwrap().insert("r3".into());
    let running = start(&t, Arc::new(failing), 1, batch(64, 200));
    until(&log, "r3 was retried twice", |l| {
        Log::count(&l.attempts, "r3") >= 3
    })
    .await;
    // Longer than the auto-commit interval (1 s): whatever was stored would be committed.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let first_offset_of_r3_batch = {
        let l = log.lock().unwrap();
        let batch = &l
            .batches
            .iter()
            .find(|(_, b)| b.contains(&"r3".to_string()))
            .unwrap()
            .1;
        batch[0][1..].parse::<i64>().unwrap()
    };
    let before = committed(&t, 1)[0];
    assert!(
        before.is_none_or(|o| o <= first_offset_of_r3_batch),
        "nothing of the unfinished batch is committed: {before:?}, batch starts at {first_offset_of_r3_batch}"
    );
    {
        let l = log.lock().unwrap();
        for p in ["r0", "r1", "r2", "r4", "r6"] {
            assert_eq!(
                Log::count(&l.attempts, p),
                1,
                "{p} succeeded and is not retried: {:?}",
                l.batches
            );
        }
        for p in ["r3", "r5", "r7"] {
            assert_eq!(Log::count(&l.handled, p), 0, "{p} waits for r3");
        }
        assert!(l.repeated.is_empty());
    }
    // Shutdown in the middle of the retries: the batch stays unfinished.
    running.stop().await;
    assert_eq!(
        committed(&t, 1)[0],
        before,
        "the interrupted batch committed nothing"
    );

    // 2. The store is back: the next consumer of the group gets what was not committed. Records
    // the first one already handled come again (at-least-once); the effect stays single.
    let running = start(&t, Arc::new(Probe::new("second", &log)), 1, batch(64, 200));
    until(&log, "every record's effect is there", |l| {
        l.effects.len() == 8
    })
    .await;
    running.stop().await;
    {
        let l = log.lock().unwrap();
        let mut in_order: Vec<&str> = l
            .handled
            .iter()
            .filter(|(_, p)| ["r3", "r5", "r7"].contains(&p.as_str()))
            .map(|(_, p)| p.as_str())
            .collect();
        in_order.dedup();
        assert_eq!(in_order, ["r3", "r5", "r7"], "key b in order");
        for p in &l.repeated {
            let offset: i64 = p[1..].parse().unwrap();
            assert!(
                offset >= before.unwrap_or(0),
                "{p} was handled twice although it was committed"
            );
        }
    }
    assert_eq!(committed(&t, 1), vec![Some(8)]);

    // 3. A third consumer of the group re-reads nothing: it gets only the new record.
    let running = start(&t, Arc::new(Probe::new("third", &log)), 1, batch(64, 0));
    produce(&t, &[(0, "a".into(), "r8".into())]).await;
    until(&log, "r8 is handled", |l| l.effects.contains("r8")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    running.stop().await;
    let l = log.lock().unwrap();
    let third: Vec<&str> = l
        .attempts
        .iter()
        .filter(|(c, _)| *c == "third")
        .map(|(_, p)| p.as_str())
        .collect();
    assert_eq!(third, ["r8"]);
    assert_eq!(committed(&t, 1), vec![Some(9)]);
}

/// At-least-once alone would allow the new owner of a partition to handle again the records the
/// old owner finished after the partition was taken away (their offsets can no longer be stored).
/// The loop guarantees more on a clean handover: the revocation waits (up to the drain time) for
/// the records in flight, so every record is handled exactly once — which is what is asserted.
/// (A multi-threaded runtime, as in every binary: the wait blocks the polling task.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebalance_in_the_middle_of_a_batch_loses_and_repeats_nothing() {
    let t = topics(2).await;
    let round = |r: usize| -> Vec<(i32, String, String)> {
        (0..24)
            .map(|i| (i % 2, format!("k{}", i % 6), format!("r{r}-{i}")))
            .collect()
    };
    produce(&t, &round(1)).await;
    let log = Arc::new(Mutex::new(Log::default()));

    // The first consumer owns both partitions; its first batch takes 5 s, and everything else it
    // fetched waits in its lane behind that batch.
    let a = Probe::new("a", &log);
    *a.slow_first.lock().unwrap() = Some(Duration::from_secs(5));
    let started = a.started.clone();
    let running_a = start(&t, Arc::new(a), 1, batch(4, 20));
    tokio::time::timeout(Duration::from_secs(30), started.notified())
        .await
        .expect("the first batch started");
    // A second consumer joins the group meanwhile: one partition moves to it.
    let running_b = start(&t, Arc::new(Probe::new("b", &log)), 1, batch(4, 20));
    until(&log, "the first round is handled", |l| {
        l.effects.len() == 24
    })
    .await;
    // Once the group settled, records on each partition go to its new owner.
    produce(&t, &round(2)).await;
    until(&log, "the second round is handled", |l| {
        l.effects.len() == 48
    })
    .await;
    // Time for a repeat to show up, if the handover had one.
    tokio::time::sleep(Duration::from_secs(3)).await;
    running_b.stop().await;
    running_a.stop().await;

    let l = log.lock().unwrap();
    for r in [1, 2] {
        for (_, _, p) in round(r) {
            assert_eq!(
                Log::count(&l.handled, &p),
                1,
                "{p} handled once: {:?}",
                l.handled
            );
        }
    }
    assert!(l.repeated.is_empty(), "repeated: {:?}", l.repeated);
    assert!(
        l.handled.iter().any(|(c, _)| *c == "b"),
        "the second consumer took a partition over: {:?}",
        l.handled
    );
    assert_eq!(committed(&t, 2), vec![Some(24), Some(24)]);
}

/// A batch its handler still holds when the drain time is up is given up on: the loop stops at
/// its drain timeout and says so, commits nothing of the batch, and the group's next consumer
/// handles the record.
#[tokio::test]
async fn a_batch_held_past_the_drain_time_is_left_to_the_next_consumer() {
    let t = topics(1).await;
    let log = Arc::new(Mutex::new(Log::default()));
    let stuck = Arc::new(Probe::new("stuck", &log));
    *stuck.slow_first.lock().unwrap() = Some(Duration::from_secs(600));
    let started = stuck.started.clone();
    let lines = runtime::telemetry::LogCapture::default();
    let _capture = lines.install("warn");
    let drain = Duration::from_millis(500);
    let a = start_with(&t, stuck, 1, batch(64, 0), &[&t.input], drain);
    produce(&t, &[(0, "k".into(), "held".into())]).await;
    tokio::time::timeout(Duration::from_secs(60), started.notified())
        .await
        .expect("the handler took the record");

    let t0 = std::time::Instant::now();
    a.stop().await;
    let took = t0.elapsed();
    assert!(
        took >= drain && took < Duration::from_secs(20),
        "stopped after {took:?}"
    );
    let warned = lines.with_message("drain timed out; unfinished records will be redelivered");
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert_eq!(warned[0]["in_flight"], 1);
    assert_eq!(committed(&t, 1), [None], "nothing of the batch committed");
    assert!(log.lock().unwrap().handled.is_empty());

    let b = start(&t, Arc::new(Probe::new("next", &log)), 1, batch(64, 0));
    until(&log, "the next consumer handled the held record", |l| {
        !l.handled.is_empty()
    })
    .await;
    b.stop().await;
    assert_eq!(log.lock().unwrap().handled, [("next", "held".to_string())]);
}

/// An error the consumer reports (here: one of its subscribed topics does not exist) is logged
/// and polling goes on: the records of the other topic are handled.
#[tokio::test]
async fn a_consumer_error_is_logged_and_polling_goes_on() {
    let t = topics(1).await;
    let missing = format!("{}.missing.v1", t.kafka.topic_prefix);
    let log = Arc::new(Mutex::new(Log::default()));
    let lines = runtime::telemetry::LogCapture::default();
    let _capture = lines.install("warn");
    let a = start_with(
        &t,
        Arc::new(Probe::new("a", &log)),
        1,
        batch(64, 0),
        &[&t.input, &missing],
        Duration::from_secs(10),
    );
    produce(&t, &[(0, "k".into(), "r0".into())]).await;
    until(&log, "the record of the existing topic is handled", |l| {
        l.handled.len() == 1
    })
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let warned = loop {
        let warned = lines.with_message("consumer error");
        if !warned.is_empty() || tokio::time::Instant::now() > deadline {
            break warned;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    a.stop().await;
    assert!(!warned.is_empty(), "the error was logged");
    let error = warned[0]["error"].as_str().unwrap();
    // (rdkafka's error keeps the broker's code, not the topic's name)
    assert!(error.contains("Unknown topic or partition"), "{error}");
    assert_eq!(log.lock().unwrap().handled, [("a", "r0".to_string())]);
}
