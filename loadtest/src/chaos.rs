//! `chaos`: P pairs of clients that behave like the web client — reconnect with backoff through
//! either nginx, catch up with `dm.sync` from the newest sequence they hold, resend what was not
//! acknowledged with the same `client_msg_id` — exchange DMs at a steady rate while platform
//! processes are killed with SIGKILL one after another (an edge, each worker role, the router, an
//! nginx, a Redis master, a MariaDB shard primary, a Kafka broker). After each kill the run waits
//! until the process is back (the launcher's supervisor restarts it) and every client has sent a
//! message that was acknowledged and reached its peer again; then the next one. At the end every
//! conversation is read afresh (`dm.sync` from before the run) and each message is accounted for
//! ([`crate::resilient::tally`]): lost, duplicated, out of order, unanswered, not caught up, and
//! per kill the time clients took to recover.

use crate::cli::ChaosArgs;
use crate::net::{connect_socket, source_addr, Ws};
use crate::report::{kv, Report, Rows};
use crate::resilient::{self, Backoff, ClientLog, Outbox, PairRun, PhaseTally, Sent, Stored};
use crate::{say, Error, Result, Setup};
use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use topics::{ClientFrame, ErrorCode, Event, Id, Request, Response, ServerFrame};

/// The faults of `--kill all`, in order.
pub const ALL: &[&str] = &[
    "edge",
    "workers",
    "router",
    "nginx",
    "redis-master",
    "mariadb-primary",
    "kafka",
];

/// One process in the launcher's `state.json`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Proc {
    pub name: String,
    pub kind: String,
    #[serde(default)]
    pub role: String,
    pub pid: u32,
    #[serde(default)]
    pub starttime: u64,
    #[serde(default)]
    pub addr: String,
    #[serde(default)]
    pub port: u16,
}

#[derive(Deserialize)]
struct StateFile {
    #[serde(default)]
    components: Vec<Proc>,
}

fn read_state(path: &Path) -> Result<Vec<Proc>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::Setup(format!(
            "{}: {e} (start the platform with ./sb up)",
            path.display()
        ))
    })?;
    serde_json::from_str::<StateFile>(&text)
        .map(|s| s.components)
        .map_err(|e| Error::Setup(format!("{}: {e}", path.display())))
}

/// The process `pid` runs and is the one that started at `starttime` (PIDs are reused).
pub fn alive(pid: u32, starttime: u64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(close) = stat.rfind(')') else {
        return false;
    };
    let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    !matches!(rest.first(), Some(&"Z") | Some(&"X"))
        && (starttime == 0 || rest.get(19).and_then(|s| s.parse().ok()) == Some(starttime))
}

/// The faults named on the command line, expanded: `workers` is one per worker role, `all` is
/// [`ALL`].
pub fn expand(spec: &str, procs: &[Proc]) -> Vec<String> {
    let mut out = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match item {
            "all" => out.extend(expand(&ALL.join(","), procs)),
            "workers" => {
                let mut roles: Vec<String> = procs
                    .iter()
                    .filter(|p| p.kind == "worker")
                    .map(|p| format!("worker-{}", p.role))
                    .collect();
                roles.sort();
                roles.dedup();
                out.extend(roles);
            }
            other => out.push(other.to_string()),
        }
    }
    out
}

/// `ROLE` of the Redis node on `port`: "master", "slave", or None (down).
pub fn redis_role(port: u16) -> Option<String> {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(500),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    s.write_all(b"ROLE\r\n").ok()?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).ok()?; // *3
    line.clear();
    r.read_line(&mut line).ok()?; // $6
    line.clear();
    r.read_line(&mut line).ok()?; // master
    Some(line.trim().to_string())
}

/// The process a fault kills, found in the state file now (a Redis master is whichever node is
/// master at this moment).
pub fn victim(fault: &str, procs: &[Proc]) -> std::result::Result<Proc, String> {
    let mut sorted: Vec<&Proc> = procs.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let first =
        |pred: &dyn Fn(&Proc) -> bool| sorted.iter().find(|p| pred(p)).map(|p| (*p).clone());
    let found = match fault {
        // a process by its name first (`worker-dms-1`, `edge-1`, `redis-3`)
        f if procs.iter().any(|p| p.name == f) => first(&|p| p.name == f),
        "edge" => first(&|p| p.kind == "edge"),
        "router" => first(&|p| p.kind == "router"),
        "nginx" => first(&|p| p.kind == "nginx"),
        // an asynchronous shard's primary, or a Galera shard's node 0 (the writer while it is
        // Synced; `./sb up --shard-replication galera`): the workers move to node 1, and the node
        // the supervisor starts again rejoins the cluster
        "mariadb-primary" => first(&|p| {
            p.kind == "mariadb"
                && (p.role == "primary" || (p.role == "node" && p.name.ends_with("-node0")))
        }),
        "redis-master" => {
            first(&|p| p.kind == "redis" && redis_role(p.port).as_deref() == Some("master"))
        }
        "kafka" => {
            let brokers = sorted.iter().filter(|p| p.kind == "kafka").count();
            if brokers < 3 {
                return Err(format!(
                    "{brokers} Kafka broker(s): killing one stops the platform (start it with --kafka-brokers 3)"
                ));
            }
            sorted
                .iter()
                .rev()
                .find(|p| p.kind == "kafka")
                .map(|p| (*p).clone())
        }
        f => f
            .strip_prefix("worker-")
            .and_then(|role| first(&|p| p.kind == "worker" && p.role == role)),
    };
    found.ok_or_else(|| format!("no process for {fault} in the state file"))
}

// ---------------------------------------------------------------- the clients

