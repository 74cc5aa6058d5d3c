//! `dm`: P pairs of users, one WebSocket each, become connected (invite → accept), open their
//! direct conversation and exchange messages at a total rate R for D seconds, open loop (a send
//! never waits for an earlier answer). One task per pair owns both sockets, so every message is
//! tracked without locks: its send time, its `sent` reply (durable, with its sequence number),
//! and its arrival at the peer. Afterwards a drain period lets answers and deliveries catch up.

use crate::accounts::Session;
use crate::backlog::{backlog, Peak, Scraper};
use crate::cli::DmArgs;
use crate::conns::unix_us;
use crate::hist::{Hist, Percentiles};
use crate::net::{connect_socket, source_addr, Ws};
use crate::report::{kv, pct, Report, Rows};
use crate::{procs, say, Error, Result, Setup};
use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use topics::{ErrorCode, Event, Id, Request, Response, ServerFrame};

/// The edge allows 50 frames/s per connection; stay below it with room for jitter.
pub const MAX_PER_CONNECTION_RATE: f64 = 40.0;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DmResult {
    pub pairs_requested: u64,
    pub pairs_ready: u64,
    pub setup_failures: BTreeMap<String, u64>,
    pub target_rate_per_s: f64,
    pub duration_s: u64,
    pub sent: u64,
    /// `sent` replies: the message is durable.
    pub acked: u64,
    /// Error replies, by code (the client was told; not lost).
    pub rejected: BTreeMap<String, u64>,
    /// Neither acknowledged nor refused by the end of the drain: still queued in the platform
    /// (or dropped); a real client would retry them with the same client_msg_id.
    pub unanswered: u64,
    /// Unanswered and not delivered either.
    pub unanswered_not_delivered: u64,
    /// Answered `unavailable` (e.g. by the edge at its request deadline) and delivered all the
    /// same: stored after the client was told to retry. The drain waits for these too, as long as
    /// frames keep arriving (a pair that reads nothing for 5 s stops waiting: the rest were
    /// dropped at their deadline).
    pub unavailable_delivered: u64,
    /// Arrived at the peer's socket (first time).
    pub delivered: u64,
    /// Acknowledged as durable but never delivered to the peer by the end of the drain.
    pub lost: u64,
    /// Second and later arrivals of one message at one socket.
    pub duplicated: u64,
    /// Events whose sequence number was below one already seen on that socket.
    pub out_of_order: u64,
    /// Acknowledgements flagged `duplicate` (a retried client_msg_id; should be 0).
    pub duplicate_acks: u64,
    /// Own messages echoed to the sender's device.
    pub echoes: u64,
    /// Sockets the server closed during the run (their pair stopped there).
    pub sockets_closed: u64,
    pub send_rate_per_s: f64,
    pub ack_rate_per_s: f64,
    pub delivered_rate_per_s: f64,
    pub send_to_ack: Percentiles,
    pub send_to_deliver: Percentiles,
}

impl Rows for DmResult {
    fn rows(&self) -> Vec<(String, String)> {
        vec![
            (
                "pairs ready / requested".into(),
                format!("{} / {}", self.pairs_ready, self.pairs_requested),
            ),
            ("setup failures".into(), kv(&self.setup_failures)),
            (
                "target rate × duration".into(),
                format!(
                    "{:.0} msg/s × {} s",
                    self.target_rate_per_s, self.duration_s
                ),
            ),
            (
                "sent / acked / delivered".into(),
                format!("{} / {} / {}", self.sent, self.acked, self.delivered),
            ),
            (
                "throughput sent / acked / delivered".into(),
                format!(
                    "{:.0} / {:.0} / {:.0} msg/s",
                    self.send_rate_per_s, self.ack_rate_per_s, self.delivered_rate_per_s
                ),
            ),
            ("rejected (by code)".into(), kv(&self.rejected)),
            (
                "**lost** (acked, not delivered by the end of the drain + 5 s)".into(),
                format!("**{}**", self.lost),
            ),
            (
                "answered unavailable, delivered all the same".into(),
                self.unavailable_delivered.to_string(),
            ),
            (
                "unanswered at the end of the drain".into(),
                format!(
                    "{} ({} not delivered either)",
                    self.unanswered, self.unanswered_not_delivered
                ),
            ),
            (
                "**duplicated**".into(),
                format!(
                    "**{}** (duplicate acks: {})",
                    self.duplicated, self.duplicate_acks
                ),
            ),
            ("out of order".into(), self.out_of_order.to_string()),
            (
                "sockets closed by the server".into(),
                self.sockets_closed.to_string(),
            ),
            (
                "send→ack p50/p90/p99/p99.9/max".into(),
                pct(&self.send_to_ack),
            ),
            (
                "send→deliver p50/p90/p99/p99.9/max".into(),
                pct(&self.send_to_deliver),
            ),
        ]
    }
}

