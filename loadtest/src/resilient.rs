//! The bookkeeping of a client that survives faults the way the web client does (web/src/conn.ts,
//! web/src/state.ts), without I/O so that it is unit-tested on its own:
//!
//! - [`Backoff`]: the delay before reconnect attempt n — exponential, capped, with jitter
//!   (`ceiling / 2 + r × ceiling / 2`, the web client's formula);
//! - [`Outbox`]: messages not yet acknowledged; each is sent again with the same
//!   `client_msg_id` after a reconnect, after `unavailable` / `rate_limited`, or when its answer
//!   is overdue, naming the one typed before it while that one is not acknowledged
//!   (`after_client_msg_id`), and after `out_of_order` right behind that one;
//! - [`View`]: the messages of one conversation this client has seen (events, `sent` replies,
//!   `dm.sync`), and the newest sequence up to which it holds every message — where a catch-up
//!   `dm.sync` starts;
//! - [`tally`]: after the run, what each client saw and was told against the conversation's
//!   final timeline (a fresh `dm.sync` from the start): lost, duplicated, out of order,
//!   unanswered, not caught up, and per fault the time each client took to recover.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use tokio::time::Instant;
use topics::Id;

/// Reconnect delays: attempt 0 waits `base/2 ..= base`, each further attempt doubles the
/// ceiling up to `max`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The delay before attempt `attempt` (0-based) for `r` drawn from `[0, 1)`.
    pub fn delay(&self, attempt: u32, r: f64) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(2u32.saturating_pow(attempt.min(16)))
            .min(self.max);
        ceiling / 2 + ceiling.mul_f64(r.clamp(0.0, 1.0) / 2.0)
    }
}

/// A pseudo-random number in `[0, 1)` from a seed (splitmix64): jitter that differs between
/// clients and attempts without a random number generator.
pub fn unit(seed: u64) -> f64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// A socket that stayed open this long starts the backoff over (web/src/conn.ts STABLE_MS).
pub const STABLE: Duration = Duration::from_secs(5);

/// One message not acknowledged yet.
#[derive(Clone, Debug, PartialEq)]
pub struct Pending {
    pub cmid: String,
    pub text: String,
    /// Written on the current socket at this time (None: waits to be sent).
    pub sent_at: Option<Instant>,
    /// Not to be sent again before this (after `unavailable`).
    pub not_before: Option<Instant>,
    /// Times written to a socket.
    pub tries: u32,
    /// The `after_client_msg_id` it was last written with.
    pub after: Option<String>,
    /// Refused `out_of_order`: written again right after the message it named (`after`), once
    /// that one has been written more than this many times, or as soon as it has left the outbox.
    pub held: Option<u32>,
}

/// One `dm.send` to write: its id, its text, and the message it must be stored after.
#[derive(Clone, Debug, PartialEq)]
pub struct Write {
    pub cmid: String,
    pub text: String,
    pub after: Option<String>,
}

/// The messages typed and not acknowledged, in the order they were typed.
#[derive(Clone, Debug)]
pub struct Outbox {
    pending: BTreeMap<u64, Pending>,
    index: HashMap<String, u64>,
    /// Send a message again (same `client_msg_id`) after its socket dropped or its answer was
    /// overdue; false only to show what happens without it (`loadtest chaos --no-resend`).
    pub resend: bool,
    /// How long an answer may take before the message is sent again on the same socket.
    pub answer_within: Duration,
}

impl Outbox {
    pub fn new(resend: bool, answer_within: Duration) -> Outbox {
        Outbox {
            pending: BTreeMap::new(),
            index: HashMap::new(),
            resend,
            answer_within,
        }
    }

