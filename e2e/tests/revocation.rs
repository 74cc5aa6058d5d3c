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

/// The master of `key`'s slot, by the cluster's own `CLUSTER KEYSLOT` (to check [`slot`]).
async fn replica_of_master_addr(app: &TestApp, key: &str) -> String {
    let replica = replica_of(app, key).await;
    let client = redis::Client::open(format!("redis://{replica}")).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let info: String = redis::cmd("INFO")
        .arg("replication")
        .query_async(&mut c)
        .await
        .unwrap();
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .trim()
            .to_string()
    };
    format!("{}:{}", field("master_host:"), field("master_port:"))
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
    let text = e2e::scrape(addr).await;
    text.lines()
        .find_map(|l| l.strip_prefix("sb_revocations_unacknowledged_total "))
        .unwrap_or_else(|| panic!("no sb_revocations_unacknowledged_total: {text}"))
        .parse()
        .unwrap()
}

/// `DELETE /api/v1/sessions/current` with `token`, through nginx `i`: (status, body).
async fn logout(app: &TestApp, i: usize, token: &str) -> (u16, serde_json::Value) {
    app.http(i)
        .delete("/api/v1/sessions/current", Some(token))
        .await
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
    let (status, body) = logout(&app, 0, &t1).await;
    assert_eq!(status, 200, "{body}");
    for k in keys(&app, &t1, &s1) {
        assert!(!on_replica(&app, &k).await, "{k} still on the replica");
    }
    // Retried, it is answered as for a gone session (the replicas confirm it is gone).
    let (status, body) = logout(&app, 0, &t1).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = app
        .http(1)
        .delete(&format!("/api/v1/sessions/{s1}"), Some(&t2))
        .await;
    assert_eq!(status, 404, "{body}");
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
    let (t1, s1) = login(&app, 0, &name).await;
    let (t2, _) = login(&app, 1, &name).await;
    let auth = app.health["worker-auth"];
    assert_eq!(unacknowledged(auth).await, 0.0);

    let (status, body) = logout(&app, 0, &t1).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "unavailable", "{body}");
    assert_eq!(unacknowledged(auth).await, 1.0);
    // The master deleted the session; a retry finds it gone, but is not told it is done before
    // a replica confirms that either: by its token, and by its id from another session.
    let (status, body) = logout(&app, 0, &t1).await;
    assert_eq!(
        (status, &body["code"]),
        (503, &"unavailable".into()),
        "{body}"
    );
    assert_eq!(unacknowledged(auth).await, 2.0);
    let (status, body) = app
        .http(1)
        .delete(&format!("/api/v1/sessions/{s1}"), Some(&t2))
        .await;
    assert_eq!(
        (status, &body["code"]),
        (503, &"unavailable".into()),
        "{body}"
    );
    assert_eq!(unacknowledged(auth).await, 3.0);

    let (status, body) = app.http(1).delete("/api/v1/sessions", Some(&t2)).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "unavailable", "{body}");
    assert_eq!(unacknowledged(auth).await, 4.0);

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

/// A session whose account only the database knows is deleted (the revocation of the deletion
/// lost with a Redis master, say) lets nobody in: the WebSocket handshake with its token is
/// refused `401`, the session is revoked on the spot (gone from the replicas too), and the token
/// is refused over HTTP from then on.
#[tokio::test]
async fn a_session_of_an_account_deleted_in_the_database_is_refused_and_revoked() {
    let app = spawn_app().await;
    let (user, name) = signup(&app, 0).await;
    let (token, sid) = login(&app, 0, &name).await;
    for k in keys(&app, &token, &sid) {
        common::eventually(&format!("{k} on its replica"), || async {
            on_replica(&app, &k).await.then_some(())
        })
        .await;
    }
    let shards = workers::db::Shards::connect(&app.database).unwrap();
    workers::users::store::mark_deleted(&shards, user, runtime::now_ms())
        .await
        .unwrap();

    assert_eq!(
        e2e::client::connect(&app.ws_url(0), Some(&token), None)
            .await
            .err(),
        Some(401),
        "the handshake is refused"
    );
    for k in keys(&app, &token, &sid) {
        assert!(!on_replica(&app, &k).await, "{k} still on the replica");
    }
    assert_eq!(
        app.http(1).get("/api/v1/users/me", Some(&token)).await.0,
        401
    );
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
    let (status, body) = logout(&app, 0, &t1).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(app.http(0).get("/api/v1/users/me", Some(&t1)).await.0, 401);
    assert_eq!(unacknowledged(app.health["worker-auth"]).await, 0.0);
    app.stop().await;
}

