//! HTTP connections at the edge: slow and idle ones are closed, connections that have not been
//! answered yet are bounded, HTTP/2 is not spoken, and `/metrics` is only on the internal
//! listener. These talk to an edge directly (its own socket handling is what is tested; nginx in
//! front buffers request heads and bodies itself), except where nginx is named.

use e2e::{spawn_app_with, Options};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Read until the peer closes (or resets) the connection, for at most `max`: what arrived, and
/// how long after the call the connection ended (`None`: still open at `max`).
async fn until_closed(s: &mut TcpStream, max: Duration) -> (Vec<u8>, Option<Duration>) {
    let t0 = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((t0 + max).into(), s.read(&mut buf)).await {
            Err(_) => return (got, None),
            Ok(Ok(0)) | Ok(Err(_)) => return (got, Some(t0.elapsed())),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Send one request on a kept-alive connection and read its (small) answer.
async fn request(s: &mut TcpStream, head: &str) -> String {
    s.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        assert!(
            n > 0,
            "closed before answering: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some((h, body)) = text.split_once("\r\n\r\n") {
            let len: usize = h
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= len {
                return text;
            }
        }
    }
}

const HEALTHZ: &str = "GET /healthz HTTP/1.1\r\nHost: edge\r\n\r\n";

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let r = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn a_partial_request_head_is_closed_within_the_header_timeout() {
    let mut opts = Options::default();
    opts.edge.header_read_timeout_ms = 1_000;
    opts.edge.keep_alive_timeout_ms = 60_000;
    let app = spawn_app_with(opts).await;
    let edge = app.edges[0];

    // a slowloris: part of a head, then nothing
    let mut slow = TcpStream::connect(edge).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    // a socket that never sends a byte
    let mut mute = TcpStream::connect(edge).await.unwrap();
    for (name, s) in [("partial head", &mut slow), ("no bytes", &mut mute)] {
        let (got, closed) = until_closed(s, Duration::from_secs(6)).await;
        let closed = closed.unwrap_or_else(|| panic!("{name}: still open after 6 s"));
        assert!(
            closed < Duration::from_secs(4),
            "{name}: closed after {closed:?}"
        );
        assert!(
            got.is_empty(),
            "{name}: {:?}",
            String::from_utf8_lossy(&got)
        );
    }

    // on a kept-alive connection, a head that starts but does not end is closed too, long before
    // the keep-alive timeout
    let mut kept = TcpStream::connect(edge).await.unwrap();
    assert!(request(&mut kept, HEALTHZ)
        .await
        .starts_with("HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    kept.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
    let (_, closed) = until_closed(&mut kept, Duration::from_secs(6)).await;
    let closed = closed.expect("a started head on a kept-alive connection is bounded");
    assert!(closed < Duration::from_secs(4), "closed after {closed:?}");
    app.stop().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let mut opts = Options::default();
    opts.edge.header_read_timeout_ms = 30_000;
    opts.edge.keep_alive_timeout_ms = 1_500;
    let app = spawn_app_with(opts).await;
    let mut s = TcpStream::connect(app.edges[0]).await.unwrap();
    assert!(request(&mut s, HEALTHZ).await.starts_with("HTTP/1.1 200"));
    // reused within the idle time
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(request(&mut s, HEALTHZ).await.starts_with("HTTP/1.1 200"));
    let (got, closed) = until_closed(&mut s, Duration::from_secs(10)).await;
    let closed = closed.expect("an idle kept-alive connection is closed");
    assert!(
        closed >= Duration::from_millis(1_000) && closed < Duration::from_secs(5),
        "closed after {closed:?}"
    );
    assert!(got.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn a_trickled_body_is_answered_and_closed() {
    let mut opts = Options::default();
    opts.edge.header_read_timeout_ms = 1_000;
    opts.edge.request_timeout_ms = 1_000;
    let app = spawn_app_with(opts).await;
    let mut s = TcpStream::connect(app.edges[0]).await.unwrap();
    s.write_all(
        b"POST /api/v1/users HTTP/1.1\r\nHost: edge\r\ncontent-type: application/json\r\n\
content-length: 100\r\n\r\n{\"username\":",
    )
    .await
    .unwrap();
    let (got, closed) = until_closed(&mut s, Duration::from_secs(8)).await;
    let closed = closed.expect("a request whose body never ends is bounded");
    assert!(closed < Duration::from_secs(5), "closed after {closed:?}");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("\"code\":\"invalid_input\""), "{text}");
    app.stop().await;
}

#[tokio::test]
async fn connections_beyond_the_handshake_bound_are_refused() {
    let mut opts = Options::default();
    opts.edge.max_handshakes = 3;
    opts.edge.header_read_timeout_ms = 30_000;
    let app = spawn_app_with(opts).await;
    let edge = app.edges[0];
    // three half-open WebSocket upgrades hold every slot
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(edge).await.unwrap();
        s.write_all(b"GET /ws HTTP/1.1\r\nHost: edge\r\nUpgrade: websocket\r\n")
            .await
            .unwrap();
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut refused = TcpStream::connect(edge).await.unwrap();
    let (got, closed) = until_closed(&mut refused, Duration::from_secs(5)).await;
    assert!(closed.is_some(), "refused at once");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("\"code\":\"unavailable\""), "{text}");
    // connections already answered (kept alive) do not count; a freed slot takes a new one
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut next = TcpStream::connect(edge).await.unwrap();
    assert!(request(&mut next, HEALTHZ)
        .await
        .starts_with("HTTP/1.1 200"));
    let mut another = TcpStream::connect(edge).await.unwrap();
    assert!(request(&mut another, HEALTHZ)
        .await
        .starts_with("HTTP/1.1 200"));
    // the internal listener has its own slots
    assert_eq!(get(app.internal[0], "/healthz").await.0, 200);
    app.stop().await;
}

#[tokio::test]
async fn cleartext_http2_is_refused() {
    let app = spawn_app_with(Options::default()).await;
    for addr in [app.edges[0], app.internal[0]] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        // the h2c prior-knowledge preface, then an empty SETTINGS frame
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .await
            .unwrap();
        let (got, closed) = until_closed(&mut s, Duration::from_secs(5)).await;
        assert!(closed.is_some(), "{addr}: closed");
        // an HTTP/2 server answers with its SETTINGS frame (type 4 in the 4th byte)
        assert!(
            got.is_empty() || got.starts_with(b"HTTP/1.1 "),
            "{addr} spoke HTTP/2: {got:?}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn metrics_are_served_on_the_internal_listener_only() {
    let app = spawn_app_with(Options::default()).await;
    for i in 0..app.edges.len() {
        let (status, body) = get(app.edges[i], "/metrics").await;
        assert_eq!(status, 404, "public port of edge {i}: {body}");
        assert!(!body.contains("sb_"), "{body}");
        let (status, body) = get(app.internal[i], "/metrics").await;
        assert_eq!(status, 200);
        assert!(body.contains("sb_http_requests_total"), "{body}");
        // liveness on both: nginx and discovery probe the public port, scrapers the internal one
        assert_eq!(get(app.edges[i], "/healthz").await, (200, "ok".into()));
        assert_eq!(get(app.internal[i], "/healthz").await, (200, "ok".into()));
        // the internal listener serves nothing else
        assert_eq!(get(app.internal[i], "/api/v1/users/me").await.0, 404);
        let (status, _) = get(app.nginx[i].addr, "/metrics").await;
        assert_eq!(status, 404, "through nginx {i}");
    }
    app.stop().await;
}

#[tokio::test]
async fn shutdown_closes_kept_alive_connections_and_finishes() {
    let app = spawn_app_with(Options::default()).await;
    let mut kept = TcpStream::connect(app.edges[0]).await.unwrap();
    assert!(request(&mut kept, HEALTHZ)
        .await
        .starts_with("HTTP/1.1 200"));
    let t0 = Instant::now();
    app.stop().await;
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "stop took {:?}",
        t0.elapsed()
    );
    let (_, closed) = until_closed(&mut kept, Duration::from_secs(2)).await;
    assert!(
        closed.is_some(),
        "the idle connection was closed at shutdown"
    );
}

/// Through nginx a partial head never reaches an edge (nginx reads the head itself); nginx's own
/// `client_header_timeout` (10 s, as in tools/sb/nginx.py) closes it.
#[tokio::test]
async fn a_partial_request_head_through_nginx_is_closed_by_nginx() {
    let app = spawn_app_with(Options::default()).await;
    let mut slow = TcpStream::connect(app.nginx[0].addr).await.unwrap();
    slow.write_all(b"GET /api/v1/users/me HTTP/1.1\r\n")
        .await
        .unwrap();
    let (_, closed) = until_closed(&mut slow, Duration::from_secs(20)).await;
    let closed = closed.expect("nginx bounds a slow head");
    assert!(
        closed >= Duration::from_secs(8) && closed < Duration::from_secs(15),
        "closed after {closed:?}"
    );
    app.stop().await;
}

/// At shutdown an edge lets a request in progress finish, but only for its grace period (5 s):
/// one whose body never comes (here allowed 31 s by the edge's limits) does not hold the stop.
#[tokio::test]
async fn a_request_in_progress_holds_the_edge_stop_for_the_grace_period_only() {
    let mut opts = Options::default();
    opts.edge.header_read_timeout_ms = 30_000;
    let app = spawn_app_with(opts).await;
    let mut s = TcpStream::connect(app.edges[0]).await.unwrap();
    s.write_all(
        b"POST /api/v1/users HTTP/1.1\r\nHost: edge\r\ncontent-type: application/json\r\n\
content-length: 100\r\n\r\n{",
    )
    .await
    .unwrap();
    // the head is read: the request is in progress, waiting for the rest of its body
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t0 = Instant::now();
    app.stop().await;
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(15),
        "stopped after {took:?}"
    );
}