    /// Message number `k` was typed.
    pub fn add(&mut self, k: u64, cmid: String, text: String) {
        self.index.insert(cmid.clone(), k);
        self.pending.insert(
            k,
            Pending {
                cmid,
                text,
                sent_at: None,
                not_before: None,
                tries: 0,
                after: None,
                held: None,
            },
        );
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Written and not answered on the current socket.
    pub fn in_flight(&self) -> usize {
        self.pending
            .values()
            .filter(|p| p.sent_at.is_some())
            .count()
    }

    /// What to write now on an open socket, oldest first, each marked as written: every message
    /// not written on this socket yet, and (with `resend`) every one whose answer is overdue.
    /// Without `resend` a message is written once, ever. Each names the message before it that
    /// is not acknowledged (if any), which the server stores first; a message refused
    /// `out_of_order` waits for that one to be written again (or to leave), then follows it.
    pub fn due(&mut self, now: Instant) -> Vec<Write> {
        let mut out = Vec::new();
        let mut before: Option<(String, u32)> = None;
        for p in self.pending.values_mut() {
            let prev = before.replace((p.cmid.clone(), p.tries));
            let held = p.held.zip(p.after.as_ref()).is_some_and(|(tries, w)| {
                self.index.contains_key(w)
                    && prev.as_ref().is_none_or(|(c, t)| c != w || *t <= tries)
            });
            if held || p.not_before.is_some_and(|t| now < t) {
                continue;
            }
            let overdue = p.sent_at.is_some_and(|t| now >= t + self.answer_within);
            let unsent = p.sent_at.is_none();
            if !(unsent || overdue) || (!self.resend && p.tries > 0) {
                continue;
            }
            p.sent_at = Some(now);
            p.not_before = None;
            p.held = None;
            p.tries += 1;
            p.after = prev.map(|(c, _)| c);
            before = Some((p.cmid.clone(), p.tries));
            out.push(Write {
                cmid: p.cmid.clone(),
                text: p.text.clone(),
                after: p.after.clone(),
            });
        }
        out
    }

    /// The earliest time [`Outbox::due`] has something new to write (None: nothing waits on
    /// time).
    pub fn next_due(&self) -> Option<Instant> {
        self.pending
            .values()
            .filter(|p| self.resend || p.tries == 0)
            .filter_map(|p| match (p.sent_at, p.not_before) {
                (None, Some(t)) => Some(t),
                (Some(t), _) => Some(t + self.answer_within),
                (None, None) => None,
            })
            .min()
    }

    /// The `sent` reply came: the message leaves the outbox (false: it had left already).
    pub fn acked(&mut self, cmid: &str) -> bool {
        self.index
            .remove(cmid)
            .and_then(|k| self.pending.remove(&k))
            .is_some()
    }

    /// An error that retrying will not change: the message leaves the outbox (the web client
    /// shows it as failed).
    pub fn refused(&mut self, cmid: &str) -> bool {
        self.acked(cmid)
    }

    /// `unavailable` or `rate_limited`: send it again from `at`.
    pub fn later(&mut self, cmid: &str, at: Instant) {
        if let Some(p) = self.index.get(cmid).and_then(|k| self.pending.get_mut(k)) {
            p.sent_at = None;
            p.not_before = Some(at);
        }
    }

    /// `out_of_order`: the message it named is not stored yet; it is written again right after
    /// that one ([`Outbox::due`]).
    pub fn out_of_order(&mut self, cmid: &str) {
        let Some(&k) = self.index.get(cmid) else {
            return;
        };
        let after = self.pending.get(&k).and_then(|p| p.after.as_ref());
        let held = after
            .and_then(|a| self.index.get(a))
            .and_then(|k| self.pending.get(k))
            .map(|named| named.tries);
        if let Some(p) = self.pending.get_mut(&k) {
            p.sent_at = None;
            p.not_before = None;
            p.held = held;
        }
    }

    /// The socket dropped: nothing is in flight any more; everything is written again on the
    /// next socket (with `resend`).
    pub fn disconnected(&mut self) {
        for p in self.pending.values_mut() {
            p.sent_at = None;
        }
    }

    /// Still waiting for an answer, in typing order.
    pub fn waiting(&self) -> impl Iterator<Item = &Pending> {
        self.pending.values()
    }
}

/// The messages of one conversation a client holds: sequence → client message id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct View {
    /// Everything up to here was there before the run (the conversation's `last_seq` then).
    base: u64,
    seqs: BTreeMap<u64, String>,
    contiguous: u64,
}

impl View {
    pub fn new(base: u64) -> View {
        View {
            base,
            seqs: BTreeMap::new(),
            contiguous: base,
        }
    }

