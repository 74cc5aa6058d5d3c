//! `broadcast`: N connected clients; one sender sends `count` broadcasts, `interval` apart; each
//! carries its send time, and every client records when it arrived. Reports the fan-out time
//! (send → received, over every client and broadcast) and how many receptions never happened.

use crate::backlog::{backlog, Peak, Scraper};
use crate::cli::BroadcastArgs;
use crate::conns::{broadcast_text, HoldPlan};
use crate::hist::{Hist, Percentiles};
use crate::net::{connect_socket, source_addr};
use crate::report::{kv, memory, pct, Report, Rows};
use crate::{fleet, procs, say, Error, Result, Setup};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use topics::{Request, ServerFrame};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct BroadcastResult {
    pub clients_requested: u64,
    pub clients_connected: u64,
    pub connect_failures: BTreeMap<String, u64>,
    pub broadcasts_sent: u32,
    /// Broadcasts the platform accepted (`ok` reply to the sender).
    pub broadcasts_accepted: u32,
    /// Refused broadcasts, by error code.
    pub broadcasts_refused: BTreeMap<String, u64>,
    /// sender → `ok` reply.
    pub accept: Percentiles,
    /// connected clients × accepted broadcasts.
    pub expected_receptions: u64,
    pub receptions: u64,
    pub never_received: u64,
    pub duplicates: u64,
    /// Receptions per broadcast number.
    pub per_broadcast: BTreeMap<u32, u64>,
    /// Send → received at a client, over every client and broadcast.
    pub fanout: Percentiles,
    pub clients_dropped: u64,
    pub processes: usize,
}

impl Rows for BroadcastResult {
    fn rows(&self) -> Vec<(String, String)> {
        vec![
            (
                "clients connected / requested".into(),
                format!("{} / {}", self.clients_connected, self.clients_requested),
            ),
            ("connect failures".into(), kv(&self.connect_failures)),
            (
                "broadcasts sent / accepted".into(),
                format!("{} / {}", self.broadcasts_sent, self.broadcasts_accepted),
            ),
            ("broadcasts refused".into(), kv(&self.broadcasts_refused)),
            (
                "receptions / expected".into(),
                format!("{} / {}", self.receptions, self.expected_receptions),
            ),
            ("never received".into(), self.never_received.to_string()),
            ("duplicates".into(), self.duplicates.to_string()),
            (
                "fan-out send→received p50/p90/p99/p99.9/max".into(),
                pct(&self.fanout),
            ),
            ("sender send→ok".into(), pct(&self.accept)),
            (
                "clients dropped meanwhile".into(),
                self.clients_dropped.to_string(),
            ),
            (
                "load generator processes".into(),
                self.processes.to_string(),
            ),
        ]
    }
}

/// What the sender saw of one broadcast: accepted (with its ack time) or refused.
type Sent = Result<Duration, String>;

/// Send `count` broadcasts of run `run` from one socket, `interval` apart.
async fn send_all(
    target: String,
    token: String,
    run: String,
    count: u32,
    interval: Duration,
    timeout: Duration,
) -> Result<Vec<Sent>> {
    let mut s = connect_socket(&target, &token, source_addr(0, 1), timeout)
        .await
        .map_err(|e| Error::Setup(format!("broadcast sender could not connect: {e}")))?;
    let mut out = Vec::new();
    let mut tick = tokio::time::interval(interval);
    for k in 0..count {
        tick.tick().await;
        let t = Instant::now();
        let rid = s
            .send(Request::BroadcastSend {
                text: broadcast_text(&run, k),
            })
            .await
            .map_err(|e| Error::Setup(format!("broadcast send: {e}")))?;
        let answer = match s.reply_within(&rid, Duration::from_secs(10)).await {
            Ok(ServerFrame::Error { code, .. }) => Err(code.as_str().to_string()),
            Ok(_) => Ok(t.elapsed()),
            Err(client::Error::Timeout) => Err("no_answer".to_string()),
            Err(_) => Err("sender_socket_closed".to_string()),
        };
        out.push(answer);
    }
    Ok(out)
}

