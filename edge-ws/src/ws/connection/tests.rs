//! The connection loop driven through channels, on paused time.

use super::*;
use crate::EdgeSettings;
use futures::channel::mpsc as fmpsc;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

/// A socket made of channels: what the test sends comes out of `next()`, what the edge writes
/// goes to `out`; flushes are counted (tungstenite writes its queued close reply on flush). Once
/// the test drops `out` (the client is gone), every write fails.
struct Socket {
    rx: fmpsc::UnboundedReceiver<Result<Message, WsError>>,
    out: fmpsc::UnboundedSender<Message>,
    flushes: Arc<AtomicUsize>,
    reads: Arc<AtomicUsize>,
}

impl Stream for Socket {
    type Item = Result<Message, WsError>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let p = Pin::new(&mut self.rx).poll_next(cx);
        if let Poll::Ready(Some(_)) = p {
            self.reads.fetch_add(1, Ordering::Relaxed);
        }
        p
    }
}

impl Sink<Message> for Socket {
    type Error = WsError;
    fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        Poll::Ready(Ok(()))
    }
    fn start_send(self: Pin<&mut Self>, m: Message) -> Result<(), WsError> {
        self.out
            .unbounded_send(m)
            .map_err(|_| WsError::ConnectionClosed)
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        Poll::Ready(Ok(()))
    }
}

struct Peer {
    tx: fmpsc::UnboundedSender<Result<Message, WsError>>,
    out: fmpsc::UnboundedReceiver<Message>,
    flushes: Arc<AtomicUsize>,
    /// Messages the edge has read from the socket.
    reads: Arc<AtomicUsize>,
    ended: tokio::task::JoinHandle<Option<u16>>,
    queue: mpsc::Sender<Outbound>,
    /// The connection's own kill switch (a full queue, a revocation) and the edge's shutdown.
    kill: CancellationToken,
    stop: CancellationToken,
}

fn start(idle_timeout_ms: u64) -> Peer {
    start_with(EdgeSettings {
        idle_timeout_ms,
        ..Default::default()
    })
}

fn start_with(settings: EdgeSettings) -> Peer {
    start_on(Edge::for_tests(settings))
}

fn start_on(edge: Arc<Edge>) -> Peer {
    let (tx, rx) = fmpsc::unbounded();
    let (out_tx, out) = fmpsc::unbounded();
    let flushes = Arc::new(AtomicUsize::new(0));
    let reads = Arc::new(AtomicUsize::new(0));
    let socket = Socket {
        rx,
        out: out_tx,
        flushes: flushes.clone(),
        reads: reads.clone(),
    };
    let (queue, queued) = mpsc::channel(4);
    let ctx = ConnCtx {
        conn: 1,
        user_id: Id(1),
        session_id: "s".into(),
        peer: None,
    };
    let (kill, stop) = (CancellationToken::new(), CancellationToken::new());
    let ended = tokio::spawn(drive(edge, ctx, socket, queued, kill.clone(), stop.clone()));
    Peer {
        tx,
        out,
        flushes,
        reads,
        ended,
        queue,
        kill,
        stop,
    }
}

/// A connection's kill switch (its queue filled up) and the edge's shutdown each end it with
/// their own close code, however many frames it has written before.
#[tokio::test(start_paused = true)]
async fn a_killed_connection_and_a_stopping_edge_close_after_any_number_of_turns() {
    for (stopping, code) in [
        (false, close_code::TOO_SLOW),
        (true, close_code::GOING_AWAY),
    ] {
        let mut p = start(60_000);
        for i in 0..20 {
            p.queue
                .send(Outbound::Text(format!("f{i}").into()))
                .await
                .unwrap();
            assert_eq!(next_text(&mut p.out).await, format!("f{i}"));
        }
        if stopping {
            p.stop.cancel();
        } else {
            p.kill.cancel();
        }
        assert_eq!(until_close(&mut p.out).await, (code, 0));
        assert_eq!(p.ended.await.unwrap(), Some(code));
    }
}

