//! One MariaDB shard unreachable (through a forwarder the test cuts, never the shared stack's
//! server). For worker-dms alone: a DM in a conversation on a healthy shard is still stored and
//! delivered promptly, while one on the down shard is answered `unavailable` by the worker (its
//! breaker opens, then refuses at once); once the shard is back the probe closes the breaker and
//! the resend, same `client_msg_id`, is stored. For every role: history, `dm.open`, profiles,
//! invites, logins, sign-ups and bearer-token calls that need the down shard are answered
//! `unavailable` at once once each role's breaker is open, the same kinds for the healthy shard
//! go on, and all succeed again once it is back.

mod common;

use common::{befriend, invite_code, open_dm};
use e2e::client::{ok, Client};
use e2e::forward::Forwarder;
use e2e::{spawn_app_with, Options};
use runtime::metrics::sample;
use serde_json::json;
use std::time::{Duration, Instant};
use topics::{Event, Id, Response, ServerFrame};
use workers::db::{build_map, fnv1a, mix, physical_of};
use workers::dms::pair_key;
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
        ..Default::default()
    };
    let app = spawn_app_with(Options {
        shards: Some(shards),
        shard_roles: vec![workers::Role::Dms],
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

/// An HTTP answer of `unavailable` because a shard is down.
fn http_unavailable((status, body): &(u16, serde_json::Value)) -> bool {
    *status == 503
        && body["code"] == "unavailable"
        && body["message"]
            .as_str()
            .is_some_and(|m| m.contains("database shard"))
}

/// Every role's requests that need a down shard (the caller's, a peer's, a conversation's, a
/// username's) are answered `unavailable` — within about `breaker_failures` connect timeouts
/// the first time, at once once that role's breaker is open — while the same kinds for users and
/// conversations on the healthy shard go on; once the shard is back, they succeed again.
#[tokio::test]
async fn a_down_shard_stalls_only_the_requests_that_need_it() {
    let stack = e2e::stack();
    let n = stack.mariadb.shards.len();
    assert!(n >= 2, "needs two shards");
    let bad = 1;
    let forwarder = Forwarder::start(&stack.mariadb.shards[bad].primary).await;
    let mut shards = stack.mariadb.shards.clone();
    // only the primary goes down: reads that tolerate lag go on from the replica. On Galera shards
    // the two nodes serve as primary and replica without failover (which would elect the replica
    // as writer: no shard down at all, `e2e/tests/galera.rs`).
    shards[bad].primary = forwarder.addr.to_string();
    shards[bad].failover = false;
    let mut opts = Options {
        shards: Some(shards),
        ..Default::default()
    };
    // the set-up signs up and logs in a few dozen users from one address
    opts.limits.signups_per_address_per_minute = 1_000;
    opts.limits.login_attempts_per_address_per_minute = 1_000;
    let app = spawn_app_with(opts).await;
    let map = build_map(16, n, None).unwrap();
    let shard_of = |id: Id| physical_of(&map, mix(id.0));
    let key_shard = |key: &str| physical_of(&map, fnv1a(key));
    // a user whose row and username are on `shard` (a login reads both)
    let user_on = async |shard: usize| loop {
        let (id, name, token) = app.user(0).await;
        if shard_of(id) == shard && key_shard(&name) == shard {
            break (id, name, token);
        }
    };

    // ann and bob on the healthy shard, their pair and conversation too; one conversation of
    // ann's on the down shard; carl (on the down shard) connected to ann, dave (down shard) not.
    let (ann, ann_name, ann_token) = user_on(0).await;
    let (mut bob, mut healthy, mut down) = (None, None, None);
    for _ in 0..48 {
        if bob.is_some() && down.is_some() {
            break;
        }
        let (peer, _, peer_token) = app.user(1).await;
        let fits = shard_of(peer) != bad && key_shard(&pair_key(ann, peer)) != bad;
        if !fits && down.is_some() {
            continue;
        }
        befriend(&app, (ann, &ann_token), (peer, &peer_token)).await;
        let conv = open_dm(&app, &ann_token, peer).await;
        if shard_of(conv) == bad {
            down.get_or_insert(conv);
        } else if fits && bob.is_none() {
            (bob, healthy) = (Some(peer), Some(conv));
        }
    }
    let (bob, healthy, down) = (
        bob.expect("a healthy peer"),
        healthy.expect("a healthy conversation"),
        down.expect("a conversation on the down shard"),
    );
    let (carl, carl_name, carl_token) = user_on(bad).await;
    befriend(&app, (ann, &ann_token), (carl, &carl_token)).await;
    let (_, _, dave_token) = user_on(bad).await;
    let dave_code = invite_code(&app, &dave_token).await;
    let mut a = Client::connect(&app.ws_url(0), &ann_token).await;
    let mut a2 = Client::connect(&app.ws_url(1), &ann_token).await;
    let mut c = Client::connect(&app.ws_url(1), &carl_token).await;
    let name_on = |shard: usize| loop {
        let name = e2e::unique("u");
        if key_shard(&name) == shard {
            break name;
        }
    };
    let signup = async |name: &str| {
        app.http(0)
            .post(
                "/api/v1/users",
                json!({"username": name, "password": "pass-word-1"}),
                None,
            )
            .await
    };
    let login = async |name: &str| {
        app.http(1)
            .post(
                "/api/v1/sessions",
                json!({"username": name, "password": "pass-word-1"}),
                None,
            )
            .await
    };
    let me = async |token: &str| app.http(0).get("/api/v1/users/me", Some(token)).await;
    // carl's conversation with ann (on whichever shard)
    let carls = open_dm(&app, &carl_token, ann).await;

    forwarder.down();
    // Each role's first request for the down shard opens that role's breaker, after
    // `breaker_failures` (2) connect timeouts (1 s); the healthy one sent behind it is answered.
    // dms: history of a conversation on the down shard / on the healthy one
    let history = |conv: Id| json!({"type": "dm.history", "conversation_id": conv});
    // users: carl's own profile (on the down shard) / ann's
    let own = json!({"type": "user.me"});
    // invites: carl's links / ann's
    let links = json!({"type": "invite.list"});
    for (from_carl, bad_frame, good_frame) in [
        (false, history(down), history(healthy)),
        (true, own.clone(), own.clone()),
        (true, links.clone(), links.clone()),
    ] {
        let t0 = Instant::now();
        let on = if from_carl { &mut c } else { &mut a };
        let stuck = on.sdk().send_json(bad_frame.clone()).await.unwrap();
        ok(a2.request(good_frame).await);
        let refused = if from_carl {
            c.wait_reply(&stuck).await
        } else {
            a.wait_reply(&stuck).await
        };
        assert!(unavailable(&refused), "{bad_frame}: {refused:?}");
        assert!(
            t0.elapsed() < Duration::from_secs(4),
            "{bad_frame}: {:?}",
            t0.elapsed()
        );
    }
    // auth: a login reads the account's row on its shard
    assert!(http_unavailable(&login(&carl_name).await));

    // Every role's breaker is open: each request that needs the down shard is refused at once
    // (well under the edge's 5 s deadline), the same kinds for the healthy shard go on.
    let quick = Duration::from_secs(1);
    let ws_cases = [
        // dms: a conversation on the down shard; opening the one with a user on it
        (history(down), history(healthy), true),
        (
            json!({"type": "dm.open", "user_id": carl}),
            json!({"type": "dm.open", "user_id": bob}),
            true,
        ),
        // users: carl's own profile (from the primary)
        (own.clone(), own.clone(), false),
        // invites: inviting a user on the down shard (two shards: ann's is fine)
        (
            json!({"type": "invite.send", "code": dave_code}),
            links.clone(),
            true,
        ),
        (links.clone(), links.clone(), false),
        // dms: a send over carl's socket (no account check per frame): the sender's membership
        // and link are read from his own shard first, wherever the conversation lives
        (send(carls, "c2"), links.clone(), false),
    ];
    for (bad_frame, good_frame, from_ann) in &ws_cases {
        let t0 = Instant::now();
        let refused = if *from_ann {
            a.request(bad_frame.clone()).await
        } else {
            c.request(bad_frame.clone()).await
        };
        assert!(unavailable(&refused), "{bad_frame}: {refused:?}");
        assert!(t0.elapsed() < quick, "{bad_frame}: {:?}", t0.elapsed());
        ok(a.request(good_frame.clone()).await);
    }
    // A profile is read from the replica, which is up: the lookup goes on, at once.
    let t0 = Instant::now();
    let Response::User { user, .. } = ok(a
        .request(json!({"type": "user.lookup", "user_id": carl}))
        .await)
    else {
        panic!("not a user")
    };
    assert_eq!(user.user_id, carl);
    assert!(t0.elapsed() < quick, "{:?}", t0.elapsed());
    // A handshake checks the account on the primary: refused, 503.
    let refused = e2e::client::connect(&app.ws_url(0), Some(&carl_token), None).await;
    assert_eq!(refused.err(), Some(503));
    // HTTP: a bearer token's account check (users worker, and a send in worker-dms' batch), a
    // login (auth), a sign-up whose name's directory entry is on the down shard; the healthy ones
    // answer, and a new account's row goes to a shard that is up.
    let bad_name = name_on(bad);
    for (what, answer) in [
        ("me", me(&carl_token).await),
        ("login", login(&carl_name).await),
        ("signup", signup(&bad_name).await),
        // a send in a batch of worker-dms, its bearer token's account on the down shard
        (
            "dm.send",
            app.http(0)
                .post("/api/v1/rpc", send(healthy, "c1"), Some(&carl_token))
                .await,
        ),
    ] {
        assert!(http_unavailable(&answer), "{what}: {answer:?}");
    }
    let t0 = Instant::now();
    let _ = me(&carl_token).await;
    assert!(t0.elapsed() < quick, "{:?}", t0.elapsed());
    assert_eq!(me(&ann_token).await.0, 200);
    assert_eq!(login(&ann_name).await.0, 200);
    for _ in 0..8 {
        let (s, body) = signup(&name_on(0)).await;
        assert_eq!(s, 201, "{body}");
        let id: Id = serde_json::from_value(body["user"]["user_id"].clone()).unwrap();
        assert_ne!(
            shard_of(id),
            bad,
            "a new account goes to a shard that is up"
        );
    }
    for role in [
        "worker-users",
        "worker-invites",
        "worker-dms",
        "worker-auth",
    ] {
        let text = e2e::scrape(app.health[role]).await;
        assert_eq!(
            sample(&text, "sb_shard_breaker_open{shard=\"1\"}"),
            Some(1.0),
            "{role}: {text}"
        );
        assert_eq!(
            sample(&text, "sb_shard_breaker_open{shard=\"0\"}"),
            Some(0.0),
            "{role}: {text}"
        );
    }

    // Back up: the probes close the breakers and the same requests succeed.
    forwarder.up();
    let deadline = Instant::now() + Duration::from_secs(15);
    for (bad_frame, _, from_ann) in &ws_cases {
        loop {
            let answer = if *from_ann {
                a.request(bad_frame.clone()).await
            } else {
                c.request(bad_frame.clone()).await
            };
            match answer {
                ServerFrame::Reply { .. } => break,
                other => assert!(unavailable(&other), "{bad_frame}: {other:?}"),
            }
            assert!(
                Instant::now() < deadline,
                "{bad_frame} does not succeed again"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    loop {
        let answers = [me(&carl_token).await, login(&carl_name).await];
        if answers.iter().all(|(s, _)| *s == 200) {
            break;
        }
        assert!(
            answers.iter().all(|a| a.0 == 200 || http_unavailable(a)),
            "{answers:?}"
        );
        assert!(Instant::now() < deadline, "{answers:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        signup(&bad_name).await.0,
        201,
        "the name was not taken by the refusal"
    );
    a.close().await;
    a2.close().await;
    c.close().await;
    app.stop().await;
}
