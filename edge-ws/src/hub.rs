//! The connections of this edge and the requests waiting for an answer. Each connection has a
//! bounded outbound queue; a client too slow to drain it is disconnected rather than allowed to
//! grow memory (policy: when full, drop the connection).

use crate::flights::Flights;
use runtime::metrics::Metrics;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;
use topics::{EdgeMessage, Id};

const SHARDS: usize = 16;
/// Requests (HTTP calls, handshakes) waiting for a worker's answer at once; past it new ones
/// are refused with `unavailable` instead of growing the map.
pub const MAX_PENDING: usize = 10_000;
/// Requests timed at once per shard (for `sb_edge_request_duration_seconds`): past it, and once
/// entries older than [`STALE`] (answers that never came) are swept, a request is not timed.
pub const MAX_TIMED: usize = 4_096;
/// A request unanswered this long is no longer timed.
pub const STALE: Duration = Duration::from_secs(60);

/// What a connection's task writes to its socket.
#[derive(Debug, Clone, PartialEq, Eq)]
///
/// Frames are WebSocket text payloads shared by reference: a frame for many connections (a
/// broadcast, a delivery to several devices) is one buffer, and writing it to a socket copies it
/// into no new string.
pub enum Outbound {
    Text(Utf8Bytes),
    /// Write the frame, then close with this reason.
    Close(Utf8Bytes, String),
}

#[derive(Clone)]
pub struct ConnHandle {
    pub user_id: Id,
    pub session_id: String,
    pub tx: mpsc::Sender<Outbound>,
    pub kill: CancellationToken,
}

/// An answer to a request an HTTP call or handshake is waiting for.
pub type Pending = oneshot::Sender<EdgeMessage>;

pub struct Hub {
    epoch: u64,
    next: AtomicU64,
    conns: Vec<Mutex<HashMap<u64, ConnHandle>>>,
    pending: Mutex<HashMap<u64, Pending>>,
    /// Requests published and not answered yet: when, and their kind (`Request::kind_index`).
    timed: Vec<Mutex<HashMap<u64, (Instant, usize)>>>,
    /// Each connection's WebSocket requests waiting for their answer ([`Flights`]), sharded by
    /// connection like `conns`.
    flights: Vec<Mutex<HashMap<u64, Flights>>>,
    metrics: Metrics,
}

impl Hub {
    pub fn new(epoch: u64, metrics: Metrics) -> Self {
        Hub {
            epoch,
            next: AtomicU64::new(1),
            conns: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            pending: Mutex::new(HashMap::new()),
            timed: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            flights: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            metrics,
        }
    }

    /// A fresh id for a connection or a request, unique across this edge's restarts.
    pub fn next_id(&self) -> u64 {
        topics::bus::conn_id(self.epoch, self.next.fetch_add(1, Ordering::Relaxed))
    }

    fn shard(&self, conn: u64) -> &Mutex<HashMap<u64, ConnHandle>> {
        &self.conns[(conn as usize) % SHARDS]
    }

    pub fn register(&self, conn: u64, handle: ConnHandle) {
        self.shard(conn).lock().expect("hub").insert(conn, handle);
        self.metrics.ws_connections.inc();
        self.metrics.ws_connections_opened.inc();
    }

    pub fn unregister(&self, conn: u64) -> Option<ConnHandle> {
        self.flights[(conn as usize) % SHARDS]
            .lock()
            .expect("hub")
            .remove(&conn);
        let h = self.shard(conn).lock().expect("hub").remove(&conn);
        if h.is_some() {
            self.metrics.ws_connections.dec();
        }
        h
    }

