//! Poison records (brief section 4): a record a worker cannot process (garbage, a newer wire
//! version, a request of another domain, on a request topic or on worker-presence's) goes to the
//! dead-letter topic with its reason, and the partition it sat on keeps flowing. Garbage on an
//! edge's own topic is skipped, and the edge goes on reading it.

mod common;

use common::{chat, rpc, Chat};
use e2e::spawn_app;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::FutureRecord;
use rdkafka::Message;
use serde_json::{json, Value};
use std::time::Duration;
use topics::{Auth, Domain, Envelope, Request, WIRE_VERSION};

#[tokio::test]
async fn poison_records_are_dead_lettered_and_the_partition_keeps_flowing() {
    let app = spawn_app().await;
    let Chat {
        ann,
        ann_token,
        bob_token,
        conv,
        ..
    } = chat(&app).await;
    let (s, _) = rpc(
        &app,
        0,
        &ann_token,
        json!({"type": "dm.send", "conversation_id": conv, "client_msg_id": "before", "text": "before"}),
    )
    .await;
    assert_eq!(s, 200);

    let topics = app.kafka.topics();
    let requests = topics.requests(Domain::Dms);
    assert_eq!(requests, format!("{}.dms.v1", app.prefix));
    // The key of the conversation's sends: the poison sits on the very partition the next send
    // of this conversation uses.
    let key = format!("c{conv}");
    let garbage: Vec<u8> = vec![0xde, 0xad, 0xbe, 0xef, 0x00, 0xff, b'{'];
    let env = Envelope {
        v: WIRE_VERSION,
        edge: "edge-0".into(),
        conn: 0,
        req: 4242,
        rid: None,
        auth: Auth::Session {
            session_id: "nope".into(),
            user_id: ann,
        },
        peer: None,
        sent_at_ms: runtime::now_ms(),
        deadline_ms: None,
        request: Request::DmSend {
            conversation_id: conv,
            client_msg_id: "from-the-future".into(),
            text: "written by a newer edge".into(),
            after_client_msg_id: None,
        },
    };
    let mut future: Value = serde_json::from_slice(&env.encode()).unwrap();
    future["v"] = json!(99);
    let future = future.to_string();
    // A well-formed request of another domain (`user.me` belongs on the users topic).
    let stray = Envelope {
        request: Request::Me,
        ..env.clone()
    }
    .encode();
    let presence = topics.requests(Domain::Presence);
    // The topic of the edge the next send goes through: its answer comes after the garbage.
    let edge = topics.edge("edge-1");
    let producer = runtime::kafka::producer(&app.kafka).expect("producer");
    for (topic, payload) in [
        (&requests, garbage.as_slice()),
        (&requests, future.as_bytes()),
        (&requests, stray.as_slice()),
        // worker-presence decodes its topic's records its own way (edge events or requests)
        (&presence, garbage.as_slice()),
        // an edge skips what it cannot decode (nothing to dead-letter: it is read from the end)
        (&edge, garbage.as_slice()),
    ] {
        producer
            .send(
                FutureRecord::to(topic).key(&key).payload(payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("poison published");
    }

    // The partition keeps flowing: a normal send right after is handled, and its answer reaches
    // edge 1 past the garbage on that edge's topic.
    let (s, b) = rpc(
        &app,
        1,
        &ann_token,
        json!({"type": "dm.send", "conversation_id": conv, "client_msg_id": "after", "text": "after"}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["message"]["seq"], 2);

    // Every poison record is on the dead-letter topic, with a reason.
    let dlq: StreamConsumer =
        runtime::kafka::consumer(&app.kafka, &e2e::unique("dlq-reader-"), false).expect("consumer");
    dlq.subscribe(&[&topics.dead_letter()]).unwrap();
    let mut found: Vec<Value> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while found.len() < 4 {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let m = tokio::time::timeout(left, dlq.recv())
            .await
            .unwrap_or_else(|_| panic!("dead letters missing; found {found:?}"))
            .expect("dead-letter read");
        let v: Value = serde_json::from_slice(m.payload().unwrap_or_default()).unwrap();
        assert_eq!(m.key(), Some(key.as_bytes()), "{v}");
        found.push(v);
    }
    let hex_garbage: String = garbage.iter().map(|b| format!("{b:02x}")).collect();
    let from = |topic: &str, p: &str| {
        found
            .iter()
            .find(|v| v["topic"] == topic && v["payload"] == p)
            .unwrap_or_else(|| panic!("no dead letter from {topic} with payload {p}: {found:?}"))
    };
    let g = from(&requests, &hex_garbage);
    let f = from(&requests, &future);
    let s = from(&requests, &String::from_utf8(stray.clone()).unwrap());
    let p = from(&presence, &hex_garbage);
    for d in [g, f, s, p] {
        assert!(
            d["reason"].as_str().is_some_and(|r| !r.is_empty()),
            "a reason: {d}"
        );
    }
    assert!(
        f["reason"].as_str().unwrap().contains("version"),
        "the version is the reason: {f}"
    );
    assert!(
        s["reason"]
            .as_str()
            .unwrap()
            .contains("user.me does not belong on this topic"),
        "the topic is the reason: {s}"
    );
    assert_eq!(g["partition"], f["partition"]);
    assert_eq!(g["partition"], s["partition"]);

    // Neither poison record did anything.
    let (_, b) = rpc(
        &app,
        0,
        &bob_token,
        json!({"type": "dm.history", "conversation_id": conv}),
    )
    .await;
    let texts: Vec<&str> = b["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, vec!["before", "after"]);
    app.stop().await;
}
