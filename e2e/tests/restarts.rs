//! Against the processes `./sb` started (like tests/platform.rs, but in a file of its own: it kills
//! platform processes, and test files run one after another). `./sb test` starts the platform with
//! `--workers dms=2`: both worker-dms processes are listed and ready; and the launcher's supervisor
//! brings a SIGKILLed worker and edge back, ready and serving, by itself.

mod common;

use e2e::client::{Client, Http};
use e2e::launcher::{processes, Proc};
use e2e::unique;
use serde_json::json;
use std::time::{Duration, Instant};
use topics::{ErrorCode, Event, Id, ServerFrame};

/// A killed process is running again and answers `/readyz` with 200 within this.
const BACK_WITHIN: Duration = Duration::from_secs(20);
/// A DM between two users goes through (sent, and delivered live to a socket on the restarted
/// edge) within this after the kill. A killed consumer's partitions wait for its group session
/// to time out (10 s) before a sibling or its restarted self takes them.
const SERVING_WITHIN: Duration = Duration::from_secs(40);

/// The process `pid` exists and is the one that started at `starttime` (a PID can be reused).
fn alive(pid: u32, starttime: u64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let rest: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    !matches!(rest[0], "Z" | "X") && rest[19].parse::<u64>().ok() == Some(starttime)
}

async fn ready(addr: &str) -> bool {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    matches!(client.get(format!("http://{addr}/readyz")).send().await,
             Ok(r) if r.status().as_u16() == 200)
}

fn sigkill(p: &Proc) {
    assert!(
        alive(p.pid, p.starttime),
        "{} is not running: {p:?}",
        p.name
    );
    let status = std::process::Command::new("kill")
        .args(["-KILL", &p.pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -KILL {} ({})", p.pid, p.name);
}

/// Wait until the launcher records a new, running process for `old.name` that is ready.
async fn back(old: &Proc, since: Instant) -> Proc {
    loop {
        if let Some(p) = processes().remove(&old.name) {
            if (p.pid, p.starttime) != (old.pid, old.starttime)
                && alive(p.pid, p.starttime)
                && ready(p.health_addr()).await
            {
                return p;
            }
        }
        assert!(
            since.elapsed() < BACK_WITHIN,
            "{} not back and ready within {BACK_WITHIN:?} of its SIGKILL: {:?}",
            old.name,
            processes().get(&old.name)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Connect through nginx until the handshake lands on edge `edge` (`Some`) or on any other
/// edge (`None` = not `avoid`).
async fn connect_on(url: &str, token: &str, edge: Option<&str>, avoid: &str) -> Client {
    for _ in 0..40 {
        let c = Client::connect(url, token).await;
        if edge.map_or(c.edge != avoid, |e| c.edge == e) {
            return c;
        }
        c.close().await;
    }
    panic!("no handshake landed on edge {edge:?} (avoiding {avoid}) in 40 tries");
}

/// `dm.send`, resent with the same `client_msg_id` (idempotent) while the platform answers
/// `unavailable` or not at all, until `deadline`.
async fn send_dm(c: &mut Client, conv: Id, cmid: &str, text: &str, deadline: Instant) {
    let frame =
        json!({"type": "dm.send", "conversation_id": conv, "client_msg_id": cmid, "text": text});
    loop {
        let rid = c.sdk().send_json(frame.clone()).await.expect("ws send");
        match c.sdk().reply_within(&rid, Duration::from_secs(5)).await {
            Ok(ServerFrame::Reply { .. }) => return,
            Ok(ServerFrame::Error {
                code: ErrorCode::Unavailable,
                ..
            })
            | Err(client::Error::Timeout) => {}
            other => panic!("dm.send {cmid}: {other:?}"),
        }
        assert!(
            Instant::now() < deadline,
            "dm.send {cmid} not accepted in time"
        );
    }
}

async fn delivered(c: &mut Client, text: &str, deadline: Instant) {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.event(left).await {
            Some(Event::DmMessage { message }) if message.text == text => return,
            Some(_) => {}
            None => panic!("{text:?} not delivered in time"),
        }
    }
}

#[tokio::test]
async fn killed_worker_and_edge_come_back_ready_and_serving() {
    let stack = e2e::stack();
    let before = processes();

    // `--workers dms=2`: both worker-dms processes are listed (stack.json and state.json), with
    // their own health ports, and ready.
    let dms: Vec<&Proc> = {
        let mut v: Vec<&Proc> = before
            .values()
            .filter(|p| p.kind == "worker" && p.role == "dms")
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    };
    assert_eq!(
        dms.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        ["worker-dms", "worker-dms-1"],
        "`./sb test` runs two worker-dms processes: {before:?}"
    );
    assert_ne!(dms[0].addr, dms[1].addr);
    for p in &dms {
        assert!(
            stack
                .services
                .iter()
                .any(|s| s.name == p.name && s.health_addr == p.health_addr()),
            "stack.json lists {}: {:?}",
            p.name,
            stack.services
        );
        assert!(ready(p.health_addr()).await, "{} ready", p.name);
    }
    assert!(
        before
            .get("supervisor")
            .is_some_and(|s| alive(s.pid, s.starttime)),
        "the launcher's supervisor runs"
    );

    // Two users who may write to each other, before anything is killed.
    let http = Http::new(&format!("http://{}", stack.nginx[0]));
    let (ann, ann_token) = common::signup_and_login(&http).await;
    let (bob, bob_token) = common::signup_and_login(&http).await;
    let url = format!("ws://{}/ws", stack.nginx[0]);
    let mut a = Client::connect(&url, &ann_token).await;
    let mut b = Client::connect(&url, &bob_token).await;
    let conv = common::befriend_over_ws(&mut a, &mut b, ann, bob).await;
    a.close().await;
    b.close().await;

    // SIGKILL one worker-dms (its sibling keeps the role's group alive) and one edge.
    let worker = dms[0].clone();
    let edge = before
        .get("edge-0")
        .expect("state.json lists edge-0")
        .clone();
    let t0 = Instant::now();
    sigkill(&worker);
    sigkill(&edge);

    let w = back(&worker, t0).await;
    let e = back(&edge, t0).await;
    let back_after = t0.elapsed();
    assert!(
        w.restarts > worker.restarts && e.restarts > edge.restarts,
        "the restarts are counted: {w:?} {e:?}"
    );
    assert_eq!(
        (e.addr.as_str(), e.health_addr()),
        (edge.addr.as_str(), edge.health_addr()),
        "the edge keeps its ports (nginx's upstream entries)"
    );

    // Serving: Ann on the restarted edge (its id is the same; its new epoch is its own business),
    // Bob on another one; a DM each way, delivered live.
    let deadline = t0 + SERVING_WITHIN;
    let mut a = connect_on(&url, &ann_token, Some(&edge.name), "").await;
    let mut b = connect_on(&url, &bob_token, None, &edge.name).await;
    let to_bob = unique("after the restart");
    send_dm(&mut a, conv, "r1", &to_bob, deadline).await;
    delivered(&mut b, &to_bob, deadline).await;
    let to_ann = unique("and back");
    send_dm(&mut b, conv, "r2", &to_ann, deadline).await;
    delivered(&mut a, &to_ann, deadline).await;
    let serving_after = t0.elapsed();
    println!(
        "worker {} and edge {} SIGKILLed: back and ready after {back_after:?}, a DM both ways after {serving_after:?}",
        worker.name, edge.name
    );
    assert!(serving_after < SERVING_WITHIN);
    a.close().await;
    b.close().await;
}