/// Read what the edge writes until its close frame; (close code, pings seen).
async fn until_close(out: &mut fmpsc::UnboundedReceiver<Message>) -> (u16, usize) {
    let mut pings = 0;
    while let Some(m) = out.next().await {
        match m {
            Message::Ping(_) => pings += 1,
            Message::Close(Some(f)) => return (u16::from(f.code), pings),
            other => panic!("unexpected {other:?}"),
        }
    }
    panic!("socket ended without a close frame")
}

#[tokio::test(start_paused = true)]
async fn idle_sockets_close_exactly_at_the_idle_timeout_after_the_last_frame() {
    // Silent from the start: closed at 60 s.
    let mut p = start(60_000);
    let t0 = tokio::time::Instant::now();
    let (code, pings) = until_close(&mut p.out).await;
    assert_eq!(code, close_code::IDLE);
    assert_eq!(t0.elapsed().as_secs(), 60, "{:?}", t0.elapsed());
    // pings at 20 s and 40 s, and maybe one at 60 s when that tick wins the race with the close
    assert!((2..=3).contains(&pings), "{pings} pings");
    assert_eq!(p.ended.await.unwrap(), Some(close_code::IDLE));

    // One pong at +5 s: closed at 65 s, not at the next ping tick (80 s).
    let mut p = start(60_000);
    let t0 = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    p.tx.unbounded_send(Ok(Message::Pong(Default::default())))
        .unwrap();
    let (code, _) = until_close(&mut p.out).await;
    assert_eq!(code, close_code::IDLE);
    let at = t0.elapsed();
    assert!(
        at >= Duration::from_secs(65) && at < Duration::from_secs(66),
        "{at:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn queued_frames_go_out_with_one_flush_and_a_queued_close_still_comes_last() {
    let mut p = start(60_000);
    for t in ["a", "b", "c"] {
        p.queue.send(Outbound::Text(t.into())).await.unwrap();
    }
    p.queue
        .send(Outbound::Close("bye-frame".into(), "revoked".into()))
        .await
        .unwrap();
    let mut texts = Vec::new();
    let code = loop {
        match p.out.next().await.expect("written") {
            Message::Text(t) => texts.push(t.to_string()),
            Message::Close(Some(f)) => break u16::from(f.code),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(texts, ["a", "b", "c", "bye-frame"]);
    assert_eq!(code, close_code::REVOKED);
    assert_eq!(
        p.flushes.load(Ordering::Relaxed),
        3,
        "one flush for the three frames, then the close's frame and the close"
    );
    assert_eq!(p.ended.await.unwrap(), Some(close_code::REVOKED));
}

#[tokio::test(start_paused = true)]
async fn a_client_close_is_answered_before_the_socket_ends() {
    let mut p = start(60_000);
    let flushes_before = p.flushes.load(Ordering::Relaxed);
    p.tx.unbounded_send(Ok(Message::Close(Some(CloseFrame {
        code: CloseCode::from(4321),
        reason: "bye".into(),
    }))))
    .unwrap();
    assert_eq!(p.ended.await.unwrap(), Some(4321));
    assert!(
        p.flushes.load(Ordering::Relaxed) > flushes_before,
        "the queued close reply was flushed"
    );
    drop(p.tx);
    assert!(p.out.next().await.is_none(), "no frame of our own after it");
}

#[tokio::test(start_paused = true)]
async fn text_that_is_not_utf8_closes_with_1007() {
    let mut p = start(60_000);
    p.tx.unbounded_send(Err(WsError::Utf8("invalid utf-8 sequence".into())))
        .unwrap();
    let (code, _) = until_close(&mut p.out).await;
    assert_eq!(code, close_code::INVALID_PAYLOAD);
    assert_eq!(p.ended.await.unwrap(), Some(close_code::INVALID_PAYLOAD));
}

/// Let the connection's task run until it waits (time is paused: nothing fires meanwhile).
async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

fn limited(frames_per_second: u32, frame_burst: u32) -> Peer {
    start_with(EdgeSettings {
        frames_per_second,
        frame_burst,
        ..Default::default()
    })
}

#[tokio::test(start_paused = true)]
async fn pings_and_pongs_over_the_frame_rate_stop_reading_until_a_token_is_back() {
    let mut p = limited(2, 3);
    for i in 0..20 {
        let m = if i % 2 == 0 {
            Message::Ping(Default::default())
        } else {
            Message::Pong(Default::default())
        };
        p.tx.unbounded_send(Ok(m)).unwrap();
    }
    settle().await;
    // The burst of 3 emptied the bucket; then nothing is read.
    assert_eq!(p.reads.load(Ordering::Relaxed), 3);
    tokio::time::advance(Duration::from_millis(499)).await;
    settle().await;
    assert_eq!(
        p.reads.load(Ordering::Relaxed),
        3,
        "still waiting for a token"
    );
    tokio::time::advance(Duration::from_millis(1)).await;
    settle().await;
    assert_eq!(
        p.reads.load(Ordering::Relaxed),
        4,
        "one frame per 1/rate after that"
    );
    for _ in 0..4 {
        tokio::time::advance(Duration::from_millis(500)).await;
        settle().await;
    }
    assert_eq!(p.reads.load(Ordering::Relaxed), 8, "2 a second");
    assert!(!p.ended.is_finished(), "the connection stays");
    assert!(
        p.out.try_recv().is_err(),
        "no error frames for control frames"
    );
}

#[tokio::test(start_paused = true)]
async fn binary_frames_count_against_the_frame_rate() {
    let mut p = limited(1, 2);
    for _ in 0..4 {
        p.tx.unbounded_send(Ok(Message::binary(vec![1u8, 2])))
            .unwrap();
    }
    let mut codes = Vec::new();
    for _ in 0..4 {
        let Some(Message::Text(t)) = p.out.next().await else {
            panic!("expected an error frame")
        };
        let ServerFrame::Error { code, .. } = serde_json::from_str(t.as_str()).unwrap() else {
            panic!("expected an error frame: {t}")
        };
        codes.push(code);
    }
    assert_eq!(
        codes,
        [
            ErrorCode::InvalidInput,
            ErrorCode::InvalidInput,
            ErrorCode::RateLimited,
            ErrorCode::RateLimited
        ]
    );
    assert_eq!(
        p.reads.load(Ordering::Relaxed),
        4,
        "binary frames never pause reading"
    );
}

#[tokio::test(start_paused = true)]
async fn a_paused_socket_still_closes_at_the_idle_timeout() {
    let mut p = start_with(EdgeSettings {
        frames_per_second: 0,
        frame_burst: 1,
        idle_timeout_ms: 3_000,
        ..Default::default()
    });
    for _ in 0..3 {
        p.tx.unbounded_send(Ok(Message::Ping(Default::default())))
            .unwrap();
    }
    let (code, _) = until_close(&mut p.out).await;
    assert_eq!(code, close_code::IDLE);
    assert_eq!(
        p.reads.load(Ordering::Relaxed),
        1,
        "a rate of 0 never reads on"
    );
}

#[tokio::test(start_paused = true)]
async fn a_ping_after_text_emptied_the_bucket_pauses_reading_too() {
    let mut p = limited(1, 2);
    for _ in 0..2 {
        p.tx.unbounded_send(Ok(Message::text("nope"))).unwrap();
    }
    for _ in 0..2 {
        p.tx.unbounded_send(Ok(Message::Ping(Default::default())))
            .unwrap();
    }
    for _ in 0..2 {
        assert!(matches!(p.out.next().await, Some(Message::Text(_))));
    }
    settle().await;
    assert_eq!(
        p.reads.load(Ordering::Relaxed),
        3,
        "the first ping was over"
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    settle().await;
    assert_eq!(p.reads.load(Ordering::Relaxed), 4);
}

/// The next frame the edge writes, as text (10 s at most).
async fn next_text(out: &mut fmpsc::UnboundedReceiver<Message>) -> String {
    let m = tokio::time::timeout(Duration::from_secs(10), out.next())
        .await
        .expect("a frame in time")
        .expect("open");
    m.into_text().expect("text").to_string()
}

/// A frame whose publish still waits for the broker does not hold its socket: what the hub queues
/// meanwhile goes out at once, and when the publish fails (`message_timeout_ms`) the client gets
/// `unavailable` for that frame's `rid`, through the hub. Real time: librdkafka's own timers.
#[tokio::test]
async fn a_publish_waiting_for_the_broker_does_not_hold_the_socket() {
    let edge = Edge::without_broker(200);
    let mut peer = start_on(edge.clone());
    edge.hub.register(
        1,
        crate::hub::ConnHandle {
            user_id: Id(1),
            session_id: "s".into(),
            tx: peer.queue.clone(),
            kill: CancellationToken::new(),
        },
    );
    peer.tx
        .unbounded_send(Ok(Message::text(r#"{"type":"ping","rid":"r1"}"#)))
        .unwrap();
    while peer.reads.load(Ordering::Relaxed) == 0 {
        tokio::task::yield_now().await;
    }
    peer.queue
        .send(Outbound::Text("delivered meanwhile".into()))
        .await
        .unwrap();
    assert_eq!(next_text(&mut peer.out).await, "delivered meanwhile");
    let failed: serde_json::Value = serde_json::from_str(&next_text(&mut peer.out).await).unwrap();
    assert_eq!(failed["rid"], "r1", "{failed}");
    assert_eq!(failed["type"], "error", "{failed}");
    assert_eq!(failed["code"], "unavailable", "{failed}");
    assert_eq!(edge.metrics.ws_frames_rejected.get(), 1);
    peer.ended.abort();
}

/// A frame nobody answers is answered `unavailable` for its `rid` by the edge exactly
/// `request_timeout_ms` after it was published, once; each frame by its own deadline, from the
/// connection's one timer. Paused time: the broker is never reached, and no publish fails
/// within the test (librdkafka's timers are real time).
#[tokio::test(start_paused = true)]
async fn a_frame_without_an_answer_gets_unavailable_at_its_deadline() {
    let edge = Edge::for_tests(EdgeSettings {
        request_timeout_ms: 100,
        ..Default::default()
    });
    let mut peer = start_on(edge.clone());
    let t0 = tokio::time::Instant::now();
    let send = |rid: &str| {
        let frame = format!(r#"{{"type":"ping","rid":"{rid}"}}"#);
        peer.tx.unbounded_send(Ok(Message::text(frame))).unwrap();
    };
    send("r1");
    tokio::time::sleep(Duration::from_millis(40)).await;
    send("r2");
    let error = |text: String| -> serde_json::Value { serde_json::from_str(&text).unwrap() };
    let first = error(next_text(&mut peer.out).await);
    assert_eq!(t0.elapsed(), Duration::from_millis(100));
    assert_eq!(first["rid"], "r1", "{first}");
    assert_eq!(first["type"], "error", "{first}");
    assert_eq!(first["code"], "unavailable", "{first}");
    let second = error(next_text(&mut peer.out).await);
    assert_eq!(t0.elapsed(), Duration::from_millis(140));
    assert_eq!(second["rid"], "r2", "{second}");
    assert_eq!(second["code"], "unavailable", "{second}");
    assert_eq!(edge.metrics.ws_requests_timed_out.get(), 2);
    // nothing more: each is answered once, and the timer is idle with nothing waiting
    let more = tokio::time::timeout(Duration::from_secs(1), peer.out.next()).await;
    assert!(more.is_err(), "{more:?}");
    assert_eq!(edge.hub.next_deadline(1), None);
    peer.ended.abort();
}

/// A frame's envelope carries its deadline: `edge.request_timeout_ms` after it was wrapped, when
/// this edge answers `unavailable` if no answer came, so that a worker reaching it later drops it.
#[test]
fn a_frame_carries_the_time_its_edge_stops_waiting() {
    let edge = Edge::for_tests(EdgeSettings {
        request_timeout_ms: 1_500,
        ..Default::default()
    });
    let ctx = ConnCtx {
        conn: 7,
        user_id: topics::Id(1),
        session_id: "s".into(),
        peer: None,
    };
    let env = prepare(&edge, &ctx, r#"{"type":"ping","rid":"r1"}"#, true).expect("a ping");
    assert_eq!(env.deadline_ms, Some(env.sent_at_ms + 1_500));
    assert!(!env.expired(env.sent_at_ms + 1_500));
    assert!(env.expired(env.sent_at_ms + 1_501));
}

/// One end of an in-memory stream that counts the writes reaching it (the socket's `write`s).
struct Counted {
    inner: tokio::io::DuplexStream,
    writes: Arc<AtomicUsize>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Frames queued for a socket while it was busy reach it in one write, through the WebSocket
/// settings every connection gets ([`ws_config`]), not one write per frame.
#[tokio::test(start_paused = true)]
async fn frames_queued_together_reach_the_socket_in_one_write() {
    let (ours, theirs) = tokio::io::duplex(1 << 20);
    let writes = Arc::new(AtomicUsize::new(0));
    let edge = Edge::for_tests(EdgeSettings::default());
    let socket = WebSocketStream::from_raw_socket(
        Counted {
            inner: ours,
            writes: writes.clone(),
        },
        Role::Server,
        Some(ws_config(edge.settings.max_frame_bytes)),
    )
    .await;
    let (queue, queued) = mpsc::channel(64);
    for i in 0..20 {
        queue
            .try_send(Outbound::Text(format!("frame {i}").into()))
            .unwrap();
    }
    let ctx = ConnCtx {
        conn: 1,
        user_id: Id(1),
        session_id: "s".into(),
        peer: None,
    };
    let stop = CancellationToken::new();
    let ended = tokio::spawn(drive(
        edge,
        ctx,
        socket,
        queued,
        CancellationToken::new(),
        stop.clone(),
    ));
    let mut client = WebSocketStream::from_raw_socket(theirs, Role::Client, None).await;
    for i in 0..20 {
        let m = client.next().await.unwrap().unwrap();
        assert_eq!(m, Message::text(format!("frame {i}")));
    }
    assert_eq!(writes.load(Ordering::Relaxed), 1);
    stop.cancel();
    assert_eq!(ended.await.unwrap(), Some(close_code::GOING_AWAY));
}

/// A client that goes away without a close handshake (its stream ends), and a queue the hub no
/// longer feeds (its sender dropped), each end the connection at once with no close code and
/// nothing written.
#[tokio::test(start_paused = true)]
async fn a_vanished_client_or_a_dropped_queue_ends_the_connection_without_a_close() {
    let t0 = tokio::time::Instant::now();
    let mut p = start(60_000);
    drop(p.tx);
    assert_eq!(p.ended.await.unwrap(), None);
    assert!(p.out.next().await.is_none(), "nothing written");
    let mut p = start(60_000);
    drop(p.queue);
    assert_eq!(p.ended.await.unwrap(), None);
    assert!(p.out.next().await.is_none(), "nothing written");
    assert_eq!(
        t0.elapsed(),
        Duration::ZERO,
        "neither waited for the idle close"
    );
}

/// A client that no longer takes what the edge writes ends its connection at the first write
/// that fails, whatever was being written: a queued frame, a ping, the error frame for a bad
/// frame, or the `unavailable` answer at a request's deadline. Each ends with no close code, at
/// the moment of that write (not at the idle timeout, 60 s).
#[tokio::test(start_paused = true)]
async fn a_write_that_fails_ends_the_connection() {
    let gone = |p: Peer| {
        drop(p.out);
        (p.ended, p.tx, p.queue)
    };
    // a queued frame
    let t0 = tokio::time::Instant::now();
    let (ended, _tx, queue) = gone(start(60_000));
    queue.send(Outbound::Text("f".into())).await.unwrap();
    assert_eq!(ended.await.unwrap(), None);
    assert_eq!(t0.elapsed(), Duration::ZERO);
    // the first ping, a third of the idle timeout in
    let t0 = tokio::time::Instant::now();
    let (ended, _tx, _queue) = gone(start(60_000));
    assert_eq!(ended.await.unwrap(), None);
    assert_eq!(t0.elapsed(), Duration::from_secs(20));
    // the error frame for a binary frame
    let t0 = tokio::time::Instant::now();
    let edge = Edge::for_tests(EdgeSettings::default());
    let p = start_on(edge.clone());
    let (ended, tx, _queue) = gone(p);
    tx.unbounded_send(Ok(Message::binary(vec![1u8]))).unwrap();
    assert_eq!(ended.await.unwrap(), None);
    assert_eq!(t0.elapsed(), Duration::ZERO);
    assert_eq!(edge.metrics.ws_frames_rejected.get(), 1);
    // `unavailable` for a frame nobody answered, at its deadline
    let edge = Edge::for_tests(EdgeSettings {
        request_timeout_ms: 100,
        ..Default::default()
    });
    let (ended, tx, _queue) = gone(start_on(edge.clone()));
    tx.unbounded_send(Ok(Message::text(r#"{"type":"ping","rid":"r1"}"#)))
        .unwrap();
    assert_eq!(ended.await.unwrap(), None);
    assert_eq!(t0.elapsed(), Duration::from_millis(100));
    assert_eq!(edge.metrics.ws_requests_timed_out.get(), 1);
}

/// A frame over the connection's bound of requests waiting for their answer is refused with
/// `rate_limited` for its `rid`, and the connection goes on.
#[tokio::test(start_paused = true)]
async fn a_frame_past_the_in_flight_bound_gets_rate_limited_for_its_rid() {
    let edge = Edge::for_tests(EdgeSettings::default());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    for req in 1..=crate::flights::MAX_IN_FLIGHT as u64 {
        assert!(edge.hub.track(1, req, None, deadline));
    }
    let mut p = start_on(edge.clone());
    p.tx.unbounded_send(Ok(Message::text(r#"{"type":"ping","rid":"r9"}"#)))
        .unwrap();
    let refused: serde_json::Value = serde_json::from_str(&next_text(&mut p.out).await).unwrap();
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["rid"], "r9", "{refused}");
    assert_eq!(refused["code"], "rate_limited", "{refused}");
    assert_eq!(edge.metrics.ws_frames_rejected.get(), 1);
    assert!(!p.ended.is_finished(), "the connection stays");
    p.ended.abort();
}

/// An upgrade that never completes (the client went away after the 101) still gives its
/// connection back: out of the hub, its slots released, and its disconnection announced (here a
/// publish that fails, where no broker answers). Real time: librdkafka's own timers.
#[tokio::test]
async fn an_upgrade_that_never_completes_gives_the_connection_back() {
    let edge = Edge::without_broker(100);
    let (tx, _rx) = mpsc::channel(4);
    let kill = CancellationToken::new();
    edge.hub.register(
        7,
        crate::hub::ConnHandle {
            user_id: Id(1),
            session_id: "s".into(),
            tx,
            kill: kill.clone(),
        },
    );
    let user = edge.limits.user_conns.acquire(Id(1), 1).unwrap();
    let address = edge.limits.address_conns.acquire("1.2.3.4".into(), 1);
    let ctx = ConnCtx {
        conn: 7,
        user_id: Id(1),
        session_id: "s".into(),
        peer: Some("1.2.3.4".into()),
    };
    // a request that was never upgraded: its upgrade fails at once
    let on_upgrade = warp::hyper::upgrade::on(warp::http::Request::new(()));
    let (_queue, queued) = mpsc::channel(4);
    run(
        edge.clone(),
        ctx,
        on_upgrade,
        (queued, kill),
        (user, address),
        CancellationToken::new(),
    )
    .await;
    assert_eq!(edge.hub.len(), 0, "unregistered");
    assert_eq!(edge.limits.user_conns.held(&Id(1)), 0);
    assert_eq!(edge.limits.address_conns.held(&"1.2.3.4".to_string()), 0);
    assert_eq!(
        edge.metrics.publish_failures.get(),
        1,
        "disconnection announced"
    );
}