// ------------------------------------------------ on a disposable stack: replicas stopped, masters killed

/// These tests stop and kill Redis processes: never against a shared stack. They run with
/// `--ignored` and `SB_DISPOSABLE_STACK=1`, against a platform of one's own:
/// `./sb up --infra-only --port-offset 6000`, then
/// `SB_DISPOSABLE_STACK=1 SB_STACK_FILE=.sb-6000/stack.json cargo test -p e2e --test revocation -- --ignored`,
/// then `./sb down --purge --port-offset 6000`.
fn disposable() {
    assert_eq!(
        std::env::var("SB_DISPOSABLE_STACK").as_deref(),
        Ok("1"),
        "this test stops and kills Redis nodes: run it only against a stack of your own, with SB_DISPOSABLE_STACK=1"
    );
}

/// One node of the cluster, as `CLUSTER NODES` shows it.
#[derive(Clone, Debug)]
struct Node {
    id: String,
    addr: String,
    master: bool,
    /// Not marked failing, and its cluster link connected.
    up: bool,
    /// The master it replicates (replicas).
    of: String,
    slots: Vec<(u16, u16)>,
}

async fn nodes(app: &TestApp) -> Vec<Node> {
    // Any node that answers (one may be down).
    for seed in &app.redis.nodes {
        let Ok(client) = redis::Client::open(seed.as_str()) else {
            continue;
        };
        let Ok(Ok(mut c)) = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            client.get_multiplexed_async_connection(),
        )
        .await
        else {
            continue;
        };
        let Ok(text) = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async::<String>(&mut c)
            .await
        else {
            continue;
        };
        return text
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                Node {
                    id: f[0].into(),
                    addr: f[1].split('@').next().unwrap().into(),
                    master: f[2].contains("master"),
                    up: !f[2].contains("fail") && f[7] == "connected",
                    of: f[3].into(),
                    slots: f[8..]
                        .iter()
                        .filter_map(|r| {
                            let (a, b) = r.split_once('-').unwrap_or((r, r));
                            Some((a.parse().ok()?, b.parse().ok()?))
                        })
                        .collect(),
                }
            })
            .collect();
    }
    panic!("no Redis node answers");
}

fn slot(key: &str) -> u16 {
    // CRC16 (XMODEM) of the key or of its `{hash tag}`, mod 16384: Redis Cluster's key slot.
    let b = key.as_bytes();
    let tagged = b.iter().position(|&c| c == b'{').and_then(|o| {
        let c = b[o + 1..].iter().position(|&c| c == b'}')?;
        (c > 0).then(|| &b[o + 1..o + 1 + c])
    });
    let mut crc: u16 = 0;
    for &byte in tagged.unwrap_or(b) {
        crc ^= (byte as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

/// The master serving `key` now, if one does.
fn serving<'a>(nodes: &'a [Node], key: &str) -> Option<&'a Node> {
    let s = slot(key);
    nodes
        .iter()
        .find(|n| n.master && n.up && n.slots.iter().any(|&(a, b)| (a..=b).contains(&s)))
}

/// The master serving `key` now.
fn master_of<'a>(nodes: &'a [Node], key: &str) -> &'a Node {
    serving(nodes, key).unwrap_or_else(|| panic!("no master serves {key}: {nodes:?}"))
}

/// A field of the node's `INFO server`.
async fn server_info(addr: &str, field: &str) -> String {
    let client = redis::Client::open(format!("redis://{addr}")).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut c)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(field))
        .unwrap_or_else(|| panic!("no {field} in {info}"))
        .trim()
        .to_string()
}