    /// Take in message `seq`; true if it is new here.
    pub fn insert(&mut self, seq: u64, cmid: &str) -> bool {
        if seq <= self.base || self.seqs.contains_key(&seq) {
            return false;
        }
        self.seqs.insert(seq, cmid.to_string());
        while self.seqs.contains_key(&(self.contiguous + 1)) {
            self.contiguous += 1;
        }
        true
    }

    /// The newest sequence up to which every message is held (a catch-up asks from here).
    pub fn contiguous(&self) -> u64 {
        self.contiguous
    }

    /// The newest sequence held.
    pub fn newest(&self) -> u64 {
        self.seqs.keys().next_back().copied().unwrap_or(self.base)
    }

    /// Whether a message after the contiguous prefix is held: something in between is missing.
    pub fn has_gap(&self) -> bool {
        self.newest() > self.contiguous
    }

    pub fn base(&self) -> u64 {
        self.base
    }

    pub fn has(&self, seq: u64) -> bool {
        self.seqs.contains_key(&seq)
    }
}

/// What one client sent: one record per message typed.
#[derive(Clone, Debug, Default)]
pub struct Sent {
    /// Typing order of this client (0, 1, …).
    pub k: u64,
    /// The fault phase it was typed in (0: before the first fault).
    pub phase: usize,
    pub typed: Option<Instant>,
    /// The first `sent` reply: when, and the sequence it carried.
    pub ack: Option<(Instant, u64)>,
    /// Sequences of later `sent` replies of the same `client_msg_id` that differ from the first.
    pub other_seqs: Vec<u64>,
    /// The error code of a refusal retrying would not change.
    pub refused: Option<String>,
    /// Answers that made the client send it again (`unavailable`, `rate_limited`,
    /// `out_of_order`), by code.
    pub resent: BTreeMap<String, u64>,
}

/// What one client did and saw during the run.
#[derive(Clone, Debug, Default)]
pub struct ClientLog {
    pub user: Id,
    /// `client_msg_id` → what became of it.
    pub sent: HashMap<String, Sent>,
    /// The peer's messages: when each first reached this client (live or by a catch-up).
    pub arrived: HashMap<String, Instant>,
    pub view: View,
    pub reconnects: u64,
}

/// One message of the final timeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub seq: u64,
    pub author: Option<Id>,
    pub cmid: String,
}

/// One pair: both clients' logs and the conversation's final timeline (after their base).
pub struct PairRun<'a> {
    pub a: &'a ClientLog,
    pub b: &'a ClientLog,
    pub timeline: &'a [Stored],
}

/// The figures of one phase (the messages typed in it; recovery from its fault).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PhaseTally {
    pub sent: u64,
    pub acked: u64,
    /// Acknowledged, and not in the final timeline.
    pub lost: u64,
    /// Acknowledged with a sequence that the final timeline gives another message.
    pub seq_reused: u64,
    /// Extra copies: a `client_msg_id` stored (or acknowledged) under more than one sequence.
    pub duplicated: u64,
    /// Messages stored before one their author typed earlier.
    pub out_of_order: u64,
    /// Neither acknowledged nor refused by the end.
    pub unanswered: u64,
    /// Of those, stored all the same (in the final timeline): only the answer went missing.
    pub unanswered_stored: u64,
    /// Refused with an error retrying does not change, by code.
    pub refused: BTreeMap<String, u64>,
    /// Answers that made a client send a message again, by code (a message answered
    /// `unavailable` twice counts twice).
    #[serde(default)]
    pub resent: BTreeMap<String, u64>,
    /// Messages of the final timeline a member's client did not hold at the end.
    pub not_caught_up: u64,
    /// Clients with a message typed after the fault, acknowledged and arrived at the peer.
    pub recovered_clients: u64,
    /// Clients without one.
    pub unrecovered_clients: u64,
    /// Fault → first message typed after it that was acknowledged and reached the peer, per
    /// client: the largest and the 99th percentile, ms.
    pub recovery_max_ms: Option<u64>,
    pub recovery_p99_ms: Option<u64>,
}