/// What every client shares with the conductor.
struct Shared {
    /// The phase messages typed now belong to (0 before the first fault, i after fault i).
    phase: AtomicUsize,
    clients: Vec<ClientLive>,
}

#[derive(Default)]
struct ClientLive {
    edge: Mutex<String>,
    target: AtomicUsize,
    connected: AtomicBool,
    in_flight: AtomicU64,
    outbox: AtomicU64,
    sent: AtomicU64,
    acked: AtomicU64,
    /// Highest phase of a message of this client that was acknowledged / reached the peer.
    acked_phase: AtomicI64,
    arrived_phase: AtomicI64,
}

impl ClientLive {
    fn new() -> ClientLive {
        ClientLive {
            acked_phase: AtomicI64::new(-1),
            arrived_phase: AtomicI64::new(-1),
            ..Default::default()
        }
    }

    fn recovered(&self, phase: usize) -> bool {
        let p = phase as i64;
        self.acked_phase.load(Ordering::Relaxed) >= p
            && self.arrived_phase.load(Ordering::Relaxed) >= p
    }
}

struct Plan {
    targets: Vec<String>,
    source_addrs: u8,
    connect_timeout: Duration,
    step: Duration,
    backoff: Backoff,
    answer_within: Duration,
    resend: bool,
    sync: bool,
    reconnect: bool,
    text_bytes: usize,
    run: String,
    pairs: usize,
}

/// One client: its account and conversation.
struct Me {
    i: usize,
    peer: usize,
    token: String,
    user: Id,
    conv: Id,
    base: u64,
}

/// The phase a message was typed in, written into its text (`p=<phase> …`) so that the peer
/// knows it without a lookup.
fn phase_of_text(text: &str) -> Option<usize> {
    text.strip_prefix("p=")?.split(' ').next()?.parse().ok()
}

fn frame(rid: String, request: Request) -> Message {
    let f = ClientFrame {
        rid: Some(rid),
        request,
    };
    Message::text(serde_json::to_string(&f).expect("a frame serialises"))
}

/// A catch-up in progress: the `rid` of its outstanding `dm.sync`.
struct Sync {
    rid: String,
}

