//! Per-client limits of an edge, through nginx: WebSocket connections per user and per source
//! address (refused with 429 `rate_limited` before the upgrade; a closed socket gives its slot
//! back), pings metered by the per-connection frame rate, and the API's request rate per session
//! and per address (429 `rate_limited` with `Retry-After`).

mod common;

use common::Raw;
use e2e::{spawn_app_with, Options, TestApp};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// Try a WebSocket handshake through `url`: the socket, or the refusal's (status, JSON body).
async fn try_connect(url: &str, token: &str) -> Result<Raw, (u16, Value)> {
    match client::Socket::connect(url, token).await {
        Ok(s) => Ok(Raw { ws: s.into_inner() }),
        Err(client::Error::Refused { status, body }) => {
            let body = body.map_or(Value::Null, |b| serde_json::to_value(b).unwrap());
            Err((status, body))
        }
        Err(e) => panic!("handshake failed: {e}"),
    }
}

/// Retry a handshake that may be refused until a slot is given back (the edge frees it when it
/// sees the socket end, a moment after the client does).
async fn connect_when_free(url: &str, token: &str) -> Raw {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match try_connect(url, token).await {
            Ok(ws) => return ws,
            Err((429, _)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(other) => panic!("slot never freed: {other:?}"),
        }
    }
}

fn assert_refused(r: Result<Raw, (u16, Value)>, about: &str) {
    let Err((status, body)) = r else {
        panic!("handshake accepted over the cap ({about})")
    };
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["code"], "rate_limited", "{body}");
    let msg = body["message"].as_str().unwrap_or_default();
    assert!(msg.contains(about), "{msg}");
}

