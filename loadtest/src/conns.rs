//! Opening and holding many authenticated WebSockets (the `connections` and `broadcast`
//! scenarios). One task per socket: connect under a concurrency and rate cap, then read until
//! told to stop, answering the edge's pings (tungstenite queues the pong while reading) and
//! timing every broadcast of this run that arrives.

use crate::hist::{Hist, HistData};
use crate::net::{connect_ws, source_addr};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use topics::{Event, ServerFrame};

/// What one holder (a task in this process, or a child process) is asked to do.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HoldPlan {
    /// `host:port` of nginx instances or edges; socket `i` uses `targets[i % len]`.
    pub targets: Vec<String>,
    /// Sockets `range` of the whole run; socket `i` belongs to user `i / per_user`.
    pub range: Range<usize>,
    pub per_user: usize,
    /// Tokens of users `user_base ..`.
    pub user_base: usize,
    pub tokens: Vec<String>,
    pub source_addrs: u8,
    pub concurrency: usize,
    /// New sockets per second for this holder (0: no cap).
    pub connect_rate: f64,
    pub connect_timeout_ms: u64,
    /// Broadcast texts of this run start with `lt-bcast <run> `.
    pub broadcast_run: Option<String>,
}

/// Counters a holder updates as it goes (shown every second).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub attempted: u64,
    pub opened: u64,
    pub failed: u64,
    /// Sockets the server closed (or that broke) while held.
    pub dropped: u64,
    pub open: u64,
    pub broadcasts_received: u64,
    /// Every socket of the plan has connected or failed.
    pub ready: bool,
}

#[derive(Default)]
pub struct Live {
    attempted: AtomicU64,
    opened: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    open: AtomicU64,
    broadcasts: AtomicU64,
    ready: AtomicBool,
}

impl Live {
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            attempted: self.attempted.load(Ordering::Relaxed),
            opened: self.opened.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            open: self.open.load(Ordering::Relaxed),
            broadcasts_received: self.broadcasts.load(Ordering::Relaxed),
            ready: self.ready.load(Ordering::Relaxed),
        }
    }
}

/// Everything a holder measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HoldOutcome {
    pub snapshot: Snapshot,
    /// Handshake failures and drops, by reason.
    pub failures: BTreeMap<String, u64>,
    /// Sockets opened per edge (`x-switchboard-edge`).
    pub per_edge: BTreeMap<String, u64>,
    /// TCP connect + upgrade + session check, µs.
    pub connect_us: HistData,
    /// Seconds from the first attempt to the last successful handshake.
    pub connect_secs: f64,
    /// Broadcast sent → received, µs (sender's clock; one machine).
    pub fanout_us: HistData,
    /// Receptions per broadcast number.
    pub broadcast_rounds: BTreeMap<u32, u64>,
    pub broadcast_duplicates: u64,
}

#[derive(Default)]
struct Shared {
    failures: BTreeMap<String, u64>,
    per_edge: BTreeMap<String, u64>,
    connect: Hist,
    fanout: Hist,
    rounds: BTreeMap<u32, u64>,
    duplicates: u64,
    last_open: Option<Instant>,
}

/// Microseconds since the Unix epoch (broadcast timestamps cross processes).
pub fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The text of broadcast `k` of run `run`.
pub fn broadcast_text(run: &str, k: u32) -> String {
    format!("lt-bcast {run} {k} {}", unix_us())
}

