//! Static consumer group membership (`kafka.group_instance_id`) against the real Kafka of the
//! shared stack: a process that comes back under its name gets its partitions back without a
//! rebalance, so its sibling never takes them over meanwhile (which is what kept a killed
//! worker's partitions waiting for the session timeout, 10 s).

use rdkafka::consumer::{Consumer, DefaultConsumerContext, StreamConsumer};
use runtime::KafkaSettings;
use std::time::Duration;
use tokio::time::Instant;

const PARTITIONS: i32 = 6;

fn kafka(prefix: &str, instance: Option<&str>) -> KafkaSettings {
    let stack = e2e::stack();
    KafkaSettings {
        brokers: stack.kafka.brokers.clone(),
        topic_prefix: prefix.to_string(),
        replication_factor: stack.kafka.replication_factor,
        group_instance_id: instance.map(str::to_string),
        ..Default::default()
    }
}

fn member(s: &KafkaSettings, group: &str, topic: &str) -> StreamConsumer {
    let c: StreamConsumer<DefaultConsumerContext> =
        runtime::kafka::consumer(s, group, false).expect("consumer");
    c.subscribe(&[topic]).expect("subscribed");
    c
}

fn assigned(c: &StreamConsumer) -> usize {
    c.assignment().map(|a| a.count()).unwrap_or(0)
}

/// Poll every consumer (a group's protocol runs only while its members poll) until `done` holds
/// for their assignment counts, 20 s at most; the most partitions each one held meanwhile.
async fn poll_until(members: &[&StreamConsumer], done: impl Fn(&[usize]) -> bool) -> Vec<usize> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut most = vec![0; members.len()];
    loop {
        for c in members {
            let _ = tokio::time::timeout(Duration::from_millis(20), c.recv()).await;
        }
        let now: Vec<usize> = members.iter().map(|c| assigned(c)).collect();
        for (m, n) in most.iter_mut().zip(&now) {
            *m = (*m).max(*n);
        }
        if done(&now) {
            return most;
        }
        assert!(Instant::now() < deadline, "assignments {now:?}");
    }
}

#[tokio::test]
async fn a_member_back_under_its_name_takes_its_partitions_again_without_a_rebalance() {
    let prefix = e2e::unique("static");
    let topic = format!("{prefix}.input.v1");
    let group = format!("{prefix}.group");
    runtime::kafka::ensure_topics(
        &kafka(&prefix, None),
        std::slice::from_ref(&topic),
        PARTITIONS,
        Some(3_600_000),
    )
    .await
    .expect("topic");
    let (a, b) = (kafka(&prefix, Some("a")), kafka(&prefix, Some("b")));

    let first = member(&a, &group, &topic);
    poll_until(&[&first], |n| n[0] == PARTITIONS as usize).await;
    let sibling = member(&b, &group, &topic);
    poll_until(&[&first, &sibling], |n| {
        n[0] > 0 && n[1] > 0 && n[0] + n[1] == 6
    })
    .await;
    let kept = assigned(&sibling);

    // "a" goes away for 3 s, as a process does until it is restarted (a static member does not
    // leave its group when it closes), then comes back
    drop(first);
    let t0 = Instant::now();
    let away = Instant::now() + Duration::from_secs(3);
    let mut most_away = kept;
    while Instant::now() < away {
        let _ = tokio::time::timeout(Duration::from_millis(20), sibling.recv()).await;
        most_away = most_away.max(assigned(&sibling));
    }
    assert_eq!(
        most_away, kept,
        "nothing moves to the sibling while a named member is away"
    );
    let back = member(&a, &group, &topic);
    let most = poll_until(&[&back, &sibling], |n| n[0] + n[1] == 6 && n[0] > 0).await;
    assert_eq!(
        most[1], kept,
        "the sibling never took the absent member's partitions"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(9),
        "back before the session timeout (10 s): {:?}",
        t0.elapsed()
    );
}
