//! How a consumer that is behind fetches (`runtime::kafka` consumer settings), against the real
//! Kafka of the shared stack: it takes every partition's records in turn, in slices, rather than
//! one partition's megabyte before the next partition's first record; and it holds a bounded
//! number of records fetched ahead of its handler, not everything there is.

use futures::future::BoxFuture;
use rdkafka::consumer::{Consumer, DefaultConsumerContext, StreamConsumer};
use rdkafka::producer::FutureRecord;
use rdkafka::Message;
use runtime::consume::{BatchHandler, Failure, Inbound, LoopSettings};
use runtime::kafka::{Publisher, FETCH_PARTITION_BYTES, PREFETCH_RECORDS};
use runtime::metrics::Metrics;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const PARTITIONS: i32 = 4;
/// Records of 1 KiB per partition: more than a megabyte each, librdkafka's default fetch size.
const PER_PARTITION: usize = 1_200;
const RECORD_BYTES: usize = 1024;
/// Records published per partition before waiting for their acknowledgement: the producer's
/// record batches stay small (a broker returns a partition's first batch whole, however large),
/// well under a slice in the first test, just under one in the second.
const WAVE: usize = 20;
const LARGE_WAVE: usize = 60;

/// The first records read: well under a megabyte of them (with 1 MiB per partition and fetch, all
/// one partition's), and more than a slice of each partition even if the first fetches find only
/// some partitions ready.
const WINDOW: usize = 10 * FETCH_PARTITION_BYTES / RECORD_BYTES;
const _: () = assert!(WINDOW * RECORD_BYTES < 1 << 20);

/// Bytes that do not compress (the producer compresses with lz4, the fetch bound counts what is
/// stored), from a xorshift generator.
fn noise(state: &mut u64) -> Vec<u8> {
    (0..RECORD_BYTES)
        .map(|_| {
            *state ^= *state << 13;
            *state ^= *state >> 7;
            *state ^= *state << 17;
            (*state >> 24) as u8
        })
        .collect()
}

/// Settings for this test's own topics, and a topic of `partitions` holding `per_partition`
/// records of [`RECORD_BYTES`] each, published `wave` per partition at a time.
async fn backlog(
    partitions: i32,
    per_partition: usize,
    wave_len: usize,
) -> (runtime::KafkaSettings, String) {
    let stack = e2e::stack();
    let kafka = runtime::KafkaSettings {
        brokers: stack.kafka.brokers.clone(),
        topic_prefix: e2e::unique("fetch"),
        replication_factor: stack.kafka.replication_factor,
        partitions,
        message_timeout_ms: 10_000,
        ..Default::default()
    };
    let topic = format!("{}.backlog.v1", kafka.topic_prefix);
    runtime::kafka::ensure_topics(
        &kafka,
        std::slice::from_ref(&topic),
        partitions,
        Some(3_600_000),
    )
    .await
    .expect("topic");
    let producer = runtime::kafka::producer(&kafka).expect("producer");
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    for wave in 0..per_partition / wave_len {
        let mut acks = Vec::new();
        for p in 0..partitions {
            for i in 0..wave_len {
                let key = format!("{p}-{wave}-{i}");
                let payload = noise(&mut state);
                let record = FutureRecord::to(&topic)
                    .partition(p)
                    .key(&key)
                    .payload(&payload);
                acks.push(
                    producer
                        .send_result(record)
                        .map_err(|(e, _)| e)
                        .expect("queued"),
                );
            }
        }
        for ack in acks {
            ack.await.expect("delivered").expect("acknowledged");
        }
    }
    (kafka, topic)
}

/// A backlog of 1.2 MiB on each of four partitions, read by a consumer with the platform's
/// settings from the start: the first records it hands out come from every partition (a slice of
/// at most `FETCH_PARTITION_BYTES` of each per fetch). With librdkafka's default of 1 MiB per
/// partition, the first thousand records all come from one partition, and on a DM topic the
/// conversations of the other partitions wait while a worker that is behind works through it.
#[tokio::test]
async fn a_consumer_that_is_behind_takes_every_partition_in_turn() {
    runtime::telemetry::init_for_tests();
    let (kafka, topic) = backlog(PARTITIONS, PER_PARTITION, WAVE).await;
    let group = format!("{}.group", kafka.topic_prefix);
    let consumer: StreamConsumer =
        runtime::kafka::consumer::<DefaultConsumerContext>(&kafka, &group, false)
            .expect("consumer");
    consumer.subscribe(&[&topic]).expect("subscribed");
    let mut first = Vec::with_capacity(WINDOW);
    while first.len() < WINDOW {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("a record in time")
            .expect("a record");
        first.push(m.partition());
    }
    let seen: BTreeSet<i32> = first.iter().copied().collect();
    assert_eq!(
        seen,
        (0..PARTITIONS).collect(),
        "the first {WINDOW} records came from partitions {seen:?}"
    );
}

/// A handler that takes a millisecond per record: slower than the consumer can fetch.
struct Slow;

impl BatchHandler for Slow {
    fn handle_batch<'a>(
        &'a self,
        records: &'a [Inbound],
    ) -> BoxFuture<'a, Vec<Result<(), Failure>>> {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(records.len() as u64)).await;
            records.iter().map(|_| Ok(())).collect()
        })
    }
}

/// A loop consumer with a slow handler in front of a backlog of 20,000 records: librdkafka
/// fetches until about `PREFETCH_RECORDS` wait (plus what one fetch brought), and its statistics
/// (`sb_consumer_prefetched`) say so. With librdkafka's default of 100,000 it would hold nearly the
/// whole backlog. (A statistics report waits in the consumer's queue behind the records fetched
/// before it: the handler must go on taking them for the report to arrive.)
#[tokio::test]
async fn a_consumer_that_is_behind_holds_a_bounded_prefetch() {
    runtime::telemetry::init_for_tests();
    let (kafka, topic) = backlog(1, 20_000, LARGE_WAVE).await;
    let group = format!("{}.group", kafka.topic_prefix);
    let consumer = runtime::kafka::loop_consumer(&kafka, &group, false).expect("consumer");
    consumer.subscribe(&[&topic]).expect("subscribed");
    let metrics = Metrics::default();
    let settings = LoopSettings {
        lanes: 1,
        lane_capacity: 64,
        dead_letter_topic: format!("{}.dead-letter.v1", kafka.topic_prefix),
        drain_timeout: Duration::from_secs(1),
        batch: Default::default(),
    };
    let stop = CancellationToken::new();
    let task = tokio::spawn(runtime::consume::run_batched(
        consumer,
        Arc::new(Slow),
        Publisher::new(&kafka, metrics.clone()).expect("publisher"),
        settings,
        metrics.clone(),
        stop.clone(),
    ));
    let labels = vec![("group", group.clone())];
    let held = || metrics.consumer_prefetched.get_or_create(&labels).get();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while held() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no statistics report of a partition with records fetched"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let slice = (FETCH_PARTITION_BYTES / RECORD_BYTES) as i64;
    let bound = PREFETCH_RECORDS as i64;
    assert!(
        (bound / 2..=bound + 2 * slice).contains(&held()),
        "holds {} records fetched",
        held()
    );
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the loop stops")
        .expect("loop task");
}
