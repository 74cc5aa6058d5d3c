//! Revocations acknowledged by a replica (issue 12 item 5): a logout, a logout everywhere and an
//! account deletion are answered `ok` only once a replica of every Redis master they wrote to has
//! the deletion (`WAIT`), so a failover promoting that replica cannot bring the session back.
//! When the replicas cannot confirm it, the client is told `unavailable` (retrying is safe) and
//! `sb_revocations_unacknowledged_total` counts it.

mod common;

use common::{login, signup};
use e2e::{spawn_app, spawn_app_with, Options, TestApp};
use runtime::redis::redis;
use std::net::SocketAddr;
use workers::sessions::hash_token;

/// The address (`host:port`) of the replica of the master serving `key`'s slot, from the
/// cluster's own view (`CLUSTER KEYSLOT`, `CLUSTER NODES` on a seed node).
async fn replica_of(app: &TestApp, key: &str) -> String {
    let seed = redis::Client::open(app.redis.nodes[0].as_str()).unwrap();
    let mut c = seed.get_multiplexed_async_connection().await.unwrap();
    let slot: u16 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query_async(&mut c)
        .await
        .unwrap();
    let nodes: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(&mut c)
        .await
        .unwrap();
    let lines: Vec<Vec<&str>> = nodes
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    let serves = |f: &Vec<&str>| {
        f[8..].iter().any(|r| {
            let (a, b) = r.split_once('-').unwrap_or((r, r));
            matches!((a.parse::<u16>(), b.parse::<u16>()), (Ok(a), Ok(b)) if (a..=b).contains(&slot))
        })
    };
    let master = lines
        .iter()
        .find(|f| f[2].contains("master") && serves(f))
        .unwrap_or_else(|| panic!("no master serves slot {slot}: {nodes}"));
    let replica = lines
        .iter()
        .find(|f| f[2].contains("slave") && f[3] == master[0])
        .unwrap_or_else(|| panic!("master {} has no replica: {nodes}", master[0]));
    replica[1].split('@').next().unwrap().to_string()
}

/// Whether `key` exists on the replica of its slot, read from that replica directly.
async fn on_replica(app: &TestApp, key: &str) -> bool {
    let replica = replica_of(app, key).await;
    let client = redis::Client::open(format!("redis://{replica}")).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let () = redis::cmd("READONLY").query_async(&mut c).await.unwrap();
    let n: u64 = redis::cmd("EXISTS")
        .arg(key)
        .query_async(&mut c)
        .await
        .unwrap();
    n == 1
}

/// `sb_revocations_unacknowledged_total` of the process serving `/metrics` at `addr`.
async fn unacknowledged(addr: SocketAddr) -> f64 {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("sb_revocations_unacknowledged_total "))
        .unwrap_or_else(|| panic!("no sb_revocations_unacknowledged_total: {text}"))
        .parse()
        .unwrap()
}

/// The session's keys (see `workers::sessions`).
fn keys(app: &TestApp, token: &str, sid: &str) -> [String; 2] {
    let p = &app.redis.key_prefix;
    [
        format!("{p}:tok:{}", hash_token(token)),
        format!("{p}:sess:{sid}"),
    ]
}

#[tokio::test]
async fn an_acknowledged_revocation_is_already_on_the_replica() {
    let app = spawn_app().await;
    let (_, name) = signup(&app, 0).await;
    let (t1, s1) = login(&app, 0, &name).await;
    let (t2, s2) = login(&app, 1, &name).await;
    let (t3, s3) = login(&app, 0, &name).await;
    // The replicas have the sessions (polled: replication is asynchronous for writes that are
    // not revocations).
    for (t, s) in [(&t1, &s1), (&t2, &s2), (&t3, &s3)] {
        for k in keys(&app, t, s) {
            common::eventually(&format!("{k} on its replica"), || async {
                on_replica(&app, &k).await.then_some(())
            })
            .await;
        }
    }
    // One session: the moment the client hears `ok`, its keys are gone from the replicas too.
    let (status, body) = app
        .http(0)
        .delete("/api/v1/sessions/current", Some(&t1))
        .await;
    assert_eq!(status, 200, "{body}");
    for k in keys(&app, &t1, &s1) {
        assert!(!on_replica(&app, &k).await, "{k} still on the replica");
    }
    // Every session: the same for each of them.
    let (status, body) = app.http(1).delete("/api/v1/sessions", Some(&t2)).await;
    assert_eq!(status, 200, "{body}");
    for k in keys(&app, &t2, &s2).into_iter().chain(keys(&app, &t3, &s3)) {
        assert!(!on_replica(&app, &k).await, "{k} still on the replica");
    }
    for t in [&t1, &t2, &t3] {
        assert_eq!(app.http(0).get("/api/v1/users/me", Some(t)).await.0, 401);
    }
    assert_eq!(unacknowledged(app.health["worker-auth"]).await, 0.0);
    app.stop().await;
}

#[tokio::test]
async fn a_revocation_too_few_replicas_confirm_is_unavailable_and_counted() {
    // The local cluster has one replica per master: two can never acknowledge.
    let mut opts = Options::default();
    opts.limits.revocation_replicas = 2;
    opts.limits.revocation_ack_timeout_ms = 50;
    let app = spawn_app_with(opts).await;
    let (_, name) = signup(&app, 0).await;
    let (t1, _) = login(&app, 0, &name).await;
    let (t2, _) = login(&app, 1, &name).await;
    let auth = app.health["worker-auth"];
    assert_eq!(unacknowledged(auth).await, 0.0);

    let (status, body) = app
        .http(0)
        .delete("/api/v1/sessions/current", Some(&t1))
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "unavailable", "{body}");
    assert_eq!(unacknowledged(auth).await, 1.0);

    let (status, body) = app.http(1).delete("/api/v1/sessions", Some(&t2)).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "unavailable", "{body}");
    assert_eq!(unacknowledged(auth).await, 2.0);

    // An account deletion revokes on worker-users.
    let (_, other) = signup(&app, 1).await;
    let (t3, _) = login(&app, 1, &other).await;
    let users = app.health["worker-users"];
    let (status, body) = app.http(1).delete("/api/v1/users/me", Some(&t3)).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "unavailable", "{body}");
    assert_eq!(unacknowledged(users).await, 1.0);
    app.stop().await;
}

#[tokio::test]
async fn with_no_replicas_asked_for_a_revocation_does_not_wait() {
    // `revocation_replicas = 0` (a cluster without replicas): done once the masters have it.
    let mut opts = Options::default();
    opts.limits.revocation_replicas = 0;
    let app = spawn_app_with(opts).await;
    let (_, name) = signup(&app, 0).await;
    let (t1, _) = login(&app, 0, &name).await;
    let (status, body) = app
        .http(0)
        .delete("/api/v1/sessions/current", Some(&t1))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(app.http(0).get("/api/v1/users/me", Some(&t1)).await.0, 401);
    assert_eq!(unacknowledged(app.health["worker-auth"]).await, 0.0);
    app.stop().await;
}