/// (round, sent µs) of a broadcast text of run `run`.
pub fn parse_broadcast(text: &str, run: &str) -> Option<(u32, u64)> {
    let mut it = text.split(' ');
    if it.next()? != "lt-bcast" || it.next()? != run {
        return None;
    }
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// Open and hold every socket of `plan` until `stop`; then report.
pub async fn hold(plan: HoldPlan, live: Arc<Live>, stop: CancellationToken) -> HoldOutcome {
    let plan = Arc::new(plan);
    let shared = Arc::new(Mutex::new(Shared::default()));
    let sem = Arc::new(Semaphore::new(plan.concurrency.max(1)));
    let remaining = Arc::new(AtomicU64::new(plan.range.len() as u64));
    if plan.range.is_empty() {
        live.ready.store(true, Ordering::Relaxed);
    }
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (n, i) in plan.range.clone().enumerate() {
        if stop.is_cancelled() {
            break;
        }
        if plan.connect_rate > 0.0 {
            let due = t0 + Duration::from_secs_f64(n as f64 / plan.connect_rate);
            tokio::select! {
                _ = tokio::time::sleep_until(due.into()) => {}
                _ = stop.cancelled() => break,
            }
        }
        // Take the permit before spawning, so that 100k idle tasks are never queued at once.
        let permit = tokio::select! {
            p = sem.clone().acquire_owned() => p.expect("semaphore open"),
            _ = stop.cancelled() => break,
        };
        let (plan, shared, live, stop, remaining) = (
            plan.clone(),
            shared.clone(),
            live.clone(),
            stop.clone(),
            remaining.clone(),
        );
        tasks.spawn(async move {
            live.attempted.fetch_add(1, Ordering::Relaxed);
            let token = &plan.tokens[i / plan.per_user.max(1) - plan.user_base];
            let target = &plan.targets[i % plan.targets.len()];
            let started = Instant::now();
            let res = connect_ws(
                target,
                token,
                source_addr(i, plan.source_addrs),
                Duration::from_millis(plan.connect_timeout_ms),
            )
            .await;
            drop(permit);
            let opened = match res {
                Ok(o) => {
                    let mut s = shared.lock().expect("not poisoned");
                    s.connect.record(started.elapsed());
                    *s.per_edge.entry(o.edge).or_default() += 1;
                    s.last_open = Some(Instant::now());
                    live.opened.fetch_add(1, Ordering::Relaxed);
                    live.open.fetch_add(1, Ordering::Relaxed);
                    Some(o.ws)
                }
                Err(reason) => {
                    *shared
                        .lock()
                        .expect("not poisoned")
                        .failures
                        .entry(reason)
                        .or_default() += 1;
                    live.failed.fetch_add(1, Ordering::Relaxed);
                    None
                }
            };
            if remaining.fetch_sub(1, Ordering::Relaxed) == 1 {
                live.ready.store(true, Ordering::Relaxed);
            }
            let Some(mut ws) = opened else { return };
            let mut seen: u64 = 0; // broadcast rounds received, as bits
            let why = loop {
                let m = tokio::select! {
                    m = ws.next() => m,
                    _ = stop.cancelled() => break None,
                };
                match m {
                    Some(Ok(Message::Text(t))) => {
                        let Some(run) = plan.broadcast_run.as_deref() else {
                            continue;
                        };
                        let now = unix_us();
                        if let Ok(ServerFrame::Event {
                            data: Event::Broadcast { text, .. },
                        }) = serde_json::from_str::<ServerFrame>(&t)
                        {
                            if let Some((k, sent)) = parse_broadcast(&text, run) {
                                let bit = 1u64 << (k % 64);
                                let mut s = shared.lock().expect("not poisoned");
                                if seen & bit != 0 {
                                    s.duplicates += 1;
                                } else {
                                    seen |= bit;
                                    s.fanout.record_us(now.saturating_sub(sent));
                                    *s.rounds.entry(k).or_default() += 1;
                                    live.broadcasts.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                    }
                    Some(Ok(Message::Close(c))) => {
                        break Some(format!(
                            "dropped_close_{}",
                            c.map_or(1005, |c| u16::from(c.code))
                        ))
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break Some(format!("dropped_{}", crate::net::reason(&e))),
                    None => break Some("dropped_eof".to_string()),
                }
            };
            live.open.fetch_sub(1, Ordering::Relaxed);
            if let Some(reason) = why {
                live.dropped.fetch_add(1, Ordering::Relaxed);
                *shared
                    .lock()
                    .expect("not poisoned")
                    .failures
                    .entry(reason)
                    .or_default() += 1;
            }
            // Dropping the socket sends FIN; the edge unregisters it quietly.
        });
        // Reap finished tasks as we go so the set does not grow with failures.
        while tasks.try_join_next().is_some() {}
    }
    if stop.is_cancelled() {
        live.ready.store(true, Ordering::Relaxed);
    }
    stop.cancelled().await;
    let drain = tokio::time::timeout(Duration::from_secs(30), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drain.is_err() {
        tasks.abort_all();
    }
    let s = shared.lock().expect("not poisoned");
    HoldOutcome {
        snapshot: live.snapshot(),
        failures: s.failures.clone(),
        per_edge: s.per_edge.clone(),
        connect_us: s.connect.data(),
        connect_secs: s
            .last_open
            .map_or(0.0, |l| l.duration_since(t0).as_secs_f64()),
        fanout_us: s.fanout.data(),
        broadcast_rounds: s.rounds.clone(),
        broadcast_duplicates: s.duplicates,
    }
}

/// Outcomes of several holders as one.
pub fn merge(outs: &[HoldOutcome]) -> HoldOutcome {
    let mut m = HoldOutcome::default();
    let (mut connect, mut fanout) = (Hist::default(), Hist::default());
    for o in outs {
        let (a, b) = (&mut m.snapshot, &o.snapshot);
        a.attempted += b.attempted;
        a.opened += b.opened;
        a.failed += b.failed;
        a.dropped += b.dropped;
        a.open += b.open;
        a.broadcasts_received += b.broadcasts_received;
        for (k, v) in &o.failures {
            *m.failures.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &o.per_edge {
            *m.per_edge.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &o.broadcast_rounds {
            *m.broadcast_rounds.entry(*k).or_default() += v;
        }
        connect.merge(&Hist::from_data(&o.connect_us));
        fanout.merge(&Hist::from_data(&o.fanout_us));
        m.connect_secs = m.connect_secs.max(o.connect_secs);
        m.broadcast_duplicates += o.broadcast_duplicates;
    }
    m.snapshot.ready = outs.iter().all(|o| o.snapshot.ready);
    m.connect_us = connect.data();
    m.fanout_us = fanout.data();
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_texts_round_trip() {
        let t = broadcast_text("r1", 3);
        let (k, sent) = parse_broadcast(&t, "r1").unwrap();
        assert_eq!(k, 3);
        assert!(sent > 0 && sent <= unix_us());
        assert_eq!(parse_broadcast(&t, "r2"), None);
        assert_eq!(parse_broadcast("hello", "r1"), None);
        assert_eq!(parse_broadcast("lt-bcast r1 x 5", "r1"), None);
    }

    #[test]
    fn merges_outcomes() {
        let mut h = Hist::default();
        h.record_us(1000);
        let a = HoldOutcome {
            snapshot: Snapshot {
                opened: 2,
                ready: true,
                ..Default::default()
            },
            failures: [("timeout".to_string(), 1)].into(),
            per_edge: [("edge-0".to_string(), 2)].into(),
            connect_us: h.data(),
            connect_secs: 1.5,
            broadcast_rounds: [(0, 2)].into(),
            ..Default::default()
        };
        let mut b = a.clone();
        b.snapshot.ready = false;
        b.connect_secs = 2.0;
        let m = merge(&[a, b]);
        assert_eq!(m.snapshot.opened, 4);
        assert!(!m.snapshot.ready);
        assert_eq!(m.failures["timeout"], 2);
        assert_eq!(m.per_edge["edge-0"], 4);
        assert_eq!(m.broadcast_rounds[&0], 4);
        assert_eq!(Hist::from_data(&m.connect_us).count(), 2);
        assert_eq!(m.connect_secs, 2.0);
    }

    #[tokio::test]
    async fn counts_failed_handshakes_and_stops() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        drop(l);
        let plan = HoldPlan {
            targets: vec![addr],
            range: 0..3,
            per_user: 2,
            user_base: 0,
            tokens: vec!["a".into(), "b".into()],
            source_addrs: 0,
            concurrency: 2,
            connect_rate: 100.0,
            connect_timeout_ms: 2000,
            broadcast_run: None,
        };
        let live = Arc::new(Live::default());
        let stop = CancellationToken::new();
        let task = tokio::spawn(hold(plan, live.clone(), stop.clone()));
        while !live.snapshot().ready || live.snapshot().failed < 3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.cancel();
        let out = task.await.unwrap();
        assert_eq!(out.snapshot.failed, 3);
        assert_eq!(out.failures["io_connection_refused"], 3);
        assert_eq!(out.snapshot.opened, 0);
    }
}
