//! How a consumer that is behind fetches (`runtime::kafka` consumer settings), against the real
//! Kafka of the shared stack: it takes every partition's records in turn, in slices, rather than
//! one partition's megabyte before the next partition's first record.

use rdkafka::consumer::{Consumer, DefaultConsumerContext, StreamConsumer};
use rdkafka::producer::FutureRecord;
use rdkafka::Message;
use runtime::kafka::FETCH_PARTITION_BYTES;
use std::collections::BTreeSet;
use std::time::Duration;

const PARTITIONS: i32 = 4;
/// Records of 1 KiB per partition: more than a megabyte each, librdkafka's default fetch size.
const PER_PARTITION: usize = 1_200;
const RECORD_BYTES: usize = 1024;
/// Records published per partition before waiting for their acknowledgement: the producer's
/// record batches stay small (a broker returns a partition's first batch whole, however large).
const WAVE: usize = 20;

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

/// A backlog of 1.2 MiB on each of four partitions, read by a consumer with the platform's
/// settings from the start: the first records it hands out come from every partition (a slice of
/// at most `FETCH_PARTITION_BYTES` of each per fetch). With librdkafka's default of 1 MiB per
/// partition, the first thousand records all come from one partition, and on a DM topic the
/// conversations of the other partitions wait while a worker that is behind works through it.
#[tokio::test]
async fn a_consumer_that_is_behind_takes_every_partition_in_turn() {
    runtime::telemetry::init_for_tests();
    let stack = e2e::stack();
    let kafka = runtime::KafkaSettings {
        brokers: stack.kafka.brokers.clone(),
        topic_prefix: e2e::unique("fetch"),
        replication_factor: stack.kafka.replication_factor,
        partitions: PARTITIONS,
        message_timeout_ms: 10_000,
        ..Default::default()
    };
    let topic = format!("{}.backlog.v1", kafka.topic_prefix);
    runtime::kafka::ensure_topics(
        &kafka,
        std::slice::from_ref(&topic),
        PARTITIONS,
        Some(3_600_000),
    )
    .await
    .expect("topic");
    let producer = runtime::kafka::producer(&kafka).expect("producer");
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    for wave in 0..PER_PARTITION / WAVE {
        let mut acks = Vec::new();
        for p in 0..PARTITIONS {
            for i in 0..WAVE {
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