#[allow(clippy::too_many_arguments)]
async fn client(
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    me: Me,
    first: Option<(Ws, String)>,
    t0: Instant,
    mut sending: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
) -> ClientLog {
    let live = &shared.clients[me.i];
    let mut log = ClientLog {
        user: me.user,
        view: resilient::View::new(me.base),
        ..Default::default()
    };
    let mut outbox = Outbox::new(plan.resend, plan.answer_within);
    let mut link = Link {
        ws: None,
        sync: None,
        opened_at: Instant::now(),
        attempt: 0,
        reconnect_at: None,
    };
    let mut connects: u64 = 0;
    let mut syncs: u64 = 0;
    let mut k: u64 = 0;
    let mut next = t0 + plan.step.mul_f64(me.i as f64 / (2 * plan.pairs) as f64);
    let pad = "x".repeat(plan.text_bytes.saturating_sub(40));
    if let Some((w, edge)) = first {
        link.ws = Some(w);
        *live.edge.lock().expect("not poisoned") = edge;
        live.connected.store(true, Ordering::Relaxed);
    }
    loop {
        if *stop.borrow() {
            break;
        }
        let now = Instant::now();
        // (Re)connect when due.
        if link.ws.is_none() && link.reconnect_at.is_some_and(|t| now >= t) {
            connects += 1;
            let target = (me.i + connects as usize) % plan.targets.len();
            let src = source_addr(me.i, plan.source_addrs);
            match connect_socket(&plan.targets[target], &me.token, src, plan.connect_timeout).await
            {
                Ok(s) => {
                    *live.edge.lock().expect("not poisoned") = s.edge().unwrap_or("?").to_string();
                    live.target.store(target, Ordering::Relaxed);
                    live.connected.store(true, Ordering::Relaxed);
                    link.ws = Some(s.into_inner());
                    link.opened_at = Instant::now();
                    link.reconnect_at = None;
                    log.reconnects += 1;
                    if plan.sync {
                        link.sync =
                            start_sync(link.ws.as_mut(), &log.view, me.conv, &mut syncs).await;
                    }
                }
                Err(_) => link.back_off(&plan, &me, 0),
            }
            continue;
        }
        // Type a message when due (one per wake; far behind, catch up by skipping).
        let is_sending = *sending.borrow();
        if is_sending && now >= next {
            let phase = shared.phase.load(Ordering::Relaxed);
            let cmid = format!("{}-{}-{k}", plan.run, me.i);
            let text = format!("p={phase} t={} {pad}", crate::conns::unix_us());
            outbox.add(k, cmid.clone(), text);
            log.sent.insert(
                cmid,
                Sent {
                    k,
                    phase,
                    typed: Some(now),
                    ..Default::default()
                },
            );
            live.sent.fetch_add(1, Ordering::Relaxed);
            k += 1;
            next += plan.step;
            if now > next + Duration::from_secs(1) {
                next = now + plan.step;
            }
        }
        // Write what is due, once caught up (the web client catches up, then flushes).
        if link.sync.is_none() {
            if let Some(w) = link.ws.as_mut() {
                let mut broken = false;
                for write in outbox.due(now) {
                    let rid = format!("s:{}", write.cmid);
                    let req = Request::DmSend {
                        conversation_id: me.conv,
                        client_msg_id: write.cmid,
                        text: write.text,
                        after_client_msg_id: write.after,
                    };
                    if w.send(frame(rid, req)).await.is_err() {
                        broken = true;
                        break;
                    }
                }
                if broken {
                    link.dropped(&mut outbox, live, &plan, &me);
                    continue;
                }
            }
        }
        live.in_flight
            .store(outbox.in_flight() as u64, Ordering::Relaxed);
        live.outbox.store(outbox.len() as u64, Ordering::Relaxed);
        // Sleep until the next thing to do, or a frame.
        let mut wake = now + Duration::from_secs(1);
        if is_sending {
            wake = wake.min(next);
        }
        if let Some(t) = outbox.next_due() {
            wake = wake.min(t.max(now));
        }
        if let Some(t) = link.reconnect_at {
            wake = wake.min(t);
        }
        let got = match link.ws.as_mut() {
            Some(w) => tokio::select! {
                m = w.next() => Some(m),
                _ = tokio::time::sleep_until(wake) => None,
                _ = sending.changed() => None,
                _ = stop.changed() => None,
            },
            None => {
                tokio::select! {
                    _ = tokio::time::sleep_until(wake) => {},
                    _ = sending.changed() => {},
                    _ = stop.changed() => {},
                }
                None
            }
        };
        let Some(m) = got else { continue };
        let text = match m {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                link.dropped(&mut outbox, live, &plan, &me);
                continue;
            }
            Some(Ok(_)) => continue,
        };
        let now = Instant::now();
        match serde_json::from_str::<ServerFrame>(&text) {
            Ok(ServerFrame::Reply {
                rid: Some(rid),
                data: Response::Sent { message, .. },
            }) if rid.starts_with("s:") => {
                let cmid = message.client_msg_id.clone();
                log.view.insert(message.seq, &cmid);
                if outbox.acked(&cmid) {
                    live.acked.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(s) = log.sent.get_mut(&cmid) {
                    match s.ack {
                        None => {
                            s.ack = Some((now, message.seq));
                            live.acked_phase
                                .fetch_max(s.phase as i64, Ordering::Relaxed);
                        }
                        Some((_, seq))
                            if seq != message.seq && !s.other_seqs.contains(&message.seq) =>
                        {
                            s.other_seqs.push(message.seq)
                        }
                        Some(_) => {}
                    }
                }
            }
            Ok(ServerFrame::Error {
                rid: Some(rid),
                code,
                ..
            }) if rid.starts_with("s:") => {
                let cmid = &rid[2..];
                let resend = matches!(
                    code,
                    ErrorCode::Unavailable | ErrorCode::RateLimited | ErrorCode::OutOfOrder
                );
                if resend {
                    if let Some(s) = log.sent.get_mut(cmid) {
                        *s.resent.entry(code.as_str().to_string()).or_default() += 1;
                    }
                }
                if matches!(code, ErrorCode::Unavailable | ErrorCode::RateLimited) {
                    outbox.later(cmid, now + Duration::from_secs(1));
                } else if code == ErrorCode::OutOfOrder {
                    outbox.out_of_order(cmid);
                } else if outbox.refused(cmid) {
                    if let Some(s) = log.sent.get_mut(cmid) {
                        s.refused = Some(code.as_str().to_string());
                    }
                }
            }
            Ok(ServerFrame::Reply {
                rid: Some(rid),
                data: Response::Synced { conversations },
            }) if link.sync.as_ref().is_some_and(|s| s.rid == rid) => {
                let mut more = false;
                for c in conversations
                    .iter()
                    .filter(|c| c.conversation_id == me.conv)
                {
                    for m in &c.messages {
                        take(&mut log, &shared, &me, m, now);
                    }
                    more |= c.more && !c.messages.is_empty();
                }
                link.sync = None;
                // Pages follow while the answer says `more` (a hole that stays, e.g. a sequence
                // never stored, is asked about again only when the next live message comes).
                if more {
                    link.sync = start_sync(link.ws.as_mut(), &log.view, me.conv, &mut syncs).await;
                }
            }
            Ok(ServerFrame::Error { rid: Some(rid), .. })
                if link.sync.as_ref().is_some_and(|s| s.rid == rid) =>
            {
                // Try the catch-up again (a busy platform answers `unavailable`).
                tokio::time::sleep(Duration::from_millis(500)).await;
                link.sync = start_sync(link.ws.as_mut(), &log.view, me.conv, &mut syncs).await;
            }
            Ok(ServerFrame::Event {
                data: Event::DmMessage { message },
            }) if message.conversation_id == me.conv => {
                take(&mut log, &shared, &me, &message, now);
                // A hole before a live message: fetch it (web/src/state.ts, fetchAfter).
                if plan.sync && link.sync.is_none() && log.view.has_gap() {
                    link.sync = start_sync(link.ws.as_mut(), &log.view, me.conv, &mut syncs).await;
                }
            }
            _ => {}
        }
        if link.ws.is_some() && link.sync.is_none() && live.in_flight.load(Ordering::Relaxed) > 0 {
            // answered frames change what is in flight
            live.in_flight
                .store(outbox.in_flight() as u64, Ordering::Relaxed);
        }
    }
    live.outbox.store(outbox.len() as u64, Ordering::Relaxed);
    if let Some(mut w) = link.ws {
        let _ = w.close(None).await;
    }
    log
}

/// Take in a message of the conversation (event or catch-up).
fn take(log: &mut ClientLog, shared: &Shared, me: &Me, m: &topics::frames::Message, now: Instant) {
    log.view.insert(m.seq, &m.client_msg_id);
    if m.author_id != Some(me.user) && !log.arrived.contains_key(&m.client_msg_id) {
        log.arrived.insert(m.client_msg_id.clone(), now);
        if let Some(p) = phase_of_text(&m.text) {
            shared.clients[me.peer]
                .arrived_phase
                .fetch_max(p as i64, Ordering::Relaxed);
        }
    }
}

