//! `connections`: open N authenticated WebSockets (several per account), hold them for a
//! duration, and report how fast they opened, what failed and what each cost the edges.

use crate::backlog::{backlog, Peak, Scraper};
use crate::cli::ConnectionsArgs;
use crate::conns::HoldPlan;
use crate::hist::{Hist, Percentiles};
use crate::report::{kv, memory, pct, Report, Rows};
use crate::{fleet, procs, say, Result, Setup};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ConnectionsResult {
    pub requested: u64,
    pub opened: u64,
    pub failed: u64,
    /// Still open when the hold ended.
    pub held_at_end: u64,
    /// Closed by the server or broken while held.
    pub dropped: u64,
    pub failures: BTreeMap<String, u64>,
    pub per_edge: BTreeMap<String, u64>,
    /// First attempt → last successful handshake.
    pub connect_secs: f64,
    /// Opened / connect_secs.
    pub connect_rate_per_s: f64,
    /// One handshake: TCP + upgrade + session check through Kafka and the auth worker.
    pub handshake: Percentiles,
    pub hold_secs: u64,
    pub processes: usize,
}

impl Rows for ConnectionsResult {
    fn rows(&self) -> Vec<(String, String)> {
        vec![
            (
                "connections held / requested".into(),
                format!("{} / {}", self.held_at_end, self.requested),
            ),
            (
                "opened / failed / dropped while held".into(),
                format!("{} / {} / {}", self.opened, self.failed, self.dropped),
            ),
            ("failures by reason".into(), kv(&self.failures)),
            (
                "connect+auth rate".into(),
                format!(
                    "{:.0}/s ({} in {:.1} s)",
                    self.connect_rate_per_s, self.opened, self.connect_secs
                ),
            ),
            (
                "handshake p50/p90/p99/p99.9/max".into(),
                pct(&self.handshake),
            ),
            ("sockets per edge".into(), kv(&self.per_edge)),
            ("held for".into(), format!("{} s", self.hold_secs)),
            (
                "load generator processes".into(),
                self.processes.to_string(),
            ),
        ]
    }
}

pub async fn run(a: ConnectionsArgs) -> Result<Report<ConnectionsResult>> {
    let c = &a.common;
    let started = crate::now_unix_s();
    let setup = Setup::new(c)?;
    let n = a.connections;
    let per_user = a.fleet.per_user.max(1);
    let (sessions, accounts) = setup.accounts.ensure(n.div_ceil(per_user)).await?;
    let processes = a.fleet.processes_for(n);
    let plan = HoldPlan {
        targets: setup.targets.clone(),
        range: 0..n,
        per_user,
        user_base: 0,
        tokens: sessions.iter().map(|s| s.token.clone()).collect(),
        source_addrs: c.source_addrs,
        concurrency: a.fleet.concurrency,
        connect_rate: a.fleet.connect_rate,
        connect_timeout_ms: c.connect_timeout * 1000,
        broadcast_run: None,
    };
    let before = procs::sample(&setup.components);
    let scraper = Scraper::new(&setup.components);
    let base = scraper.counts().await;
    let mut peak = Peak::default();
    say(
        c.quiet,
        format!(
            "connecting {n} sockets from {processes} process(es) via {}",
            crate::via(c.direct)
        ),
    );
    let holders = fleet::start(&plan, processes, a.fleet.child_exe.clone()).await?;
    let t0 = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut prev = 0;
    loop {
        tick.tick().await;
        let s = fleet::total(&holders);
        let bl = backlog(&base, &scraper.counts().await);
        peak.update(&bl);
        say(
            c.quiet,
            format!(
                "t={:>4.0}s open {:>7} (+{:>6}/s) failed {:>6} dropped {:>5} kafka backlog {}",
                t0.elapsed().as_secs_f64(),
                s.open,
                s.opened - prev,
                s.failed,
                s.dropped,
                Peak::summary(&bl)
            ),
        );
        prev = s.opened;
        if s.ready {
            break;
        }
    }
    let connected = procs::sample(&setup.components);
    // Let the edges settle (presence events, allocator) before reading their memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let settled = procs::sample(&setup.components);
    let hold_start = Instant::now();
    while hold_start.elapsed() < Duration::from_secs(a.duration) {
        tick.tick().await;
        let s = fleet::total(&holders);
        say(
            c.quiet,
            format!(
                "t={:>4.0}s holding {:>7} dropped {:>5}",
                t0.elapsed().as_secs_f64(),
                s.open,
                s.dropped
            ),
        );
    }
    let end = procs::sample(&setup.components);
    let out = fleet::finish_all(holders).await;
    let s = &out.snapshot;
    let result = ConnectionsResult {
        requested: n as u64,
        opened: s.opened,
        failed: s.failed,
        held_at_end: s.opened - s.dropped,
        dropped: s.dropped,
        failures: out.failures.clone(),
        per_edge: out.per_edge.clone(),
        connect_secs: (out.connect_secs * 100.0).round() / 100.0,
        connect_rate_per_s: if out.connect_secs > 0.0 {
            (s.opened as f64 / out.connect_secs).round()
        } else {
            0.0
        },
        handshake: Hist::from_data(&out.connect_us).percentiles(),
        hold_secs: a.duration,
        processes,
    };
    let mut cpu = BTreeMap::new();
    cpu.insert(
        "connect phase".to_string(),
        procs::usage(&before, &connected),
    );
    cpu.insert("idle hold".to_string(), procs::usage(&settled, &end));
    Ok(Report {
        scenario: "connections".into(),
        command: crate::command_line(),
        started_at_unix_s: started,
        via: crate::via(c.direct),
        accounts,
        memory: memory(
            &setup.components,
            &before,
            &settled,
            &out.per_edge,
            s.opened,
            &setup.targets,
        ),
        result,
        cpu,
        kafka_backlog_peak: peak.0,
        load_average: [setup.loadavg_start.clone(), crate::loadavg()],
    })
}