#[derive(Default)]
struct Live {
    ready: AtomicU64,
    failed: AtomicU64,
    sent: AtomicU64,
    acked: AtomicU64,
    rejected: AtomicU64,
    delivered: AtomicU64,
}

struct Plan {
    targets: Vec<String>,
    source_addrs: u8,
    connect_timeout: Duration,
    pairs: usize,
    /// Between two sends of one pair (the two sides alternate).
    step: Duration,
    duration: Duration,
    drain: Duration,
    text_bytes: usize,
    run: String,
}

#[derive(Default)]
struct PairOut {
    setup_error: Option<String>,
    sent: u64,
    acked: u64,
    rejected: BTreeMap<String, u64>,
    unanswered: u64,
    delivered: u64,
    lost: u64,
    unanswered_not_delivered: u64,
    unavailable_delivered: u64,
    duplicated: u64,
    out_of_order: u64,
    duplicate_acks: u64,
    echoes: u64,
    sockets_closed: u64,
    ack: Hist,
    deliver: Hist,
    last_ack: Option<Instant>,
    last_delivery: Option<Instant>,
}

struct Side {
    ws: Ws,
    user: Id,
    last_seq: u64,
    got: HashSet<String>,
}

struct Msg {
    at: Instant,
    from: usize,
    replied: bool,
    acked: bool,
    delivered: bool,
    /// Came back to the sender's own socket (every device of both users gets it).
    echoed: bool,
    /// Answered `unavailable`: it may still be stored and delivered (an answer past the edge's
    /// request deadline), so the drain waits for it.
    unavailable: bool,
}

/// Send one request and wait for its answer, skipping events: the reply data or the error code.
pub(crate) async fn request(s: &mut client::Socket, request: Request) -> Result<Response, String> {
    s.request(request).await.map_err(|e| match e {
        client::Error::Closed { .. } => "socket_closed".to_string(),
        client::Error::Timeout => "no_answer".to_string(),
        e => crate::net::label(&e),
    })
}

/// Where a pair's sockets connect to and how (`dm` and `chaos` alike).
pub(crate) struct Dial<'a> {
    pub targets: &'a [String],
    pub source_addrs: u8,
    pub timeout: Duration,
}

/// Connect both users of pair `i` (each socket to the next target), make them connected (invite
/// → accept; both fail harmlessly with `conflict` when an earlier run already connected the pair)
/// and open their conversation.
pub(crate) async fn open_pair(
    dial: Dial<'_>,
    i: usize,
    a: &Session,
    b: &Session,
) -> Result<
    (
        client::Socket,
        client::Socket,
        topics::frames::ConversationSummary,
    ),
    String,