/// Ask for everything after the contiguous part of the view.
async fn start_sync(
    ws: Option<&mut Ws>,
    view: &resilient::View,
    conv: Id,
    n: &mut u64,
) -> Option<Sync> {
    let w = ws?;
    *n += 1;
    let rid = format!("y:{n}");
    let req = Request::DmSync {
        since: BTreeMap::from([(conv, view.contiguous())]),
    };
    // A failed write shows up as a closed socket on the next read.
    let _ = w.send(frame(rid.clone(), req)).await;
    Some(Sync { rid })
}

/// A client's socket and what reconnecting it needs, as the web client keeps them
/// (web/src/conn.ts).
struct Link {
    ws: Option<Ws>,
    /// The catch-up in progress on this socket, if any.
    sync: Option<Sync>,
    opened_at: Instant,
    /// Attempts since the last stable socket: the backoff's exponent.
    attempt: u32,
    /// When to (re)connect; `None` while connected.
    reconnect_at: Option<Instant>,
}

impl Link {
    /// Wait out the backoff before the next attempt (its jitter drawn from the client, the
    /// attempt and `salt`).
    fn back_off(&mut self, plan: &Plan, me: &Me, salt: u64) {
        let r = resilient::unit((me.i as u64) << 32 | self.attempt as u64 | salt);
        self.reconnect_at = Some(Instant::now() + plan.backoff.delay(self.attempt, r));
        self.attempt = self.attempt.saturating_add(1);
    }

    /// The socket broke or closed: forget it and its catch-up, take back what was in flight, and
    /// plan the reconnection (never, without `plan.reconnect`).
    fn dropped(&mut self, outbox: &mut Outbox, live: &ClientLive, plan: &Plan, me: &Me) {
        self.ws = None;
        self.sync = None;
        outbox.disconnected();
        live.connected.store(false, Ordering::Relaxed);
        live.in_flight.store(0, Ordering::Relaxed);
        if !plan.reconnect {
            self.reconnect_at = Some(Instant::now() + Duration::from_secs(365 * 86_400));
            return;
        }
        // A socket that lived a while starts the backoff over (web/src/conn.ts).
        if self.opened_at.elapsed() >= resilient::STABLE {
            self.attempt = 0;
        }
        self.back_off(plan, me, 1 << 31);
    }
}

// ---------------------------------------------------------------- setup

/// Connect both users of pair `i`, make them connected and open their conversation: the two
/// sockets (with their edges), the conversation and its last sequence before the run.
async fn set_up(
    plan: &Plan,
    i: usize,
    a: &crate::accounts::Session,
    b: &crate::accounts::Session,
) -> std::result::Result<((Ws, String), (Ws, String), Id, u64), String> {
    let dial = crate::dm::Dial {
        targets: &plan.targets,
        source_addrs: plan.source_addrs,
        timeout: plan.connect_timeout,
    };
    let (wa, wb, conversation) = crate::dm::open_pair(dial, i, a, b).await?;
    let (conv, base) = (conversation.conversation_id, conversation.last_seq);
    let edge = |s: &client::Socket| s.edge().unwrap_or("?").to_string();
    let (ea, eb) = (edge(&wa), edge(&wb));
    Ok(((wa.into_inner(), ea), (wb.into_inner(), eb), conv, base))
}