pub async fn run(a: BroadcastArgs) -> Result<Report<BroadcastResult>> {
    let c = &a.common;
    let started = crate::now_unix_s();
    let setup = Setup::new(c)?;
    let n = a.clients;
    let per_user = a.fleet.per_user.max(1);
    let (sessions, accounts) = setup.accounts.ensure(n.div_ceil(per_user).max(1)).await?;
    let run = format!("{:x}", crate::conns::unix_us());
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
        broadcast_run: Some(run.clone()),
    };
    let before = procs::sample(&setup.components);
    say(
        c.quiet,
        format!(
            "connecting {n} clients from {processes} process(es) via {}",
            crate::via(c.direct)
        ),
    );
    let holders = fleet::start(&plan, processes, a.fleet.child_exe.clone()).await?;
    let t0 = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tick.tick().await;
        let s = fleet::total(&holders);
        say(
            c.quiet,
            format!(
                "t={:>4.0}s open {:>7} failed {:>6}",
                t0.elapsed().as_secs_f64(),
                s.open,
                s.failed
            ),
        );
        if s.ready {
            break;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let connected = fleet::total(&holders);
    let settled = procs::sample(&setup.components);
    let scraper = Scraper::new(&setup.components);
    let base = scraper.counts().await;
    let mut peak = Peak::default();
    let interval = Duration::from_millis(a.interval_ms.max(1));
    let mut sender = tokio::spawn(send_all(
        setup.targets[0].clone(),
        sessions[0].token.clone(),
        run,
        a.count,
        interval,
        Duration::from_secs(c.connect_timeout),
    ));
    // Wait for every broadcast to be sent, then for every open client to have each accepted one.
    let hard_stop = Instant::now()
        + interval * a.count
        + Duration::from_secs(a.duration)
        + Duration::from_secs(10);
    let mut sent: Option<Vec<Sent>> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut last_print = Instant::now();
    loop {
        tokio::select! {
            r = &mut sender, if sent.is_none() => {
                let r = r.map_err(|e| Error::Setup(format!("sender task: {e}")))??;
                sent = Some(r);
            }
            _ = tick.tick() => {}
        }
        let s = fleet::total(&holders);
        if last_print.elapsed() >= Duration::from_secs(1) {
            last_print = Instant::now();
            let bl = backlog(&base, &scraper.counts().await);
            peak.update(&bl);
            say(
                c.quiet,
                format!(
                    "t={:>4.0}s received {:>8} open {:>7} dropped {:>5} kafka backlog {}",
                    t0.elapsed().as_secs_f64(),
                    s.broadcasts_received,
                    s.open,
                    s.dropped,
                    Peak::summary(&bl)
                ),
            );
        }
        if let Some(sent) = &sent {
            let accepted = sent.iter().filter(|r| r.is_ok()).count() as u64;
            if s.broadcasts_received >= accepted * s.open || Instant::now() >= hard_stop {
                break;
            }
        }
        if Instant::now() >= hard_stop {
            break;
        }
    }
    let end = procs::sample(&setup.components);
    let out = fleet::finish_all(holders).await;
    let sent = sent.unwrap_or_default();
    let mut accept = Hist::default();
    let mut refused = BTreeMap::new();
    for r in &sent {
        match r {
            Ok(d) => accept.record(*d),
            Err(code) => *refused.entry(code.clone()).or_default() += 1,
        }
    }
    let accepted = sent.iter().filter(|r| r.is_ok()).count() as u32;
    let expected = connected.opened * u64::from(accepted);
    let s = &out.snapshot;
    let result = BroadcastResult {
        clients_requested: n as u64,
        clients_connected: connected.opened,
        connect_failures: out
            .failures
            .iter()
            .filter(|(k, _)| !k.starts_with("dropped"))
            .map(|(k, v)| (k.clone(), *v))
            .collect(),
        broadcasts_sent: sent.len() as u32,
        broadcasts_accepted: accepted,
        broadcasts_refused: refused,
        accept: accept.percentiles(),
        expected_receptions: expected,
        receptions: s.broadcasts_received,
        never_received: expected.saturating_sub(s.broadcasts_received),
        duplicates: out.broadcast_duplicates,
        per_broadcast: out.broadcast_rounds.clone(),
        fanout: Hist::from_data(&out.fanout_us).percentiles(),
        clients_dropped: s.dropped,
        processes,
    };
    let mut cpu = BTreeMap::new();
    cpu.insert("fan-out".to_string(), procs::usage(&settled, &end));
    Ok(Report {
        scenario: "broadcast".into(),
        command: crate::command_line(),
        started_at_unix_s: started,
        via: crate::via(c.direct),
        accounts,
        memory: memory(
            &setup.components,
            &before,
            &settled,
            &out.per_edge,
            connected.opened,
            &setup.targets,
        ),
        result,
        cpu,
        kafka_backlog_peak: peak.0,
        load_average: [setup.loadavg_start.clone(), crate::loadavg()],
    })
}