> {
    let connect = |s: &Session, n: usize| {
        let target = dial.targets[n % dial.targets.len()].clone();
        let token = s.token.clone();
        let src = source_addr(n, dial.source_addrs);
        let timeout = dial.timeout;
        async move { connect_socket(&target, &token, src, timeout).await }
    };
    let (wa, wb) = tokio::join!(connect(a, 2 * i), connect(b, 2 * i + 1));
    let mut wa = wa.map_err(|e| format!("connect_{e}"))?;
    let mut wb = wb.map_err(|e| format!("connect_{e}"))?;
    let _ = request(
        &mut wa,
        Request::InviteSend {
            code: b.invite_code.clone(),
        },
    )
    .await;
    let _ = request(
        &mut wb,
        Request::InviteRespond {
            user_id: a.user_id,
            accept: true,
        },
    )
    .await;
    match request(&mut wa, Request::DmOpen { user_id: b.user_id }).await {
        Ok(Response::Conversation { conversation }) => Ok((wa, wb, conversation)),
        Ok(other) => Err(format!("dm_open_unexpected_{other:?}")
            .chars()
            .take(40)
            .collect()),
        Err(code) => Err(format!("dm_open_{code}")),
    }
}

/// Both sides of pair `i`, connected, with their conversation.
async fn set_up(
    plan: &Plan,
    i: usize,
    a: &Session,
    b: &Session,
) -> Result<(Side, Side, Id), String> {
    let dial = Dial {
        targets: &plan.targets,
        source_addrs: plan.source_addrs,
        timeout: plan.connect_timeout,
    };
    let (wa, wb, conversation) = open_pair(dial, i, a, b).await?;
    let side = |s: client::Socket, user| Side {
        ws: s.into_inner(),
        user,
        last_seq: 0,
        got: HashSet::new(),
    };
    Ok((
        side(wa, a.user_id),
        side(wb, b.user_id),
        conversation.conversation_id,
    ))
}