/// The whole conversation after `base`, read on a fresh socket.
async fn final_timeline(
    plan: &Plan,
    token: &str,
    conv: Id,
    base: u64,
) -> std::result::Result<Vec<Stored>, String> {
    let mut last = String::new();
    for n in 0..20 {
        let target = &plan.targets[n % plan.targets.len()];
        match connect_socket(target, token, None, plan.connect_timeout).await {
            Ok(mut s) => {
                let mut seqs = client::Seqs::default();
                seqs.saw(conv, base);
                s.set_seqs(seqs);
                match s.sync().await {
                    Ok(mut got) => {
                        s.close().await;
                        return Ok(got
                            .remove(&conv)
                            .unwrap_or_default()
                            .into_iter()
                            .map(|m| Stored {
                                seq: m.seq,
                                author: m.author_id,
                                cmid: m.client_msg_id,
                            })
                            .collect());
                    }
                    Err(e) => last = crate::net::label(&e),
                }
            }
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Err(format!("final dm.sync of {conv} failed: {last}"))
}

// ---------------------------------------------------------------- the result

/// One fault and what it did.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FaultRow {
    /// `none` for the phase before the first fault.
    pub fault: String,
    pub process: String,
    pub pid: u32,
    /// Why the fault was not injected, if it was not.
    pub skipped: Option<String>,
    /// Unacknowledged sends on the victim (edge, nginx) at the moment of the kill.
    pub in_flight_at_kill: u64,
    /// Clients whose socket went through the victim (edge, nginx).
    pub clients_on_victim: u64,
    /// Seconds from the kill until the process ran again (a new PID in the state file).
    pub back_after_s: Option<f64>,
    /// Redis: the killed node's role once back (a replica when its replica took over).
    pub note: String,
    pub tally: PhaseTally,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ChaosResult {
    pub pairs_requested: u64,
    pub pairs_ready: u64,
    pub setup_failures: BTreeMap<String, u64>,
    pub target_rate_per_s: f64,
    pub resend: bool,
    pub sync: bool,
    pub reconnect: bool,
    pub reconnects: u64,
    pub faults: Vec<FaultRow>,
    pub total: PhaseTally,
    /// Conversations whose final read failed (their messages are not accounted).
    pub unread_conversations: u64,
    /// `--ci`: why the run fails (empty: it passes).
    pub failures: Vec<String>,
}

fn ms(v: Option<u64>) -> String {
    v.map_or("–".into(), |m| format!("{:.1} s", m as f64 / 1000.0))
}

impl Rows for ChaosResult {
    fn rows(&self) -> Vec<(String, String)> {
        let t = &self.total;
        vec![
            (
                "pairs ready / requested".into(),
                format!("{} / {}", self.pairs_ready, self.pairs_requested),
            ),
            ("setup failures".into(), kv(&self.setup_failures)),
            (
                "rate".into(),
                format!("{:.0} msg/s", self.target_rate_per_s),
            ),
            (
                "client behaviour".into(),
                format!(
                    "reconnect {}, catch-up dm.sync {}, resend unacknowledged {}",
                    on(self.reconnect),
                    on(self.sync),
                    on(self.resend)
                ),
            ),
            ("reconnects".into(), self.reconnects.to_string()),
            ("sent / acked".into(), format!("{} / {}", t.sent, t.acked)),
            (
                "**lost** / seq reused".into(),
                format!("**{}** / {}", t.lost, t.seq_reused),
            ),
            ("**duplicated**".into(), format!("**{}**", t.duplicated)),
            ("out of order".into(), t.out_of_order.to_string()),
            (
                "unanswered".into(),
                format!(
                    "{} ({} of them stored all the same)",
                    t.unanswered, t.unanswered_stored
                ),
            ),
            ("refused".into(), kv(&t.refused)),
            ("answered and resent".into(), kv(&t.resent)),
            ("not caught up".into(), t.not_caught_up.to_string()),
            (
                "conversations not read at the end".into(),
                self.unread_conversations.to_string(),
            ),
            (
                "verdict".into(),
                if self.failures.is_empty() {
                    "pass".into()
                } else {
                    format!("FAIL: {}", self.failures.join("; "))
                },
            ),
        ]
    }
}

fn on(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "OFF"
    }
}

impl ChaosResult {
    /// The per-fault table (Markdown).
    pub fn table(&self) -> String {
        let mut s = String::from(
            "| fault | process | back after | clients on it / unacked at kill | sent | lost | dup | out of order | unanswered | refused | answered and resent | not caught up | recovered | recovery max / p99 | note |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---|\n",
        );
        for f in &self.faults {
            let t = &f.tally;
            let back = f
                .back_after_s
                .map_or("not back".into(), |b| format!("{b:.1} s"));
            let (back, on_it) = if f.fault == "none" {
                ("–".to_string(), "–".to_string())
            } else {
                (
                    back,
                    format!("{} / {}", f.clients_on_victim, f.in_flight_at_kill),
                )
            };
            let note = match &f.skipped {
                Some(why) => format!("not killed: {why}"),
                None => f.note.clone(),
            };
            s += &format!(
                "| {} | {} | {back} | {on_it} | {} | {} | {} | {} | {} | {} | {} | {} | {}/{} | {} / {} | {note} |\n",
                f.fault,
                if f.process.is_empty() { "–".into() } else { format!("{} (pid {})", f.process, f.pid) },
                t.sent,
                t.lost + t.seq_reused,
                t.duplicated,
                t.out_of_order,
                t.unanswered,
                kv(&t.refused),
                kv(&t.resent),
                t.not_caught_up,
                t.recovered_clients,
                t.recovered_clients + t.unrecovered_clients,
                ms(t.recovery_max_ms),
                ms(t.recovery_p99_ms),
            );
        }
        s
    }

    /// `--ci`: the conditions a fault run must meet (function, not timing).
    pub fn judge(&mut self) {
        let t = &self.total;
        let mut f = Vec::new();
        if self.pairs_ready < self.pairs_requested {
            f.push(format!(
                "{} pairs not set up",
                self.pairs_requested - self.pairs_ready
            ));
        }
        for (what, n) in [
            ("lost", t.lost),
            ("sequence numbers reused", t.seq_reused),
            ("duplicated", t.duplicated),
            ("out of order", t.out_of_order),
            ("unanswered", t.unanswered),
            ("not caught up", t.not_caught_up),
            (
                "conversations not read at the end",
                self.unread_conversations,
            ),
        ] {
            if n > 0 {
                f.push(format!("{n} {what}"));
            }
        }
        for row in self.faults.iter().filter(|r| r.fault != "none") {
            if let Some(why) = &row.skipped {
                f.push(format!("{} not killed ({why})", row.fault));
                continue;
            }
            if row.back_after_s.is_none() {
                f.push(format!("{} not running again", row.process));
            }
            if row.tally.unrecovered_clients > 0 {
                f.push(format!(
                    "{} clients never recovered from the kill of {}",
                    row.tally.unrecovered_clients, row.process
                ));
            }
        }
        self.failures = f;
    }
}

fn sum(into: &mut PhaseTally, t: &PhaseTally) {
    into.sent += t.sent;
    into.acked += t.acked;
    into.lost += t.lost;
    into.seq_reused += t.seq_reused;
    into.duplicated += t.duplicated;
    into.out_of_order += t.out_of_order;
    into.unanswered += t.unanswered;
    into.unanswered_stored += t.unanswered_stored;
    into.not_caught_up += t.not_caught_up;
    for (k, v) in &t.refused {
        *into.refused.entry(k.clone()).or_default() += v;
    }
    for (k, v) in &t.resent {
        *into.resent.entry(k.clone()).or_default() += v;
    }
}

// ---------------------------------------------------------------- the run

pub async fn run(a: ChaosArgs) -> Result<Report<ChaosResult>> {
    let c = &a.common;
    let started = crate::now_unix_s();
    if a.pairs == 0 || a.rate <= 0.0 {
        return Err(Error::Setup("--pairs and --rate must be positive".into()));
    }
    let per_conn = a.rate / (2.0 * a.pairs as f64);
    if per_conn > crate::dm::MAX_PER_CONNECTION_RATE {
        return Err(Error::Setup(format!(
            "{per_conn:.0} msg/s per connection is above the edge's limit"
        )));
    }
    let setup = Setup::new(c)?;
    let state_path: PathBuf = c.stack_path().with_file_name("state.json");
    let procs = read_state(&state_path)?;
    let faults = expand(&a.kill, &procs);
    if let Some(bad) = faults
        .iter()
        .find(|f| victim(f, &procs).is_err() && f.as_str() != "kafka")
    {
        return Err(Error::Setup(format!(
            "{bad}: {}",
            victim(bad, &procs).err().unwrap_or_default()
        )));
    }
    let (sessions, accounts) = setup.accounts.ensure(2 * a.pairs).await?;
    let plan = Arc::new(Plan {
        targets: setup.targets.clone(),
        source_addrs: c.source_addrs,
        connect_timeout: Duration::from_secs(c.connect_timeout),
        step: Duration::from_secs_f64(2.0 * a.pairs as f64 / a.rate),
        backoff: Backoff {
            base: Duration::from_millis(a.backoff_base_ms),
            max: Duration::from_millis(a.backoff_max_ms),
        },
        answer_within: Duration::from_secs(a.answer_within),
        resend: !a.no_resend,
        sync: !a.no_sync,
        reconnect: !a.no_reconnect,
        text_bytes: 64,
        run: format!("{:x}", crate::conns::unix_us()),
        pairs: a.pairs,
    });
    // Set the pairs up (a few at a time).
    let mut ready = Vec::new();
    let mut result = ChaosResult {
        pairs_requested: a.pairs as u64,
        target_rate_per_s: a.rate,
        resend: plan.resend,
        sync: plan.sync,
        reconnect: plan.reconnect,
        ..Default::default()
    };
    let outcomes: Vec<_> = futures::stream::iter(0..a.pairs)
        .map(|i| {
            let plan = plan.clone();
            let (sa, sb) = (sessions[2 * i].clone(), sessions[2 * i + 1].clone());
            async move { (i, set_up(&plan, i, &sa, &sb).await) }
        })
        .buffered(8)
        .collect()
        .await;
    for (i, o) in outcomes {
        match o {
            Ok(x) => ready.push((i, x)),
            Err(e) => *result.setup_failures.entry(e).or_default() += 1,
        }
    }
    result.pairs_ready = ready.len() as u64;
    say(
        c.quiet,
        format!("setup: {} pairs ready of {}", ready.len(), a.pairs),
    );
    if ready.is_empty() {
        return Err(Error::Setup(format!(
            "no pair could be set up: {:?}",
            result.setup_failures
        )));
    }
    // Clients are numbered 2·(pair index in `ready`) and +1; their peers are each other.
    let n = 2 * ready.len();
    let shared = Arc::new(Shared {
        phase: AtomicUsize::new(0),
        clients: (0..n).map(|_| ClientLive::new()).collect(),
    });
    let (send_tx, send_rx) = watch::channel(true);
    let (stop_tx, stop_rx) = watch::channel(false);
    let t0 = Instant::now() + Duration::from_millis(200);
    let mut tasks = Vec::new();
    let mut convs = Vec::new();
    for (j, (i, ((wa, ea), (wb, eb), conv, base))) in ready.into_iter().enumerate() {
        let (sa, sb) = (&sessions[2 * i], &sessions[2 * i + 1]);
        convs.push((conv, base, sa.token.clone()));
        for (idx, peer, s, first) in [
            (2 * j, 2 * j + 1, sa, (wa, ea)),
            (2 * j + 1, 2 * j, sb, (wb, eb)),
        ] {
            let me = Me {
                i: idx,
                peer,
                token: s.token.clone(),
                user: s.user_id,
                conv,
                base,
            };
            shared.clients[idx]
                .target
                .store(idx % plan.targets.len(), Ordering::Relaxed);
            tasks.push(tokio::spawn(client(
                plan.clone(),
                shared.clone(),
                me,
                Some(first),
                t0,
                send_rx.clone(),
                stop_rx.clone(),
            )));
        }
    }
    // Progress lines while the conductor works.
    let progress = {
        let (shared, quiet) = (shared.clone(), c.quiet);
        tokio::spawn(async move {
            let mut t = tokio::time::interval(Duration::from_secs(1));
            loop {
                t.tick().await;
                let s: u64 = shared
                    .clients
                    .iter()
                    .map(|c| c.sent.load(Ordering::Relaxed))
                    .sum();
                let ak: u64 = shared
                    .clients
                    .iter()
                    .map(|c| c.acked.load(Ordering::Relaxed))
                    .sum();
                let ob: u64 = shared
                    .clients
                    .iter()
                    .map(|c| c.outbox.load(Ordering::Relaxed))
                    .sum();
                let down = shared
                    .clients
                    .iter()
                    .filter(|c| !c.connected.load(Ordering::Relaxed))
                    .count();
                say(
                    quiet,
                    format!(
                        "t={:>4.0}s phase {} sent {s} acked {ak} waiting {ob} clients offline {down}",
                        t0.elapsed().as_secs_f64(),
                        shared.phase.load(Ordering::Relaxed)
                    ),
                );
            }
        })
    };
    tokio::time::sleep_until(t0 + Duration::from_secs(a.warmup)).await;
    let mut rows = vec![FaultRow {
        fault: "none".into(),
        ..Default::default()
    }];
    let mut fault_times = Vec::new();
    for fault in &faults {
        let mut row = FaultRow {
            fault: fault.clone(),
            ..Default::default()
        };
        let procs = read_state(&state_path)?;
        let v = match victim(fault, &procs) {
            Ok(v) => v,
            Err(why) => {
                say(c.quiet, format!("{fault}: skipped ({why})"));
                row.skipped = Some(why);
                result.faults.push(row);
                continue;
            }
        };
        row.process = v.name.clone();
        row.pid = v.pid;
        // An edge or an nginx is killed while clients on it wait for answers: those are the
        // messages only a resend saves.
        let on_victim = |shared: &Shared| -> (u64, u64) {
            let mut clients = 0;
            let mut in_flight = 0;
            for cl in &shared.clients {
                let on = match v.kind.as_str() {
                    "edge" => *cl.edge.lock().expect("not poisoned") == v.name,
                    "nginx" => plan.targets.get(cl.target.load(Ordering::Relaxed)) == Some(&v.addr),
                    _ => false,
                } && cl.connected.load(Ordering::Relaxed);
                if on {
                    clients += 1;
                    in_flight += cl.in_flight.load(Ordering::Relaxed);
                }
            }
            (clients, in_flight)
        };
        if matches!(v.kind.as_str(), "edge" | "nginx") {
            let until = Instant::now() + Duration::from_secs(5);
            while on_victim(&shared).1 < a.kill_in_flight && Instant::now() < until {
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        }
        if !alive(v.pid, v.starttime) {
            row.skipped = Some(format!("pid {} is not running", v.pid));
            result.faults.push(row);
            continue;
        }
        let phase = fault_times.len() + 1;
        let (on, fl) = on_victim(&shared);
        let pid = rustix::process::Pid::from_raw(v.pid as i32)
            .ok_or_else(|| Error::Setup(format!("bad pid {}", v.pid)))?;
        rustix::process::kill_process(pid, rustix::process::Signal::KILL)
            .map_err(|e| Error::Setup(format!("kill -9 {} ({}): {e}", v.pid, v.name)))?;
        let killed = Instant::now();
        shared.phase.store(phase, Ordering::Relaxed);
        fault_times.push(killed);
        row.clients_on_victim = on;
        row.in_flight_at_kill = fl;
        say(
            c.quiet,
            format!(
                "kill -9 {} ({}), {on} clients on it, {fl} sends unanswered",
                v.pid, v.name
            ),
        );
        // Wait: the process back, every client recovered, at least --settle seconds.
        let limit = killed + Duration::from_secs(a.recover_within);
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if row.back_after_s.is_none() {
                let now_procs = read_state(&state_path).unwrap_or_default();
                if let Some(p) = now_procs.iter().find(|p| p.name == v.name) {
                    if (p.pid, p.starttime) != (v.pid, v.starttime) && alive(p.pid, p.starttime) {
                        row.back_after_s =
                            Some((killed.elapsed().as_secs_f64() * 10.0).round() / 10.0);
                        say(
                            c.quiet,
                            format!(
                                "{} running again (pid {}) after {:.1} s",
                                v.name,
                                p.pid,
                                killed.elapsed().as_secs_f64()
                            ),
                        );
                    }
                }
            }
            let recovered = shared.clients.iter().all(|cl| cl.recovered(phase));
            if row.back_after_s.is_some()
                && recovered
                && killed.elapsed() >= Duration::from_secs(a.settle)
            {
                break;
            }
            if Instant::now() >= limit {
                for (i, cl) in shared
                    .clients
                    .iter()
                    .enumerate()
                    .filter(|(_, cl)| !cl.recovered(phase))
                {
                    eprintln!(
                        "{fault}: client {i} not recovered after {} s: its messages acknowledged up to phase {}, arrived at its peer up to phase {}, on {}",
                        a.recover_within,
                        cl.acked_phase.load(Ordering::Relaxed),
                        cl.arrived_phase.load(Ordering::Relaxed),
                        cl.edge.lock().expect("not poisoned"),
                    );
                }
                break;
            }
        }
        if v.kind == "redis" {
            // Give the restarted node its moment to rejoin, then say what it is now.
            tokio::time::sleep(Duration::from_secs(1)).await;
            row.note = match redis_role(v.port) {
                Some(r) if r == "slave" => "rejoined as a replica (its replica took over)".into(),
                Some(r) => format!("back as {r}"),
                None => "not answering".into(),
            };
        }
        result.faults.push(row);
    }
    // A last stretch without faults, then stop typing and let every outbox drain.
    tokio::time::sleep(Duration::from_secs(a.tail)).await;
    let _ = send_tx.send(false);
    let drain_until = Instant::now() + Duration::from_secs(a.drain);
    while Instant::now() < drain_until
        && shared
            .clients
            .iter()
            .any(|c| c.outbox.load(Ordering::Relaxed) > 0)
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Deliveries of the last acknowledgements are still on their way for a moment.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _ = stop_tx.send(true);
    let mut logs = Vec::new();
    for t in tasks {
        logs.push(
            t.await
                .map_err(|e| Error::Setup(format!("client task failed: {e}")))?,
        );
    }
    progress.abort();
    result.reconnects = logs.iter().map(|l| l.reconnects).sum();
    // The final timeline of every conversation.
    let mut timelines = Vec::new();
    for (conv, base, token) in &convs {
        match final_timeline(&plan, token, *conv, *base).await {
            Ok(t) => timelines.push(Some(t)),
            Err(e) => {
                eprintln!("{e}");
                result.unread_conversations += 1;
                timelines.push(None);
            }
        }
    }
    let pairs: Vec<PairRun> = timelines
        .iter()
        .enumerate()
        .filter_map(|(j, t)| {
            t.as_ref().map(|t| PairRun {
                a: &logs[2 * j],
                b: &logs[2 * j + 1],
                timeline: t,
            })
        })
        .collect();
    let tallies = resilient::tally(&pairs, &fault_times);
    for l in &logs {
        for (cmid, s) in l
            .sent
            .iter()
            .filter(|(_, s)| s.ack.is_none() && s.refused.is_none())
        {
            let typed = s
                .typed
                .map(|t| t.saturating_duration_since(t0).as_secs_f64());
            eprintln!(
                "unanswered: {cmid} (phase {}, typed at t={typed:.1?} s)",
                s.phase
            );
        }
    }
    rows[0].tally = tallies[0].clone();
    let mut k = 1;
    for row in &mut result.faults {
        if row.skipped.is_none() {
            row.tally = tallies[k].clone();
            k += 1;
        }
    }
    rows.append(&mut result.faults);
    result.faults = rows;
    let mut total = PhaseTally::default();
    for t in &tallies {
        sum(&mut total, t);
    }
    result.total = total;
    result.judge();
    Ok(Report {
        scenario: "chaos".into(),
        command: crate::command_line(),
        started_at_unix_s: started,
        via: crate::via(c.direct),
        accounts,
        memory: vec![],
        result,
        cpu: BTreeMap::new(),
        kafka_backlog_peak: BTreeMap::new(),
        load_average: [setup.loadavg_start.clone(), crate::loadavg()],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(name: &str, kind: &str, role: &str) -> Proc {
        Proc {
            name: name.into(),
            kind: kind.into(),
            role: role.into(),
            pid: 1,
            starttime: 0,
            addr: String::new(),
            port: 0,
        }
    }

    fn platform() -> Vec<Proc> {
        vec![
            p("kafka-0", "kafka", ""),
            p("edge-1", "edge", ""),
            p("edge-0", "edge", ""),
            p("worker-dms-1", "worker", "dms"),
            p("worker-dms", "worker", "dms"),
            p("worker-auth", "worker", "auth"),
            p("router", "router", ""),
            p("nginx-1", "nginx", "proxy"),
            p("nginx-0", "nginx", "proxy"),
            p("mariadb-shard0-replica", "mariadb", "replica"),
            p("mariadb-shard0-primary", "mariadb", "primary"),
        ]
    }

    #[test]
    fn expands_fault_names() {
        let procs = platform();
        assert_eq!(
            expand("edge, workers,redis-master", &procs),
            ["edge", "worker-auth", "worker-dms", "redis-master"]
        );
        assert_eq!(expand("all", &procs).len(), ALL.len() - 1 + 2);
        assert!(expand(" , ", &procs).is_empty());
    }

    #[test]
    fn finds_each_victim_in_the_state_file() {
        let procs = platform();
        let name = |f: &str| victim(f, &procs).map(|v| v.name);
        assert_eq!(name("edge").unwrap(), "edge-0");
        assert_eq!(name("worker-dms").unwrap(), "worker-dms");
        assert_eq!(name("router").unwrap(), "router");
        assert_eq!(name("nginx").unwrap(), "nginx-0");
        assert_eq!(name("mariadb-primary").unwrap(), "mariadb-shard0-primary");
        assert_eq!(name("edge-1").unwrap(), "edge-1");
        assert_eq!(name("worker-dms-1").unwrap(), "worker-dms-1");
        assert!(name("kafka").unwrap_err().contains("--kafka-brokers 3"));
        assert!(name("worker-nope").is_err());
        let galera = vec![
            p("mariadb-shard1-node0", "mariadb", "node"),
            p("mariadb-shard0-node1", "mariadb", "node"),
            p("mariadb-shard0-garbd", "mariadb", "arbitrator"),
            p("mariadb-shard0-node0", "mariadb", "node"),
        ];
        assert_eq!(
            victim("mariadb-primary", &galera).unwrap().name,
            "mariadb-shard0-node0",
            "a Galera shard's writer"
        );
        // no Redis answers on port 0
        assert!(name("redis-master").is_err());
        let mut three = procs.clone();
        three.push(p("kafka-2", "kafka", ""));
        three.push(p("kafka-1", "kafka", ""));
        assert_eq!(victim("kafka", &three).unwrap().name, "kafka-2");
    }

    #[test]
    fn reads_the_phase_back_from_a_message() {
        assert_eq!(phase_of_text("p=3 t=123 xxx"), Some(3));
        assert_eq!(phase_of_text("hello"), None);
    }

    #[test]
    fn knows_whether_a_process_runs() {
        assert!(alive(std::process::id(), 0));
        assert!(!alive(u32::MAX, 0));
        assert!(!alive(std::process::id(), 1));
    }

    #[test]
    fn judges_a_run_by_function_not_timing() {
        let mut r = ChaosResult {
            pairs_requested: 2,
            pairs_ready: 2,
            faults: vec![
                FaultRow {
                    fault: "none".into(),
                    ..Default::default()
                },
                FaultRow {
                    fault: "edge".into(),
                    process: "edge-0".into(),
                    back_after_s: Some(1.5),
                    tally: PhaseTally {
                        recovered_clients: 4,
                        recovery_max_ms: Some(60_000),
                        ..Default::default()
                    },
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        r.judge();
        assert!(r.failures.is_empty(), "{:?}", r.failures);
        assert!(r.table().contains("| edge | edge-0 (pid 0) | 1.5 s |"));
        r.total.unanswered = 3;
        r.total.duplicated = 1;
        r.faults[1].back_after_s = None;
        r.faults[1].tally.unrecovered_clients = 1;
        r.judge();
        assert_eq!(
            r.failures,
            [
                "1 duplicated",
                "3 unanswered",
                "edge-0 not running again",
                "1 clients never recovered from the kill of edge-0"
            ]
        );
        assert!(r
            .rows()
            .iter()
            .any(|(k, v)| k == "verdict" && v.starts_with("FAIL")));
    }
}