async fn pid(addr: &str) -> u32 {
    server_info(addr, "process_id:").await.parse().unwrap()
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

/// A stopped process, continued when this is dropped (also when the test fails).
struct Stopped(u32);
impl Stopped {
    fn new(pid: u32) -> Self {
        signal(pid, "-STOP");
        Stopped(pid)
    }
}
impl Drop for Stopped {
    fn drop(&mut self) {
        signal(self.0, "-CONT");
    }
}

/// The keys a revocation of this session writes: token, session, the user's index.
fn all_keys(app: &TestApp, user: topics::Id, token: &str, sid: &str) -> [String; 3] {
    let [tok, sess] = keys(app, token, sid);
    [
        tok,
        sess,
        format!("{}:usess:{{{user}}}", app.redis.key_prefix),
    ]
}

#[tokio::test]
#[ignore = "stops a Redis replica: only against a stack of one's own (SB_DISPOSABLE_STACK=1)"]
async fn a_revocation_waits_for_the_replicas_of_exactly_the_masters_it_wrote_to() {
    disposable();
    let mut opts = Options::default();
    opts.limits.revocation_ack_timeout_ms = 300;
    let app = spawn_app_with(opts).await;
    let (_, ann_name) = signup(&app, 0).await;
    let (t1, s1) = login(&app, 0, &ann_name).await;
    let nodes = nodes(&app).await;
    assert_eq!(
        master_of(&nodes, &keys(&app, &t1, &s1)[1]).addr,
        replica_of_master_addr(&app, &keys(&app, &t1, &s1)[1]).await,
        "the slot computed here is the cluster's"
    );
    // The master of ann's session key; its replica is stopped.
    let m = master_of(&nodes, &keys(&app, &t1, &s1)[1]).clone();
    let r = nodes
        .iter()
        .find(|n| n.of == m.id)
        .expect("a replica")
        .clone();
    // A session none of whose keys is on that master (a user and logins until one is).
    let other = loop {
        let (bob, bob_name) = signup(&app, 1).await;
        let mut found = None;
        for _ in 0..20 {
            let (t, s) = login(&app, 1, &bob_name).await;
            if all_keys(&app, bob, &t, &s)
                .iter()
                .all(|k| master_of(&nodes, k).id != m.id)
            {
                found = Some((t, s));
                break;
            }
        }
        if let Some(f) = found {
            break f;
        }
    };
    let auth = app.health["worker-auth"];
    let stopped = Stopped::new(pid(&r.addr).await);
    // ann's logout wrote to m, whose replica cannot acknowledge: not done.
    let (status, body) = logout(&app, 0, &t1).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "unavailable", "{body}");
    assert_eq!(unacknowledged(auth).await, 1.0);
    // bob's logout wrote only to the other masters, whose replicas answer: done.
    let (status, body) = logout(&app, 1, &other.0).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(unacknowledged(auth).await, 1.0);
    drop(stopped);
    // Once the replica runs again it catches up (and ann's session was deleted on m).
    for k in keys(&app, &t1, &s1) {
        common::eventually(&format!("{k} gone from its replica"), || async {
            (!on_replica(&app, &k).await).then_some(())
        })
        .await;
    }
    app.stop().await;
}