/// Tally every pair against its final timeline. `faults[i]` is when the fault of phase `i + 1`
/// struck; the result has one entry per phase (`faults.len() + 1`).
pub fn tally(pairs: &[PairRun], faults: &[Instant]) -> Vec<PhaseTally> {
    let phases = faults.len() + 1;
    let mut out = vec![PhaseTally::default(); phases];
    let mut recovery: Vec<Vec<Duration>> = vec![Vec::new(); phases];
    for p in pairs {
        let clients = [(p.a, p.b), (p.b, p.a)];
        // Where each client message id ended up in the final timeline.
        let mut stored: HashMap<&str, Vec<u64>> = HashMap::new();
        let mut by_seq: HashMap<u64, &Stored> = HashMap::new();
        for m in p.timeline {
            stored.entry(m.cmid.as_str()).or_default().push(m.seq);
            by_seq.insert(m.seq, m);
        }
        let phase_of = |cmid: &str| {
            clients
                .iter()
                .find_map(|(c, _)| c.sent.get(cmid).map(|s| s.phase))
        };
        for (me, peer) in clients {
            for (cmid, s) in &me.sent {
                let t = &mut out[s.phase];
                t.sent += 1;
                for (code, n) in &s.resent {
                    *t.resent.entry(code.clone()).or_default() += n;
                }
                let copies = stored.get(cmid.as_str()).map_or(0, Vec::len);
                match (&s.ack, &s.refused) {
                    (Some((_, seq)), _) => {
                        t.acked += 1;
                        if copies == 0 {
                            t.lost += 1;
                        }
                        if by_seq.get(seq).is_some_and(|m| &m.cmid != cmid) {
                            t.seq_reused += 1;
                        }
                    }
                    (None, Some(code)) => *t.refused.entry(code.clone()).or_default() += 1,
                    (None, None) => {
                        t.unanswered += 1;
                        t.unanswered_stored += u64::from(copies > 0);
                    }
                }
                let mut seqs: Vec<u64> = s.ack.iter().map(|a| a.1).collect();
                seqs.extend(&s.other_seqs);
                seqs.sort_unstable();
                seqs.dedup();
                t.duplicated += (copies.max(seqs.len()).max(1) - 1) as u64;
            }
            // Caught up: every stored message is in this client's view.
            for m in p.timeline {
                if !me.view.has(m.seq) {
                    if let Some(ph) = phase_of(&m.cmid) {
                        out[ph].not_caught_up += 1;
                    }
                }
            }
            // Recovery from each fault: the first message typed after it that is both
            // acknowledged and arrived at the peer.
            for (i, fault) in faults.iter().enumerate() {
                let next = faults.get(i + 1);
                let done = me
                    .sent
                    .iter()
                    .filter(|(_, s)| s.typed.is_some_and(|t| t >= *fault))
                    .filter_map(|(cmid, s)| {
                        let (acked, _) = s.ack?;
                        let arrived = *peer.arrived.get(cmid)?;
                        Some(acked.max(arrived))
                    })
                    .min()
                    // a recovery only counts before the next fault strikes
                    .filter(|t| next.is_none_or(|n| t < n));
                match done {
                    Some(t) => {
                        out[i + 1].recovered_clients += 1;
                        recovery[i + 1].push(t - *fault);
                    }
                    None => out[i + 1].unrecovered_clients += 1,
                }
            }
        }
        // Out of order: per author, a message stored after one typed later.
        let mut latest: HashMap<Option<Id>, u64> = HashMap::new();
        let mut first = std::collections::HashSet::new();
        for m in p.timeline {
            if !first.insert(m.cmid.as_str()) {
                continue; // a duplicate copy is counted as one, not again as out of order
            }
            let Some((ph, k)) = clients
                .iter()
                .find_map(|(c, _)| c.sent.get(&m.cmid).map(|s| (s.phase, s.k)))
            else {
                continue;
            };
            let top = latest.entry(m.author).or_insert(k);
            if k < *top {
                out[ph].out_of_order += 1;
            }
            *top = (*top).max(k);
        }
    }
    for (t, mut r) in out.iter_mut().zip(recovery) {
        r.sort_unstable();
        if let Some(max) = r.last() {
            t.recovery_max_ms = Some(max.as_millis() as u64);
            let i = ((r.len() as f64 * 0.99).ceil() as usize).clamp(1, r.len()) - 1;
            t.recovery_p99_ms = Some(r[i].as_millis() as u64);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn backs_off_like_the_web_client() {
        let b = Backoff {
            base: ms(500),
            max: ms(15_000),
        };
        assert_eq!(b.delay(0, 0.0), ms(250));
        assert_eq!(b.delay(0, 1.0), ms(500));
        assert_eq!(b.delay(1, 0.0), ms(500));
        assert_eq!(b.delay(3, 1.0), ms(4000));
        assert_eq!(b.delay(10, 0.0), ms(7500));
        assert_eq!(b.delay(u32::MAX, 1.0), ms(15_000));
        assert_eq!(b.delay(2, 9.0), ms(2000));
        let draws: Vec<f64> = (0..1000).map(unit).collect();
        assert!(draws.iter().all(|r| (0.0..1.0).contains(r)));
        let mean = draws.iter().sum::<f64>() / 1000.0;
        assert!((0.4..0.6).contains(&mean), "{mean}");
        assert_ne!(unit(1), unit(2));
    }

    #[tokio::test(start_paused = true)]
    async fn resends_with_the_same_id_after_a_drop_and_when_overdue() {
        let mut o = Outbox::new(true, Duration::from_secs(15));
        let t0 = Instant::now();
        o.add(0, "c0".into(), "hello".into());
        o.add(1, "c1".into(), "again".into());
        assert_eq!(o.next_due(), None);
        let w = |c: &str, t: &str, a: Option<&str>| Write {
            cmid: c.into(),
            text: t.into(),
            after: a.map(Into::into),
        };
        assert_eq!(
            o.due(t0),
            vec![w("c0", "hello", None), w("c1", "again", Some("c0"))]
        );
        assert_eq!((o.in_flight(), o.due(t0)), (2, vec![]));
        assert_eq!(o.next_due(), Some(t0 + Duration::from_secs(15)));
        // The socket drops before any answer: both go again, with their ids.
        o.disconnected();
        assert_eq!(o.in_flight(), 0);
        let again: Vec<String> = o.due(t0 + ms(10)).into_iter().map(|x| x.cmid).collect();
        assert_eq!(again, ["c0", "c1"]);
        // One is answered; the other's answer is overdue and it goes a third time.
        assert!(o.acked("c0"));
        assert!(!o.acked("c0"));
        assert_eq!(o.due(t0 + Duration::from_secs(14)), vec![]);
        let third = o.due(t0 + Duration::from_secs(16));
        // c0 is acknowledged: c1 no longer names it
        assert_eq!(third, vec![w("c1", "again", None)]);
        assert_eq!(o.waiting().map(|p| p.tries).collect::<Vec<_>>(), [3]);
        // `unavailable`: not before the given time.
        o.later("c1", t0 + Duration::from_secs(20));
        assert_eq!(o.next_due(), Some(t0 + Duration::from_secs(20)));
        assert_eq!(o.due(t0 + Duration::from_secs(19)), vec![]);
        assert_eq!(o.due(t0 + Duration::from_secs(20)).len(), 1);
        assert!(o.refused("c1"));
        assert!(o.is_empty());
        o.later("gone", t0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_refused_out_of_order_goes_again_right_behind_the_one_it_named() {
        let mut o = Outbox::new(true, Duration::from_secs(15));
        let t0 = Instant::now();
        for k in 0..3 {
            o.add(k, format!("c{k}"), "x".into());
        }
        let afters: Vec<Option<String>> = o.due(t0).into_iter().map(|x| x.after).collect();
        assert_eq!(afters, [None, Some("c0".into()), Some("c1".into())]);
        // c0's first write is lost on the way; c1 reached the server first and was refused
        o.out_of_order("c1");
        assert_eq!(o.next_due(), Some(t0 + Duration::from_secs(15)));
        assert_eq!(
            o.due(t0 + ms(10)),
            vec![],
            "held while c0 is not written again"
        );
        // c0 is answered `unavailable`: when it goes again, c1 follows it in the same write
        o.later("c0", t0 + Duration::from_secs(1));
        let next: Vec<(String, Option<String>)> = o
            .due(t0 + Duration::from_secs(1))
            .into_iter()
            .map(|x| (x.cmid, x.after))
            .collect();
        assert_eq!(
            next,
            [("c0".into(), None), ("c1".into(), Some("c0".into()))]
        );
        // c2 was refused too (it named c1); c1 is acknowledged: c2 goes, naming nothing (c0 is
        // acknowledged as well)
        o.out_of_order("c2");
        assert_eq!(o.due(t0 + Duration::from_secs(2)), vec![]);
        assert!(o.acked("c0") && o.acked("c1"));
        let last = o.due(t0 + Duration::from_secs(2));
        assert_eq!(
            (last.len(), last[0].cmid.as_str(), last[0].after.as_deref()),
            (1, "c2", None)
        );
        o.out_of_order("gone");
    }

    #[tokio::test(start_paused = true)]
    async fn without_resend_a_message_is_written_once() {
        let mut o = Outbox::new(false, Duration::from_secs(1));
        let t0 = Instant::now();
        o.add(0, "c0".into(), "x".into());
        assert_eq!(o.due(t0).len(), 1);
        o.disconnected();
        o.add(1, "c1".into(), "y".into());
        // typed while offline: written on the next socket; the one in flight at the drop: never
        let next: Vec<String> = o
            .due(t0 + Duration::from_secs(5))
            .into_iter()
            .map(|x| x.cmid)
            .collect();
        assert_eq!(next, ["c1"]);
        assert_eq!(o.due(t0 + Duration::from_secs(9)), vec![]);
        assert_eq!(o.next_due(), None);
        assert_eq!(o.len(), 2);
    }

    #[test]
    fn a_view_knows_where_its_contiguous_prefix_ends() {
        let mut v = View::new(10);
        assert_eq!((v.contiguous(), v.newest(), v.has_gap()), (10, 10, false));
        assert!(!v.insert(9, "old"));
        assert!(v.insert(11, "a"));
        assert!(v.insert(13, "c"));
        assert!(!v.insert(13, "c"));
        assert_eq!((v.contiguous(), v.newest(), v.has_gap()), (11, 13, true));
        assert!(v.insert(12, "b"));
        assert_eq!((v.contiguous(), v.has_gap(), v.base()), (13, false, 10));
        assert!(v.has(12) && !v.has(14));
    }

    fn sent(k: u64, phase: usize, typed: Instant, ack: Option<(Instant, u64)>) -> Sent {
        Sent {
            k,
            phase,
            typed: Some(typed),
            ack,
            ..Default::default()
        }
    }

    fn stored(seq: u64, author: u64, cmid: &str) -> Stored {
        Stored {
            seq,
            author: Some(Id(author)),
            cmid: cmid.into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn tallies_loss_duplicates_order_answers_and_catching_up() {
        let t0 = Instant::now();
        let fault = t0 + Duration::from_secs(10);
        let at = |s: u64| t0 + Duration::from_millis(s);
        let mut a = ClientLog {
            user: Id(1),
            view: View::new(0),
            ..Default::default()
        };
        let mut b = ClientLog {
            user: Id(2),
            view: View::new(0),
            ..Default::default()
        };
        // a0: fine; a1: acked as 2 but the timeline holds b0 there and a1 nowhere (lost, seq
        // reused); a2: stored twice (duplicated), after a3 typed later (out of order); a4: never
        // answered; a5: refused.
        a.sent
            .insert("a0".into(), sent(0, 0, at(0), Some((at(5), 1))));
        a.sent
            .insert("a1".into(), sent(1, 0, at(100), Some((at(105), 2))));
        a.sent
            .insert("a2".into(), sent(2, 1, at(10_100), Some((at(10_900), 4))));
        a.sent
            .insert("a3".into(), sent(3, 1, at(10_200), Some((at(10_300), 3))));
        a.sent.insert("a4".into(), sent(4, 1, at(10_300), None));
        let mut refused = sent(5, 1, at(10_400), None);
        refused.refused = Some("forbidden".into());
        a.sent.insert("a5".into(), refused);
        b.sent
            .insert("b0".into(), sent(0, 0, at(50), Some((at(60), 2))));
        let mut b1 = sent(1, 1, at(10_050), Some((at(12_000), 6)));
        b1.other_seqs = vec![7];
        // b1 was answered `unavailable` twice and `out_of_order` once before its `sent`
        b1.resent = BTreeMap::from([("unavailable".into(), 2), ("out_of_order".into(), 1)]);
        b.sent.insert("b1".into(), b1);
        let timeline = vec![
            stored(1, 1, "a0"),
            stored(2, 2, "b0"),
            stored(3, 1, "a3"),
            stored(4, 1, "a2"),
            stored(5, 1, "a2"),
            stored(6, 2, "b1"),
        ];
        for m in &timeline {
            a.view.insert(m.seq, &m.cmid);
            if m.seq != 5 {
                b.view.insert(m.seq, &m.cmid);
            }
        }
        b.arrived.insert("a3".into(), at(10_600));
        b.arrived.insert("a2".into(), at(10_700));
        a.arrived.insert("b1".into(), at(11_000));
        let t = tally(
            &[PairRun {
                a: &a,
                b: &b,
                timeline: &timeline,
            }],
            &[fault],
        );
        assert_eq!(t.len(), 2);
        let (p0, p1) = (&t[0], &t[1]);
        assert_eq!((p0.sent, p0.acked, p0.lost, p0.seq_reused), (3, 3, 1, 1));
        assert_eq!((p0.duplicated, p0.out_of_order, p0.unanswered), (0, 0, 0));
        assert_eq!(
            (p1.sent, p1.acked, p1.unanswered, p1.unanswered_stored),
            (5, 3, 1, 0)
        );
        assert_eq!(p1.refused, BTreeMap::from([("forbidden".to_string(), 1)]));
        assert!(p0.resent.is_empty());
        assert_eq!(
            p1.resent,
            BTreeMap::from([
                ("out_of_order".to_string(), 1),
                ("unavailable".to_string(), 2)
            ])
        );
        // a2 stored at 4 and 5; b1 acknowledged as 6 and later as 7
        assert_eq!(p1.duplicated, 2);
        assert_eq!(p1.out_of_order, 1);
        // b misses seq 5 (a copy of a2, typed in phase 1)
        assert_eq!((p0.not_caught_up, p1.not_caught_up), (0, 1));
        // a: a3 acked 10.3 s, arrived 10.6 s → 600 ms; b: b1 acked 12 s → 2000 ms
        assert_eq!((p1.recovered_clients, p1.unrecovered_clients), (2, 0));
        assert_eq!(
            (p1.recovery_max_ms, p1.recovery_p99_ms),
            (Some(2000), Some(2000))
        );
        assert_eq!(p0.recovery_max_ms, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_recovers_only_before_the_next_fault() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut a = ClientLog::default();
        let mut b = ClientLog::default();
        a.sent
            .insert("a0".into(), sent(0, 1, at(11), Some((at(12), 1))));
        b.arrived.insert("a0".into(), at(25));
        // stored, but its answer never came
        a.sent.insert("a1".into(), sent(1, 1, at(12), None));
        let timeline = vec![stored(1, 0, "a0"), stored(2, 0, "a1")];
        for v in [&mut a.view, &mut b.view] {
            v.insert(1, "a0");
            v.insert(2, "a1");
        }
        let t = tally(
            &[PairRun {
                a: &a,
                b: &b,
                timeline: &timeline,
            }],
            &[at(10), at(20)],
        );
        // a's first message after fault 1 arrived after fault 2 struck; b sent nothing
        assert_eq!((t[1].recovered_clients, t[1].unrecovered_clients), (0, 2));
        assert_eq!((t[2].recovered_clients, t[2].unrecovered_clients), (0, 2));
        assert_eq!(t[1].recovery_max_ms, None);
        assert_eq!((t[1].unanswered, t[1].unanswered_stored), (1, 1));
    }
}