    pub fn len(&self) -> usize {
        self.conns
            .iter()
            .map(|s| s.lock().expect("hub").len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The id the next [`Hub::next_id`] hands out: every id handed out so far is below it.
    pub fn id_mark(&self) -> u64 {
        topics::bus::conn_id(self.epoch, self.next.load(Ordering::Relaxed))
    }

    /// The ids of the connections in the hub now.
    pub fn conn_ids(&self) -> Vec<u64> {
        self.conns
            .iter()
            .flat_map(|s| s.lock().expect("hub").keys().copied().collect::<Vec<_>>())
            .collect()
    }

    /// Frames waiting in the outbound queues: (all of them, the fullest queue's).
    pub fn queued(&self) -> (usize, usize) {
        let (mut sum, mut max) = (0, 0);
        for shard in &self.conns {
            for h in shard.lock().expect("hub").values() {
                let n = h.tx.max_capacity() - h.tx.capacity();
                sum += n;
                max = max.max(n);
            }
        }
        (sum, max)
    }

    /// Queue a frame for one connection. Unknown connections (closed, or of an earlier process)
    /// are ignored; a full queue disconnects the slow client.
    pub fn send(&self, conn: u64, msg: Outbound) -> bool {
        let handle = self.shard(conn).lock().expect("hub").get(&conn).cloned();
        match handle {
            Some(h) => self.offer(&h, msg),
            None => false,
        }
    }

    fn offer(&self, h: &ConnHandle, msg: Outbound) -> bool {
        match h.tx.try_send(msg) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.metrics.ws_slow_clients_disconnected.inc();
                h.kill.cancel();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Queue a frame for every connection; returns how many took it. Each shard is walked under
    /// its lock (a queue is offered the frame without waiting), with nothing copied per connection.
    pub fn broadcast(&self, frame: Utf8Bytes) -> usize {
        let mut n = 0;
        for shard in &self.conns {
            for h in shard.lock().expect("hub").values() {
                if self.offer(h, Outbound::Text(frame.clone())) {
                    n += 1;
                }
            }
        }
        n
    }

    /// Close every connection (shutdown).
    pub fn close_all(&self, reason: &str) {
        for shard in &self.conns {
            for h in shard.lock().expect("hub").values() {
                let _ = h.tx.try_send(Outbound::Close(
                    Utf8Bytes::from_static(""),
                    reason.to_string(),
                ));
                h.kill.cancel();
            }
        }
    }

    /// Wait for the answer to request `req`; `None` when too many requests already wait.
    pub fn expect(&self, req: u64) -> Option<oneshot::Receiver<EdgeMessage>> {
        let mut pending = self.pending.lock().expect("hub");
        if pending.len() >= MAX_PENDING {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        pending.insert(req, tx);
        Some(rx)
    }

    /// Forget a request that timed out.
    pub fn forget(&self, req: u64) {
        self.pending.lock().expect("hub").remove(&req);
    }

    /// Request `req` of kind `kind` (`Request::kind_index`) is being published now: its answer
    /// ends the time `sb_edge_request_duration_seconds` shows.
    pub fn published(&self, req: u64, kind: usize) {
        let now = Instant::now();
        let mut timed = self.timed[(req as usize) % SHARDS].lock().expect("hub");
        if timed.len() >= MAX_TIMED {
            timed.retain(|_, (at, _)| now.duration_since(*at) < STALE);
            if timed.len() >= MAX_TIMED {
                return;
            }
        }
        timed.insert(req, (now, kind));
    }

    /// Request `req` was not published after all: no answer will come.
    pub fn unpublished(&self, req: u64) {
        self.timed[(req as usize) % SHARDS]
            .lock()
            .expect("hub")
            .remove(&req);
    }

    /// WebSocket request `req` of connection `conn` is about to be published: it waits for its
    /// answer until `deadline`. False (and not tracked) when the connection already waits for
    /// [`crate::flights::MAX_IN_FLIGHT`] answers.
    pub fn track(&self, conn: u64, req: u64, rid: Option<String>, deadline: Instant) -> bool {
        self.flights[(conn as usize) % SHARDS]
            .lock()
            .expect("hub")
            .entry(conn)
            .or_default()
            .track(req, rid, deadline)
    }

    /// An answer to WebSocket request `req` of `conn` (its worker's reply, or the error for a
    /// publish that failed): true when it is the request's first, to be written; false when the
    /// request was answered already (by the edge at its deadline) or its connection is gone.
    pub fn settle(&self, conn: u64, req: u64) -> bool {
        self.flights[(conn as usize) % SHARDS]
            .lock()
            .expect("hub")
            .get_mut(&conn)
            .is_some_and(|f| f.settle(req))
    }

    /// The requests of `conn` unanswered at `now` past their deadline (their `rid`s, to answer
    /// `unavailable`), and the deadline of the oldest one still waiting.
    pub fn expire(&self, conn: u64, now: Instant) -> (Vec<Option<String>>, Option<Instant>) {
        let mut flights = self.flights[(conn as usize) % SHARDS].lock().expect("hub");
        match flights.get_mut(&conn) {
            Some(f) => (f.expire(now), f.next_deadline()),
            None => (Vec::new(), None),
        }
    }

    /// The deadline of the oldest request of `conn` waiting for its answer.
    pub fn next_deadline(&self, conn: u64) -> Option<Instant> {
        self.flights[(conn as usize) % SHARDS]
            .lock()
            .expect("hub")
            .get(&conn)
            .and_then(Flights::next_deadline)
    }

    /// Hand an answer to whoever waits for `req`; gives it back when nobody does.
    pub fn answer(&self, req: u64, msg: EdgeMessage) -> Option<EdgeMessage> {
        let published = self.timed[(req as usize) % SHARDS]
            .lock()
            .expect("hub")
            .remove(&req);
        if let Some((at, kind)) = published {
            self.metrics
                .edge_request_seconds
                .at(kind)
                .observe(at.elapsed().as_secs_f64());
        }
        let waiter = self.pending.lock().expect("hub").remove(&req);
        match waiter {
            Some(tx) => tx.send(msg).err(),
            None => Some(msg),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(cap: usize) -> (ConnHandle, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(cap);
        (
            ConnHandle {
                user_id: Id(1),
                session_id: "s".into(),
                tx,
                kill: CancellationToken::new(),
            },
            rx,
        )
    }

    #[test]
    fn routes_frames_and_drops_slow_clients() {
        let hub = Hub::new(5, Metrics::default());
        let id = hub.next_id();
        assert_eq!(topics::bus::conn_epoch(id), 5);
        let (h, mut rx) = handle(1);
        let kill = h.kill.clone();
        hub.register(id, h);
        assert_eq!(hub.len(), 1);
        assert!(hub.send(id, Outbound::Text("a".into())));
        assert_eq!(hub.queued(), (1, 1));
        assert_eq!(rx.try_recv().unwrap(), Outbound::Text("a".into()));
        assert_eq!(hub.queued(), (0, 0));
        assert_eq!(hub.broadcast("b".into()), 1);
        assert!(
            !hub.send(id, Outbound::Text("c".into())),
            "queue of 1 is full"
        );
        assert!(kill.is_cancelled(), "slow client is disconnected");
        assert!(!hub.send(12345, Outbound::Text("x".into())));
        hub.close_all("bye");
        assert!(hub.unregister(id).is_some());
        assert!(hub.unregister(id).is_none());
        assert!(hub.is_empty());
        drop(rx);
        let (h2, rx2) = handle(4);
        hub.register(7, h2);
        drop(rx2);
        assert!(!hub.send(7, Outbound::Text("x".into())), "closed receiver");
    }

    #[test]
    fn answers_pending_requests_once() {
        let hub = Hub::new(1, Metrics::default());
        let msg = EdgeMessage::Broadcast { frame: "f".into() };
        let mut rx = hub.expect(9).unwrap();
        assert!(hub.answer(9, msg.clone()).is_none());
        assert_eq!(rx.try_recv().unwrap(), msg);
        assert_eq!(
            hub.answer(9, msg.clone()),
            Some(msg.clone()),
            "nobody waits any more"
        );
        let rx2 = hub.expect(10).unwrap();
        drop(rx2);
        assert_eq!(hub.answer(10, msg.clone()), Some(msg.clone()));
        let _rx3 = hub.expect(11).unwrap();
        hub.forget(11);
        assert_eq!(hub.answer(11, msg.clone()), Some(msg));
        let held: Vec<_> = (0..MAX_PENDING as u64)
            .map(|i| hub.expect(100 + i))
            .collect();
        assert!(held.iter().all(Option::is_some));
        assert!(hub.expect(1).is_none(), "the map is bounded");
    }

    /// A connection's requests waiting for their answer go with it: once it is unregistered,
    /// nothing of it is due at any time and it has no deadline left.
    #[tokio::test(start_paused = true)]
    async fn a_closed_connection_has_no_request_left_to_expire() {
        let hub = Hub::new(1, Metrics::default());
        let (h, _rx) = handle(4);
        hub.register(3, h);
        let deadline = Instant::now() + Duration::from_secs(1);
        assert!(hub.track(3, 10, Some("r".into()), deadline));
        assert_eq!(hub.next_deadline(3), Some(deadline));
        hub.unregister(3);
        let later = deadline + Duration::from_secs(60);
        assert_eq!(hub.expire(3, later), (Vec::new(), None));
        assert_eq!(hub.next_deadline(3), None);
        assert!(!hub.settle(3, 10), "nothing left to answer");
    }

    fn timed(m: &Metrics, what: &str) -> f64 {
        let series = format!("sb_edge_request_duration_seconds_{what}{{kind=\"ping\"}}");
        runtime::metrics::sample(&m.render(), &series).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn times_each_request_from_publish_to_answer() {
        let m = Metrics::new(runtime::metrics::Role::Edge);
        let hub = Hub::new(1, m.clone());
        let send = topics::Request::Ping.kind_index();
        let msg = EdgeMessage::Broadcast { frame: "f".into() };
        hub.published(1, send);
        hub.published(2, send);
        tokio::time::advance(Duration::from_millis(3)).await;
        assert!(hub.answer(1, msg.clone()).is_some());
        hub.unpublished(2);
        assert!(hub.answer(2, msg.clone()).is_some());
        assert!(hub.answer(1, msg.clone()).is_some(), "a second answer");
        assert_eq!(timed(&m, "count"), 1.0, "one request answered once");
        assert!((timed(&m, "sum") - 0.003).abs() < 1e-6);
        let text = m.render();
        assert!(
            text.contains("sb_edge_request_duration_seconds_bucket{le=\"0.0025\",kind=\"ping\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("sb_edge_request_duration_seconds_bucket{le=\"0.005\",kind=\"ping\"} 1")
        );

        // Bounded: a full shard drops what is stale, else times no more.
        let shard = |i: u64| i * SHARDS as u64; // every id in shard 0
        for i in 0..MAX_TIMED as u64 {
            hub.published(shard(i + 10), send);
        }
        hub.published(shard(99_999), send);
        assert_eq!(hub.timed[0].lock().unwrap().len(), MAX_TIMED, "not timed");
        tokio::time::advance(STALE).await;
        hub.published(shard(99_999), send);
        assert_eq!(hub.timed[0].lock().unwrap().len(), 1, "stale ones swept");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(hub.answer(shard(99_999), msg).is_some());
        assert_eq!(timed(&m, "count"), 2.0);
    }
}