/// Everything one pair does; returns its tally.
async fn pair(
    plan: Arc<Plan>,
    live: Arc<Live>,
    i: usize,
    a: Session,
    b: Session,
    gate: Arc<Semaphore>,
    mut start: watch::Receiver<Option<Instant>>,
) -> PairOut {
    let permit = gate.acquire().await.expect("semaphore open");
    let setup = set_up(&plan, i, &a, &b).await;
    drop(permit);
    let (mut sides, conv) = match setup {
        Ok((x, y, c)) => ([x, y], c),
        Err(e) => {
            live.failed.fetch_add(1, Ordering::Relaxed);
            return PairOut {
                setup_error: Some(e),
                ..Default::default()
            };
        }
    };
    live.ready.fetch_add(1, Ordering::Relaxed);
    let mut out = PairOut::default();
    let mut msgs: HashMap<String, Msg> = HashMap::new();
    // Wait for the common start, reading (and so answering pings) meanwhile.
    let t0 = loop {
        if let Some(t) = *start.borrow() {
            break t;
        }
        let [x, y] = &mut sides;
        let m = tokio::select! {
            r = start.changed() => if r.is_err() { return out } else { continue },
            m = x.ws.next() => m,
            m = y.ws.next() => m,
        };
        if !matches!(m, Some(Ok(_))) {
            live.failed.fetch_add(1, Ordering::Relaxed);
            return PairOut {
                setup_error: Some("closed_before_start".into()),
                ..Default::default()
            };
        }
    };
    let phase = plan.step.mul_f64(i as f64 / plan.pairs as f64);
    let mut next = t0 + phase;
    let end = t0 + plan.duration;
    let drain_end = end + plan.drain;
    let pad: String = "x".repeat(plan.text_bytes.saturating_sub(20));
    let mut k: u64 = 0;
    let mut deadline = drain_end;
    let mut grace = false;
    // When this pair last read a frame: in the drain, sends answered `unavailable` are waited for
    // only while frames still come ([`QUIET`]).
    let mut last_read = Instant::now();
    loop {
        let sending = next < end;
        let [x, y] = &mut sides;
        let got = tokio::select! {
            _ = tokio::time::sleep_until(next), if sending => None,
            _ = tokio::time::sleep_until(last_read + QUIET), if !sending => {
                // Nothing for a while: a send answered `unavailable` that is not delivered by now
                // was dropped at its deadline (or never reached a worker), not stored late.
                if msgs.values().all(|m| m.replied && (!m.acked || (m.delivered && m.echoed))) {
                    break;
                }
                last_read = Instant::now();
                continue;
            }
            m = x.ws.next() => Some((0, m)),
            m = y.ws.next() => Some((1, m)),
            _ = tokio::time::sleep_until(deadline) => {
                // The ack and the delivery leave the worker together but take different paths:
                // past the drain, give deliveries of acknowledged messages a last few seconds
                // before counting them lost.
                if grace || !msgs.values().any(|m| m.acked && !m.delivered) {
                    break;
                }
                grace = true;
                deadline = drain_end + DELIVERY_GRACE;
                continue;
            }
        };
        match got {
            None => {
                let from = (k % 2) as usize;
                let cmid = format!("{}-{i}-{k}", plan.run);
                let text = format!("t={} {pad}", unix_us());
                let mut frame = json!({"type": "dm.send", "rid": cmid, "conversation_id": conv, "client_msg_id": cmid, "text": text});
                // As the web client: name this side's previous message while it is unanswered.
                let before = k.checked_sub(2).map(|b| format!("{}-{i}-{b}", plan.run));
                if let Some(b) = before.filter(|b| msgs.get(b).is_some_and(|m| !m.replied)) {
                    frame["after_client_msg_id"] = json!(b);
                }
                let now = Instant::now();
                // A send that fails locally counts as refused: the client knows.
                let failed = sides[from]
                    .ws
                    .send(Message::text(frame.to_string()))
                    .await
                    .is_err();
                if failed {
                    *out.rejected.entry("send_failed".into()).or_default() += 1;
                }
                msgs.insert(
                    cmid,
                    Msg {
                        at: now,
                        from,
                        replied: failed,
                        acked: false,
                        delivered: false,
                        echoed: false,
                        unavailable: false,
                    },
                );
                out.sent += 1;
                live.sent.fetch_add(1, Ordering::Relaxed);
                k += 1;
                next += plan.step;
                // Far behind (the generator is starved): delay rather than burst past the
                // edge's per-connection limit.
                if now > next + Duration::from_secs(1) {
                    next = now;
                }
            }
            Some((s, Some(Ok(Message::Text(t))))) => {
                let now = Instant::now();
                last_read = now;
                match serde_json::from_str::<ServerFrame>(&t) {
                    Ok(ServerFrame::Reply {
                        rid: Some(r),
                        data: Response::Sent { duplicate, .. },
                    }) => {
                        if let Some(m) = msgs.get_mut(&r).filter(|m| !m.replied) {
                            m.replied = true;
                            m.acked = true;
                            out.acked += 1;
                            out.duplicate_acks += u64::from(duplicate);
                            out.ack.record(now - m.at);
                            out.last_ack = Some(now);
                            live.acked.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(ServerFrame::Error {
                        rid: Some(r), code, ..
                    }) => {
                        if let Some(m) = msgs.get_mut(&r).filter(|m| !m.replied) {
                            m.replied = true;
                            m.unavailable = matches!(code, ErrorCode::Unavailable);
                            *out.rejected.entry(code.as_str().to_string()).or_default() += 1;
                            live.rejected.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(ServerFrame::Event {
                        data: Event::DmMessage { message },
                    }) if message.conversation_id == conv => {
                        let side = &mut sides[s];
                        if message.seq < side.last_seq {
                            out.out_of_order += 1;
                        }
                        side.last_seq = side.last_seq.max(message.seq);
                        if message.author_id == Some(side.user) {
                            // My own message, on my own device.
                            if let Some(m) = msgs.get_mut(&message.client_msg_id) {
                                if m.echoed {
                                    out.duplicated += 1;
                                } else {
                                    m.echoed = true;
                                    out.echoes += 1;
                                }
                            }
                        } else if let Some(m) =
                            msgs.get_mut(&message.client_msg_id).filter(|m| m.from != s)
                        {
                            if side.got.insert(message.client_msg_id.clone()) {
                                m.delivered = true;
                                out.delivered += 1;
                                out.deliver.record(now - m.at);
                                out.last_delivery = Some(now);
                                live.delivered.fetch_add(1, Ordering::Relaxed);
                            } else {
                                out.duplicated += 1;
                            }
                        }
                    }
                    _ => {}
                }
            }
            Some((_, Some(Ok(_)))) => {}
            Some((_, _)) => {
                // A socket ended: nothing more can arrive on it.
                out.sockets_closed += 1;
                break;
            }
        }
        if !sending
            && msgs.values().all(|m| {
                m.replied
                    && (!m.acked || (m.delivered && m.echoed))
                    && (!m.unavailable || m.delivered)
            })
        {
            break;
        }
        if grace && msgs.values().all(|m| !m.acked || m.delivered) {
            break;
        }
    }
    for m in msgs.values() {
        if !m.replied {
            out.unanswered += 1;
            if !m.delivered {
                out.unanswered_not_delivered += 1;
            }
        }
        if m.unavailable && m.delivered {
            out.unavailable_delivered += 1;
        }
        if m.acked && !m.delivered {
            out.lost += 1;
        }
    }
    out
}

/// How long past the drain the deliveries of acknowledged messages are still waited for.
const DELIVERY_GRACE: Duration = Duration::from_secs(5);

/// In the drain, once every send is answered and every acknowledged one delivered, how long a
/// pair still waits with nothing arriving for sends answered `unavailable` that may yet be
/// delivered (stored after their edge's deadline).
const QUIET: Duration = Duration::from_secs(5);

pub async fn run(a: DmArgs) -> Result<Report<DmResult>> {
    let c = &a.common;
    let started = crate::now_unix_s();
    let per_conn = a.rate / (2.0 * a.pairs.max(1) as f64);
    if a.pairs == 0 || a.rate <= 0.0 {
        return Err(Error::Setup("--pairs and --rate must be positive".into()));
    }
    if per_conn > MAX_PER_CONNECTION_RATE {
        return Err(Error::Setup(format!(
            "{per_conn:.0} msg/s per connection is above the edge's limit; use --pairs {} or more",
            (a.rate / (2.0 * MAX_PER_CONNECTION_RATE)).ceil()
        )));
    }
    let setup = Setup::new(c)?;
    let (sessions, accounts) = setup.accounts.ensure(2 * a.pairs).await?;
    let plan = Arc::new(Plan {
        targets: setup.targets.clone(),
        source_addrs: c.source_addrs,
        connect_timeout: Duration::from_secs(c.connect_timeout),
        pairs: a.pairs,
        step: Duration::from_secs_f64(a.pairs as f64 / a.rate),
        duration: Duration::from_secs(a.duration),
        drain: Duration::from_secs(a.drain),
        text_bytes: a.text_bytes.clamp(24, 4000),
        run: format!("{:x}", unix_us()),
    });
    let live = Arc::new(Live::default());
    let gate = Arc::new(Semaphore::new(a.setup_concurrency.max(1)));
    let (start_tx, start_rx) = watch::channel(None);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..a.pairs {
        let (sa, sb) = (sessions[2 * i].clone(), sessions[2 * i + 1].clone());
        tasks.spawn(pair(
            plan.clone(),
            live.clone(),
            i,
            sa,
            sb,
            gate.clone(),
            start_rx.clone(),
        ));
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tick.tick().await;
        let (r, f) = (
            live.ready.load(Ordering::Relaxed),
            live.failed.load(Ordering::Relaxed),
        );
        say(
            c.quiet,
            format!("setup: {r} pairs ready, {f} failed of {}", a.pairs),
        );
        if (r + f) as usize >= a.pairs {
            break;
        }
    }
    let scraper = Scraper::new(&setup.components);
    let base = scraper.counts().await;
    let mut peak = Peak::default();
    let t0 = Instant::now() + Duration::from_millis(200);
    let _ = start_tx.send(Some(t0));
    tokio::time::sleep_until(t0).await;
    let cpu_start = procs::sample(&setup.components);
    let mut cpu_end = None;
    let mut prev = (0, 0, 0);
    let mut tick = tokio::time::interval_at(t0 + Duration::from_secs(1), Duration::from_secs(1));
    let mut outs = Vec::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let (s, ak, d) = (live.sent.load(Ordering::Relaxed), live.acked.load(Ordering::Relaxed), live.delivered.load(Ordering::Relaxed));
                let rj = live.rejected.load(Ordering::Relaxed);
                let bl = backlog(&base, &scraper.counts().await);
                peak.update(&bl);
                say(c.quiet, format!(
                    "t={:>3.0}s sent {s:>8} ({:>6}/s) acked {ak:>8} ({:>6}/s) delivered {d:>8} ({:>6}/s) rejected {rj} in flight {} kafka backlog {}",
                    t0.elapsed().as_secs_f64(), s - prev.0, ak - prev.1, d - prev.2, s.saturating_sub(ak + rj), Peak::summary(&bl)
                ));
                prev = (s, ak, d);
                if cpu_end.is_none() && t0.elapsed() >= plan.duration {
                    cpu_end = Some(procs::sample(&setup.components));
                }
            }
            r = tasks.join_next() => match r {
                Some(Ok(o)) => outs.push(o),
                Some(Err(e)) => return Err(Error::Setup(format!("pair task failed: {e}"))),
                None => break,
            },
        }
    }
    let cpu_end = cpu_end.unwrap_or_else(|| procs::sample(&setup.components));
    let mut r = DmResult {
        pairs_requested: a.pairs as u64,
        target_rate_per_s: a.rate,
        duration_s: a.duration,
        ..Default::default()
    };
    let (mut ack, mut deliver) = (Hist::default(), Hist::default());
    let (mut last_ack, mut last_del) = (t0, t0);
    for o in &outs {
        if let Some(e) = &o.setup_error {
            *r.setup_failures.entry(e.clone()).or_default() += 1;
            continue;
        }
        r.pairs_ready += 1;
        r.sent += o.sent;
        r.acked += o.acked;
        for (k, v) in &o.rejected {
            *r.rejected.entry(k.clone()).or_default() += v;
        }
        r.unanswered += o.unanswered;
        r.delivered += o.delivered;
        r.lost += o.lost;
        r.unanswered_not_delivered += o.unanswered_not_delivered;
        r.unavailable_delivered += o.unavailable_delivered;
        r.duplicated += o.duplicated;
        r.out_of_order += o.out_of_order;
        r.duplicate_acks += o.duplicate_acks;
        r.echoes += o.echoes;
        r.sockets_closed += o.sockets_closed;
        ack.merge(&o.ack);
        deliver.merge(&o.deliver);
        last_ack = last_ack.max(o.last_ack.unwrap_or(t0));
        last_del = last_del.max(o.last_delivery.unwrap_or(t0));
    }
    r.rejected.retain(|_, v| *v > 0);
    let secs = |t: Instant| (t - t0).as_secs_f64().max(1e-3);
    r.send_rate_per_s = (r.sent as f64 / a.duration.max(1) as f64).round();
    r.ack_rate_per_s = (r.acked as f64 / secs(last_ack)).round();
    r.delivered_rate_per_s = (r.delivered as f64 / secs(last_del)).round();
    r.send_to_ack = ack.percentiles();
    r.send_to_deliver = deliver.percentiles();
    let mut cpu = BTreeMap::new();
    cpu.insert("sending".to_string(), procs::usage(&cpu_start, &cpu_end));
    Ok(Report {
        scenario: "dm".into(),
        command: crate::command_line(),
        started_at_unix_s: started,
        via: crate::via(c.direct),
        accounts,
        memory: vec![],
        result: r,
        cpu,
        kafka_backlog_peak: peak.0,
        load_average: [setup.loadavg_start.clone(), crate::loadavg()],
    })
}
