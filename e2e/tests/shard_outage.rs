//! One MariaDB shard unreachable for worker-dms (through a forwarder the test cuts, never the
//! shared stack's server): a DM in a conversation on a healthy shard is still stored and delivered
//! promptly, while one on the down shard is answered `unavailable` by the worker (its breaker
//! opens, then refuses at once); once the shard is back the probe closes the breaker and the
//! resend, same `client_msg_id`, is stored.

mod common;

use common::{befriend, open_dm};
use e2e::client::{ok, Client};
use e2e::forward::Forwarder;
use e2e::{spawn_app_with, Options};
use runtime::metrics::sample;
use serde_json::json;
use std::time::{Duration, Instant};
use topics::{Event, Id, Response, ServerFrame};
use workers::db::{build_map, mix, physical_of};
use workers::settings::ShardSettings;

fn send(conv: Id, client_msg_id: &str) -> serde_json::Value {
    json!({"type": "dm.send", "conversation_id": conv, "client_msg_id": client_msg_id, "text": "hi"})
}

fn unavailable(frame: &ServerFrame) -> bool {
    matches!(frame, ServerFrame::Error { code, message, .. }
        if code.as_str() == "unavailable" && message.contains("database shard"))
}

#[tokio::test]
async fn a_down_shard_stalls_only_the_dms_that_need_it() {
    let stack = e2e::stack();
    let n = stack.mariadb.shards.len();
    assert!(n >= 2, "needs two shards");
    let bad = 1;
    let forwarder = Forwarder::start(&stack.mariadb.shards[bad].primary).await;
    let mut shards = stack.mariadb.shards.clone();
    shards[bad] = ShardSettings {
        primary: forwarder.addr.to_string(),
        replica: None,
    };
    let app = spawn_app_with(Options {
        dms_shards: Some(shards),
        ..Default::default()
    })
    .await;
    let map = build_map(16, n, None).unwrap();
    let shard_of = |id: Id| physical_of(&map, mix(id.0));

    // A sender on a healthy shard, and two of its conversations: one on a healthy shard, one on
    // the shard about to go down.
    let (ann, ann_token) = loop {
        let (id, _, token) = app.user(0).await;
        if shard_of(id) != bad {
            break (id, token);
        }
    };
    let (mut healthy, mut down) = (None, None);
    for _ in 0..24 {
        if healthy.is_some() && down.is_some() {
            break;
        }
        let (peer, _, peer_token) = app.user(1).await;
        befriend(&app, (ann, &ann_token), (peer, &peer_token)).await;
        let conv = open_dm(&app, &ann_token, peer).await;
        if shard_of(conv) == bad {
            down.get_or_insert(conv);
        } else {
            healthy.get_or_insert((conv, peer_token));
        }
    }
    let ((healthy, bob_token), down) = (
        healthy.expect("a healthy conversation"),
        down.expect("a conversation on the bad shard"),
    );
    // one socket per conversation: a client reading one reply drops the others it meets
    let mut a = Client::connect(&app.ws_url(0), &ann_token).await;
    let mut a2 = Client::connect(&app.ws_url(0), &ann_token).await;
    let mut bob = Client::connect(&app.ws_url(1), &bob_token).await;

    forwarder.down();
    // Both at once, the down shard's first: the healthy one does not wait behind it for good.
    let t0 = Instant::now();
    let stuck = a.sdk().send_json(send(down, "d1")).await.unwrap();
    let fine = a2.sdk().send_json(send(healthy, "h1")).await.unwrap();
    let Response::Sent { message, .. } = ok(a2.wait_reply(&fine).await) else {
        panic!("not sent")
    };
    let healthy_after = t0.elapsed();
    assert_eq!(message.client_msg_id, "h1");
    // at most `breaker_failures` (2) attempts of `shard_timeout_ms` (1 s) each, and backoff
    assert!(healthy_after < Duration::from_secs(4), "{healthy_after:?}");
    let refused = a.wait_reply(&stuck).await;
    assert!(unavailable(&refused), "{refused:?}");
    bob.event_where(|e| matches!(e, Event::DmMessage { message } if message.client_msg_id == "h1"))
        .await;

    // The breaker is open: the down shard's sends are refused at once, the others go on.
    let t1 = Instant::now();
    let stuck = a.sdk().send_json(send(down, "d2")).await.unwrap();
    let fine = a2.sdk().send_json(send(healthy, "h2")).await.unwrap();
    assert!(unavailable(&a.wait_reply(&stuck).await));
    assert!(matches!(
        ok(a2.wait_reply(&fine).await),
        Response::Sent { .. }
    ));
    assert!(t1.elapsed() < Duration::from_secs(1), "{:?}", t1.elapsed());
    let text = e2e::scrape(app.health["worker-dms"]).await;
    assert_eq!(
        sample(&text, "sb_shard_breaker_open{shard=\"1\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "sb_shard_breaker_open{shard=\"0\"}"),
        Some(0.0),
        "{text}"
    );
    assert!(
        sample(
            &text,
            "sb_requests_unavailable_total{reason=\"breaker_open\"}"
        ) >= Some(1.0)
    );
    assert!(
        sample(
            &text,
            "sb_requests_unavailable_total{reason=\"shard_failed\"}"
        ) >= Some(1.0)
    );

    // Back up: the probe closes the breaker, and the resend of d1 is stored once.
    forwarder.up();
    let deadline = Instant::now() + Duration::from_secs(15);
    let message = loop {
        match a.request(send(down, "d1")).await {
            ServerFrame::Reply {
                data: Response::Sent { message, .. },
                ..
            } => break message,
            other => assert!(unavailable(&other), "{other:?}"),
        }
        assert!(
            Instant::now() < deadline,
            "the shard's sends are not stored again"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        (message.client_msg_id.as_str(), message.seq),
        ("d1", 1),
        "never stored before"
    );
    let text = e2e::scrape(app.health["worker-dms"]).await;
    assert_eq!(
        sample(&text, "sb_shard_breaker_open{shard=\"1\"}"),
        Some(0.0),
        "{text}"
    );
    a.close().await;
    a2.close().await;
    bob.close().await;
    app.stop().await;
}