#[tokio::test]
async fn connections_per_user_are_capped_and_a_closed_socket_frees_its_slot() {
    let mut opts = Options::default();
    opts.edge.max_connections_per_user = 3;
    let app = spawn_app_with(opts).await;
    let (user, _, token) = app.user(0).await;
    let (_, _, other) = app.user(0).await;
    let url = app.ws_url(0);
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(try_connect(&url, &token).await.expect("under the cap"));
    }
    assert_refused(try_connect(&url, &token).await, "for this user");
    // Per user: another user on the same edge and address is unaffected.
    let _o = try_connect(&url, &other).await.expect("another user");

    // A clean close gives the slot back...
    let mut first = held.remove(0);
    first.ws.close(None).await.unwrap();
    while first.ws.next().await.is_some() {}
    held.push(connect_when_free(&url, &token).await);
    assert_refused(try_connect(&url, &token).await, "for this user");
    // ...and so does a socket that just goes away.
    drop(held.remove(0));
    held.push(connect_when_free(&url, &token).await);
    assert_refused(try_connect(&url, &token).await, "for this user");
    // The sockets kept work.
    for (i, ws) in held.iter_mut().enumerate() {
        ws.still_works(&format!("w{i}")).await;
    }
    // The handshake check registered each refused connection before the cap refused it: the
    // edge took every one back out, so the registry lists the three held sockets only.
    common::eventually("only the held sockets registered", || async {
        (common::registered(&app, user).await == 3).then_some(())
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn connections_per_address_are_capped_and_a_closed_socket_frees_its_slot() {
    let mut opts = Options::default();
    opts.edge.max_connections_per_address = 3;
    let app = spawn_app_with(opts).await;
    let mut tokens = Vec::new();
    for _ in 0..4 {
        tokens.push(app.user(0).await.2);
    }
    let url = app.ws_url(0);
    // Every test client comes from 127.0.0.1 (nginx's X-Forwarded-For).
    let mut held = Vec::new();
    for t in &tokens[..3] {
        held.push(try_connect(&url, t).await.expect("under the cap"));
    }
    assert_refused(try_connect(&url, &tokens[3]).await, "from this address");
    drop(held.pop());
    let mut last = connect_when_free(&url, &tokens[3]).await;
    last.still_works("a").await;
    assert_refused(try_connect(&url, &tokens[0]).await, "from this address");
    app.stop().await;
}

#[tokio::test]
async fn pings_are_metered_by_the_frame_rate() {
    let mut opts = Options::default();
    opts.edge.frames_per_second = 20;
    opts.edge.frame_burst = 20;
    let app = spawn_app_with(opts).await;
    let (_, _, token) = app.user(0).await;
    let mut ws = Raw::connect(&app.ws_url(0), &token).await;
    let start = tokio::time::Instant::now();
    for i in 0..100u8 {
        ws.ws.feed(Message::Ping(vec![i].into())).await.unwrap();
    }
    ws.ws.flush().await.unwrap();
    // For one second count the pongs: the burst and one second's rate, not all 100.
    let mut pongs = 0;
    let second = start + Duration::from_secs(1);
    while let Ok(Some(m)) = tokio::time::timeout_at(second, ws.ws.next()).await {
        if matches!(m.expect("socket open"), Message::Pong(_)) {
            pongs += 1;
        }
    }
    assert!(
        pongs <= 42,
        "{pongs} pongs in the first second for 20/s, burst 20"
    );
    // Slowed, not refused: the connection stays and the rest is answered at the rate.
    ws.text(json!({"type": "ping", "rid": "after"}).to_string())
        .await;
    loop {
        match tokio::time::timeout(Duration::from_secs(20), ws.ws.next()).await {
            Ok(Some(Ok(Message::Pong(_)))) => pongs += 1,
            Ok(Some(Ok(Message::Text(t)))) => {
                let f: Value = serde_json::from_str(&t).unwrap();
                if f["rid"] == "after" {
                    assert_eq!(f["type"], "reply", "{f}");
                    break;
                }
            }
            Ok(Some(Ok(_))) => continue,
            other => panic!("connection ended: {other:?}"),
        }
    }
    assert_eq!(pongs, 100, "every ping answered in the end");
    assert!(
        start.elapsed() >= Duration::from_secs(3),
        "80 pings past the burst take 4 s at 20/s: {:?}",
        start.elapsed()
    );
    app.stop().await;
}

/// `n` `GET /api/v1/users/me` in a row with `token` (a fresh bogus one per call when `None`):
/// the statuses, the first 429's body and `Retry-After`, and the whole seconds the burst took
/// (rounded up: the tokens that came back meanwhile at 1/s).
async fn burst(
    app: &TestApp,
    n: usize,
    token: Option<&str>,
) -> (Vec<u16>, Option<(Value, u64)>, usize) {
    let start = tokio::time::Instant::now();
    let h = app.http(0);
    let mut statuses = Vec::new();
    let mut first_429 = None;
    for i in 0..n {
        let t = token.map_or_else(|| format!("bogus-{i}"), str::to_string);
        let resp = h
            .raw(|c, base| c.get(format!("{base}/api/v1/users/me")).bearer_auth(&t))
            .await;
        let status = resp.status().as_u16();
        if status == 429 && first_429.is_none() {
            let retry: u64 = resp
                .headers()
                .get("retry-after")
                .expect("Retry-After on a 429")
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            first_429 = Some((resp.json().await.unwrap(), retry));
        }
        statuses.push(status);
    }
    let secs = start.elapsed().as_secs_f64().ceil() as usize;
    (statuses, first_429, secs)
}

#[tokio::test]
async fn api_calls_past_the_session_rate_get_429_with_retry_after() {
    let mut opts = Options::default();
    opts.edge.api_requests_per_second_per_session = 1;
    opts.edge.api_burst_per_session = 10;
    let app = spawn_app_with(opts).await;
    let (_, _, token) = app.user(0).await;
    let (_, _, other) = app.user(0).await;
    let (statuses, first_429, secs) = burst(&app, 30, Some(&token)).await;
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert!(
        ok >= 10 && ok <= 10 + secs,
        "burst 10 at 1/s over {secs} s: {statuses:?}"
    );
    assert_eq!(&statuses[..10], &[200; 10], "{statuses:?}");
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(ok + limited, 30, "{statuses:?}");
    let (body, retry) = first_429.expect("some calls limited");
    assert_eq!(body["code"], "rate_limited", "{body}");
    assert_eq!(retry, 1, "a token a second");
    // Per session: another session from the same address goes on.
    let (s, b) = app.http(0).get("/api/v1/users/me", Some(&other)).await;
    assert_eq!(s, 200, "{b}");
    // And the limited one again after its wait.
    tokio::time::sleep(Duration::from_secs(retry)).await;
    let (s, b) = app.http(0).get("/api/v1/users/me", Some(&token)).await;
    assert_eq!(s, 200, "{b}");
    app.stop().await;
}

#[tokio::test]
async fn api_calls_past_the_address_rate_get_429_even_with_fresh_tokens() {
    let mut opts = Options::default();
    opts.edge.api_requests_per_second_per_address = 1;
    opts.edge.api_burst_per_address = 30;
    let app = spawn_app_with(opts).await;
    // A bogus token each time: only the address can limit them.
    let (statuses, first_429, secs) = burst(&app, 60, None).await;
    let first = statuses
        .iter()
        .position(|s| *s == 429)
        .unwrap_or_else(|| panic!("never limited: {statuses:?}"));
    assert!(
        statuses[..first].iter().all(|s| *s == 401),
        "unknown tokens are 401 until then: {statuses:?}"
    );
    // At most the burst (less what the readiness pings spent) and a token a second got through,
    // before the first refusal too: on a slow machine the burst's own requests take seconds.
    let passed = statuses.iter().filter(|s| **s == 401).count();
    assert!(
        first <= 30 + secs && passed <= 30 + secs,
        "burst 30 at 1/s over {secs} s: {statuses:?}"
    );
    assert_eq!(passed + statuses.iter().filter(|s| **s == 429).count(), 60);
    let (body, retry) = first_429.unwrap();
    assert_eq!(body["code"], "rate_limited", "{body}");
    assert!(retry >= 1);
    // The other edge counts on its own.
    let (s, b) = app
        .http(1)
        .post("/api/v1/rpc", json!({"type": "ping"}), None)
        .await;
    assert_eq!(s, 200, "{b}");
    app.stop().await;
}
