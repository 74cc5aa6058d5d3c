//! Against the processes `./sb up --shard-replication galera` started (a platform whose shards
//! are Galera clusters; on any other platform the test says so and passes without testing): DMs
//! are being sent when the writer node of their conversation's shard is SIGKILLed and kept down
//! (the launcher's supervisor is paused). Sends recover by themselves; every acknowledged message
//! is in the conversation's history, whose sequence numbers run 1, 2, 3, … without a gap or a
//! reuse; then the node is started again (by the supervisor, which joins it to the cluster, never
//! bootstraps it), catches up, and sends go on without a gap.

mod common;

use e2e::client::{ok, Client, Http};
use e2e::launcher::{processes, Proc};
use mysql_async::prelude::*;
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use topics::{ErrorCode, Id, Response, ServerFrame};

/// How long the writer node stays down.
const KEPT_DOWN: Duration = Duration::from_secs(10);
/// Sends are acknowledged again within this after the kill (the cluster drops the node from its
/// view in ~1.5-3 s, the workers elect the other node at their next failed connection).
const RECOVERS_WITHIN: Duration = Duration::from_secs(10);
/// The restarted node is Synced and holds every message within this.
const REJOINS_WITHIN: Duration = Duration::from_secs(90);

fn signal(p: &Proc, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([sig, &p.pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {sig} {} ({})", p.pid, p.name);
}

/// The supervisor, paused while it lives: a panicking test does not leave it stopped.
struct Paused(Proc);

impl Drop for Paused {
    fn drop(&mut self) {
        signal(&self.0, "-CONT");
    }
}

/// One acknowledged send: its client message id, the sequence number it got, when.
type Ack = (String, u64, Instant);

/// Send `dm.send`s one after another (each resent with the same `client_msg_id` while the
/// platform answers `unavailable` or not at all, as clients do) until `stop`; the acks.
async fn sender(mut c: Client, conv: Id, who: &'static str, stop: Arc<AtomicBool>) -> Vec<Ack> {
    let mut acks = Vec::new();
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let cmid = format!("{who}-{i}");
        let frame = json!({"type": "dm.send", "conversation_id": conv, "client_msg_id": cmid, "text": cmid});
        let started = Instant::now();
        loop {
            let rid = c.sdk().send_json(frame.clone()).await.expect("ws send");
            match c.sdk().reply_within(&rid, Duration::from_secs(5)).await {
                Ok(ServerFrame::Reply {
                    data: Response::Sent { message, .. },
                    ..
                }) => {
                    acks.push((cmid.clone(), message.seq, Instant::now()));
                    break;
                }
                Ok(ServerFrame::Error {
                    code: ErrorCode::Unavailable,
                    ..
                })
                | Err(client::Error::Timeout) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => panic!("dm.send {cmid}: {other:?}"),
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "dm.send {cmid} never accepted"
            );
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    c.close().await;
    acks
}

/// The whole history of `conv`, oldest first: (seq, client_msg_id).
async fn history(c: &mut Client, conv: Id) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    loop {
        let after = out.last().map_or(0, |(s, _)| *s);
        let Response::History { messages, more, .. } = ok(c
            .request(json!({"type": "dm.history", "conversation_id": conv, "after_seq": after, "limit": 100}))
            .await)
        else {
            panic!("not a history")
        };
        out.extend(messages.into_iter().map(|m| (m.seq, m.client_msg_id)));
        if !more {
            return out;
        }
    }
}

/// Every acked send is in `history` with the seq it was acked with, and the seqs are 1..=n.
fn check(history: &[(u64, String)], acks: &[&Ack]) {
    let seqs: Vec<u64> = history.iter().map(|(s, _)| *s).collect();
    let want: Vec<u64> = (1..=history.len() as u64).collect();
    assert_eq!(seqs, want, "sequence numbers run 1, 2, 3, … without a gap");
    let by_cmid: HashMap<&str, u64> = history.iter().map(|(s, c)| (c.as_str(), *s)).collect();
    assert_eq!(by_cmid.len(), history.len(), "no message stored twice");
    for (cmid, seq, _) in acks {
        assert_eq!(
            by_cmid.get(cmid.as_str()),
            Some(seq),
            "acknowledged {cmid} (seq {seq}) is in the history with its seq"
        );
    }
}

/// A Galera node's `wsrep_local_state` and the number of `conv`'s messages it holds (`None`
/// when it does not answer).
async fn node_holds(addr: &str, db: &str, conv: Id) -> Option<(String, u64)> {
    let stack = e2e::stack();
    let (host, port) = addr.rsplit_once(':')?;
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname(host.to_string())
        .tcp_port(port.parse().ok()?)
        .user(Some(stack.mariadb.user.clone()))
        .pass(Some(stack.mariadb.password.clone()))
        .db_name(Some(db.to_string()));
    let mut c = mysql_async::Conn::new(opts).await.ok()?;
    let state: Option<(String, String)> = c
        .query_first("SHOW GLOBAL STATUS LIKE 'wsrep_local_state'")
        .await
        .ok()?;
    let n: Option<u64> = c
        .exec_first(
            "SELECT COUNT(*) FROM messages WHERE conversation_id = ?",
            (conv.0,),
        )
        .await
        .ok()?;
    let _ = c.disconnect().await;
    Some((state?.1, n?))
}

#[tokio::test]
async fn losing_a_shards_writer_node_loses_no_acknowledged_message_and_it_rejoins() {
    let stack = e2e::stack();
    if !e2e::galera_shards(&stack) {
        eprintln!("skipped: the platform's shards are not Galera clusters (`./sb up --shard-replication galera`)");
        return;
    }
    let before = processes();
    let supervisor = before
        .get("supervisor")
        .expect("the launcher's supervisor runs")
        .clone();

    let http = Http::new(&format!("http://{}", stack.nginx[0]));
    let (ann, ann_token) = common::signup_and_login(&http).await;
    let (bob, bob_token) = common::signup_and_login(&http).await;
    let url = format!("ws://{}/ws", stack.nginx[0]);
    let mut a = Client::connect(&url, &ann_token).await;
    let mut b = Client::connect(&url, &bob_token).await;
    let conv = common::befriend_over_ws(&mut a, &mut b, ann, bob).await;

    // The conversation's shard, and its writer: node 0 (the first Synced node in order).
    let settings = workers::DatabaseSettings {
        user: stack.mariadb.user.clone(),
        password: stack.mariadb.password.clone().into(),
        name: stack.mariadb.database.clone(),
        shards: stack.mariadb.shards.clone(),
        ..Default::default()
    };
    let shard = workers::db::Shards::connect(&settings)
        .unwrap()
        .by_id(conv)
        .index;
    let node0 = before[&format!("mariadb-shard{shard}-node0")].clone();
    let node1 = before[&format!("mariadb-shard{shard}-node1")].clone();
    for n in [&node0, &node1] {
        let (state, _) = node_holds(&n.addr, &stack.mariadb.database, conv)
            .await
            .unwrap_or_else(|| panic!("{} answers", n.name));
        assert_eq!(state, "4", "{} is Synced", n.name);
    }

    // Both users send, one message after another each, while the writer is killed.
    let stop = Arc::new(AtomicBool::new(false));
    let senders = [
        tokio::spawn(sender(a, conv, "ann", stop.clone())),
        tokio::spawn(sender(b, conv, "bob", stop.clone())),
    ];
    tokio::time::sleep(Duration::from_secs(2)).await;
    let paused = Paused(supervisor.clone());
    signal(&supervisor, "-STOP");
    let killed = Instant::now();
    signal(&node0, "-KILL");
    tokio::time::sleep(KEPT_DOWN).await;
    stop.store(true, Ordering::Relaxed);
    let mut acks: Vec<Ack> = Vec::new();
    for s in senders {
        acks.extend(s.await.expect("sender"));
    }
    acks.sort_by_key(|a| a.2);
    let before_kill = acks.iter().filter(|a| a.2 < killed).count();
    let first_after = acks
        .iter()
        .filter(|a| a.2 > killed)
        .map(|a| a.2 - killed)
        .min()
        .expect("sends acknowledged after the kill");
    // the longest wait for an ack around the kill: how long writes stalled
    let stall = acks
        .windows(2)
        .map(|w| w[1].2 - w[0].2)
        .max()
        .unwrap_or_default();
    eprintln!(
        "galera: {} sends acknowledged ({before_kill} before the kill); longest pause {stall:?}",
        acks.len()
    );
    assert!(before_kill > 10, "sends went through before the kill");
    assert!(
        acks.len() - before_kill > 10,
        "sends went on after the kill"
    );
    assert!(
        stall < RECOVERS_WITHIN,
        "sends stalled {stall:?} (first ack {first_after:?} after the kill)"
    );

    // Nothing acknowledged is lost; no seq is reused or skipped.
    let mut reader = Client::connect(&url, &ann_token).await;
    let seen = history(&mut reader, conv).await;
    check(&seen, &acks.iter().collect::<Vec<_>>());
    assert!(seen.len() >= acks.len());

    // The supervisor starts the node again: it joins (IST from the other node) and holds every
    // message; nobody bootstrapped a second cluster (one cluster of three).
    drop(paused);
    let rejoined = loop {
        if let Some(p) = processes().remove(&node0.name) {
            if (p.pid, p.starttime) != (node0.pid, node0.starttime) {
                if let Some((state, n)) = node_holds(&p.addr, &stack.mariadb.database, conv).await {
                    if state == "4" && n == seen.len() as u64 {
                        break p;
                    }
                }
            }
        }
        assert!(
            killed.elapsed() < REJOINS_WITHIN,
            "{} did not rejoin with every message within {REJOINS_WITHIN:?}",
            node0.name
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut c = mysql_async::Conn::new(
        mysql_async::OptsBuilder::default()
            .ip_or_hostname("127.0.0.1")
            .tcp_port(rejoined.addr.rsplit_once(':').unwrap().1.parse().unwrap())
            .user(Some(stack.mariadb.user.clone()))
            .pass(Some(stack.mariadb.password.clone())),
    )
    .await
    .unwrap();
    let size: Option<(String, String)> = c
        .query_first("SHOW GLOBAL STATUS LIKE 'wsrep_cluster_size'")
        .await
        .unwrap();
    assert_eq!(
        size.unwrap().1,
        "3",
        "the node joined the cluster of node 1 and garbd"
    );
    let _ = c.disconnect().await;

    // Sends go on, numbered on from where they were (the workers move back to node 0).
    let stop = Arc::new(AtomicBool::new(false));
    let s = tokio::spawn(sender(
        Client::connect(&url, &bob_token).await,
        conv,
        "bob-after",
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let after = s.await.unwrap();
    assert!(!after.is_empty());
    let all = history(&mut reader, conv).await;
    check(&all, &acks.iter().chain(&after).collect::<Vec<_>>());
    reader.close().await;
}