#[tokio::test]
#[ignore = "kills a Redis master: only against a stack of one's own (SB_DISPOSABLE_STACK=1)"]
async fn a_logout_answered_ok_survives_a_failover_to_a_replica_that_missed_it() {
    // The failover that loses a logout: the master takes the deletion, its replica never gets it
    // (stopped, its replication link cut), the master dies, the replica takes over. Without the
    // `WAIT` the logout is answered `ok` and the session is back after the failover.
    disposable();
    let mut opts = Options::default();
    opts.limits.revocation_ack_timeout_ms = 300;
    let app = spawn_app_with(opts).await;
    let (_, name) = signup(&app, 0).await;
    let before = nodes(&app).await;
    // A session whose token and session keys share a master: the token opens the session again
    // only if both deletions are lost.
    let (t1, s1, m) = loop {
        let (t, s) = login(&app, 0, &name).await;
        let [tok, sess] = keys(&app, &t, &s);
        let m = master_of(&before, &sess);
        if master_of(&before, &tok).id == m.id {
            break (t, s, m.clone());
        }
    };
    let r = before
        .iter()
        .find(|n| n.of == m.id)
        .expect("a replica")
        .clone();
    for k in keys(&app, &t1, &s1) {
        common::eventually(&format!("{k} on its replica"), || async {
            on_replica(&app, &k).await.then_some(())
        })
        .await;
    }
    let victim = pid(&m.addr).await;
    // Redis rewrites its command line (the process title): its own `INFO` says how it started.
    let argv = vec![
        server_info(&m.addr, "executable:").await,
        server_info(&m.addr, "config_file:").await,
    ];
    let cwd = std::fs::read_link(format!("/proc/{victim}/cwd")).unwrap();

    // The replica stops, and the master drops its replication link: nothing written from now on
    // reaches the replica (a stopped replica alone would still find it in its socket buffer).
    let stopped = Stopped::new(pid(&r.addr).await);
    let client = redis::Client::open(format!("redis://{}", m.addr)).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let cut: u64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("replica")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(cut, 1, "the replication link");
    let (answered, body) = logout(&app, 0, &t1).await;
    // The master is lost; the replica that missed the logout takes over.
    signal(victim, "-KILL");
    drop(stopped);
    let [_, sess] = keys(&app, &t1, &s1);
    common::eventually("the replica takes over the slot", || async {
        let now = nodes(&app).await;
        serving(&now, &sess).filter(|n| n.id == r.id).map(drop)
    })
    .await;
    // What the token opens now, once the cluster answers for the slot again.
    let now = common::eventually("an answer for the token", || async {
        let (status, _) = app.http(0).get("/api/v1/users/me", Some(&t1)).await;
        (status != 503).then_some(status)
    })
    .await;
    // The old master back as a replica, whatever the outcome (the stack stays whole).
    rejoin(&app, &m.id, &argv, &cwd).await;
    assert!(
        !(answered == 200 && now == 200),
        "a session answered logged out is back after the failover"
    );
    // Told to retry: it was not done, and the session is back with the replica that missed it.
    assert_eq!(
        (answered, &body["code"]),
        (503, &"unavailable".into()),
        "{body}"
    );
    assert_eq!(now, 200, "the replica never had the logout");
    // A retry logs it out (answered `ok` once the new master has a replica again; until then
    // `unavailable`, then — the deletion already on the new master — as a gone session).
    common::eventually("a retried logout", || async {
        let (status, _) = logout(&app, 0, &t1).await;
        matches!(status, 200 | 401).then_some(())
    })
    .await;
    assert_eq!(app.http(0).get("/api/v1/users/me", Some(&t1)).await.0, 401);
    for k in keys(&app, &t1, &s1) {
        common::eventually(&format!("{k} gone from the replica"), || async {
            (!on_replica(&app, &k).await).then_some(())
        })
        .await;
    }
    app.stop().await;
}

/// Start a killed node again (as `./sb`'s supervisor would) and wait until it is back as a
/// replica, so the stack is whole for the next test. Its cluster bus port may still be held by
/// a connection in TIME-WAIT (it is in the ephemeral range): then it exits, and is started again.
async fn rejoin(app: &TestApp, id: &str, argv: &[String], cwd: &std::path::Path) {
    use std::os::unix::process::CommandExt;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(120);
    let mut child: Option<std::process::Child> = None;
    loop {
        if nodes(app)
            .await
            .iter()
            .any(|n| n.id == id && n.up && !n.master)
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node {id} did not rejoin"
        );
        let running = child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
        if !running {
            child = Some(
                std::process::Command::new(&argv[0])
                    .args(&argv[1..])
                    .current_dir(cwd)
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .process_group(0)
                    .spawn()
                    .unwrap(),
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}
