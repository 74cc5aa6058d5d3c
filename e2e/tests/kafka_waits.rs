//! Waits on Kafka that librdkafka makes blocking (the edge's watermark query at start-up, the
//! producer's flush at shutdown) against the real broker: they leave the async runtime free for
//! other tasks, and keep doing what they did. And a topic the broker refuses to create.

use e2e::{stack, unique};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::Message;
use runtime::kafka::{ensure_topics, Publisher, REQUEST_RETENTION_MS};
use runtime::metrics::Metrics;
use std::time::Duration;

fn kafka() -> runtime::KafkaSettings {
    let stack = stack();
    runtime::KafkaSettings {
        brokers: stack.kafka.brokers.clone(),
        topic_prefix: unique("t"),
        replication_factor: stack.kafka.replication_factor,
        partitions: 1,
        ..Default::default()
    }
}

/// The edge subscribes to its own topic while another task of the same (current-thread) runtime
/// is still creating it: the subscription waits for the topic without holding the thread, so
/// the creation goes ahead and the edge reads what is published to its topic afterwards.
#[tokio::test]
async fn the_edge_waits_for_its_topic_without_holding_the_runtime() {
    runtime::telemetry::init_for_tests();
    let kafka = kafka();
    let topics = kafka.topics();
    let own = topics.edge("e1");
    let (consumer, created) =
        tokio::join!(edge_ws::inbox::subscribe(&kafka, &topics, "e1"), async {
            ensure_topics(
                &kafka,
                std::slice::from_ref(&own),
                1,
                Some(REQUEST_RETENTION_MS),
            )
            .await
        });
    created.expect("topic created");
    let consumer: StreamConsumer = consumer.expect("subscribed once the topic exists");
    let publisher = Publisher::new(&kafka, Metrics::default()).unwrap();
    publisher.send(&own, "k", b"hello").await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(10), consumer.recv())
        .await
        .expect("a record in time")
        .unwrap();
    assert_eq!(m.payload(), Some(&b"hello"[..]));
}

/// An edge whose topic never appears gives up after 30 s with Kafka's error, so its process
/// exits with the cause rather than serving without its answers.
#[tokio::test]
async fn the_edge_gives_up_on_a_topic_that_never_appears() {
    runtime::telemetry::init_for_tests();
    let kafka = kafka();
    let topics = kafka.topics();
    let t0 = tokio::time::Instant::now();
    let subscribed = edge_ws::inbox::subscribe(&kafka, &topics, "never-created").await;
    let waited = t0.elapsed();
    let Err(e) = subscribed else {
        panic!("subscribed to a topic that does not exist");
    };
    assert!(matches!(e, runtime::Error::Kafka(_)), "{e:?}");
    assert!(
        waited >= Duration::from_secs(30) && waited < Duration::from_secs(45),
        "gave up after {waited:?}"
    );
}

/// What was queued but not yet delivered is on the broker once the flush returns.
#[tokio::test]
async fn a_flush_delivers_what_is_queued() {
    runtime::telemetry::init_for_tests();
    let kafka = kafka();
    let topic = format!("{}.flush.v1", kafka.topic_prefix);
    ensure_topics(
        &kafka,
        std::slice::from_ref(&topic),
        1,
        Some(REQUEST_RETENTION_MS),
    )
    .await
    .unwrap();
    let publisher = Publisher::new(&kafka, Metrics::default()).unwrap();
    let payloads: Vec<String> = (0..20).map(|i| i.to_string()).collect();
    let mut sends = Vec::new();
    for p in &payloads {
        let mut send = Box::pin(publisher.send(&topic, "k", p.as_bytes()));
        assert!(
            futures::poll!(&mut send).is_pending(),
            "queued, not delivered"
        );
        sends.push(send);
    }
    publisher.flush(Duration::from_secs(10)).await;
    let reader: StreamConsumer =
        runtime::kafka::consumer(&kafka, &format!("{}.reader", kafka.topic_prefix), false).unwrap();
    let t = topic.clone();
    let (_, high) = tokio::task::spawn_blocking(move || {
        reader.fetch_watermarks(&t, 0, Duration::from_secs(10))
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(high, 20, "every queued record is on the broker");
    for send in sends {
        send.await.expect("delivered");
    }
}

/// A topic the broker refuses (more replicas than it has brokers) is a configuration error
/// naming the topic and the broker's reason, and leaves no topic behind.
#[tokio::test]
async fn a_topic_the_broker_refuses_is_a_configuration_error() {
    runtime::telemetry::init_for_tests();
    let mut kafka = kafka();
    kafka.replication_factor = 100;
    let topic = format!("{}.refused.v1", kafka.topic_prefix);
    let e = ensure_topics(&kafka, std::slice::from_ref(&topic), 1, None)
        .await
        .expect_err("100 replicas");
    match &e {
        runtime::Error::Config(m) => {
            assert!(m.contains(&format!("creating topic {topic}")), "{m}");
            assert!(m.contains("replication factor"), "{m}");
        }
        other => panic!("not a configuration error: {other:?}"),
    }
    let reader: StreamConsumer =
        runtime::kafka::consumer(&kafka, &format!("{}.reader", kafka.topic_prefix), false).unwrap();
    let metadata =
        tokio::task::spawn_blocking(move || reader.fetch_metadata(None, Duration::from_secs(10)))
            .await
            .unwrap()
            .unwrap();
    assert!(!metadata.brokers().is_empty());
    assert!(
        metadata.topics().iter().all(|t| t.name() != topic),
        "{topic} was not created"
    );
}
