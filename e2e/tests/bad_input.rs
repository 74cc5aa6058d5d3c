//! Bad input on the wire (feature 4, brief section 4): every malformed WebSocket frame or HTTP
//! request gets a typed error, changes nothing, and the connection keeps working.

mod common;

use common::{Raw, Read};
use e2e::{spawn_app, spawn_app_with, Options};
use serde_json::json;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use topics::validate::{FRAME_MAX, REQUEST_MAX};
use topics::{ErrorCode, Response, ServerFrame};

#[tokio::test]
async fn malformed_frames_get_typed_errors_and_the_socket_keeps_working() {
    let app = spawn_app().await;
    let (_, _, token) = app.user(0).await;
    let mut ws = Raw::connect(&app.ws_url(0), &token).await;

    // (frame, the rid the error must carry)
    let long_rid = "r".repeat(65);
    let cases: Vec<(String, Option<&str>)> = vec![
        ("not json at all".into(), None),
        (r#"{"type":"ping","rid":"b1""#.into(), None),
        ("[1,2,3]".into(), None),
        ("".into(), None),
        (json!({"rid": "u1", "type": "no.such.thing"}).to_string(), Some("u1")),
        (json!({"rid": "u2"}).to_string(), Some("u2")),
        // A number is not a type (serde would take 7 as the index of session.logout_all).
        (json!({"rid": "u3", "type": 7}).to_string(), Some("u3")),
        (json!({"rid": "u4", "type": 0}).to_string(), Some("u4")),
        // Numbers where string ids are expected.
        (
            json!({"rid": "w1", "type": "dm.open", "user_id": 42}).to_string(),
            Some("w1"),
        ),
        (
            json!({"rid": "w2", "type": "dm.history", "conversation_id": 9}).to_string(),
            Some("w2"),
        ),
        (
            json!({"rid": "w3", "type": "invite.respond", "user_id": "12", "accept": "yes"})
                .to_string(),
            Some("w3"),
        ),
        (
            json!({"rid": "w4", "type": "dm.open", "user_id": "not-a-number"}).to_string(),
            Some("w4"),
        ),
        // Ids have one spelling: no sign, no leading zero.
        (
            json!({"rid": "w5", "type": "dm.open", "user_id": "+42"}).to_string(),
            Some("w5"),
        ),
        (
            json!({"rid": "w6", "type": "dm.history", "conversation_id": "042"}).to_string(),
            Some("w6"),
        ),
        // Missing fields.
        (json!({"rid": "m1", "type": "dm.send"}).to_string(), Some("m1")),
        (
            json!({"rid": "m2", "type": "invite.send"}).to_string(),
            Some("m2"),
        ),
        (
            json!({"rid": "m3", "type": "dm.read", "conversation_id": "5"}).to_string(),
            Some("m3"),
        ),
        // HTTP-only and internal requests are not frames.
        (
            json!({"rid": "h1", "type": "session.login", "username": "a", "password": "b"})
                .to_string(),
            Some("h1"),
        ),
        (
            json!({"rid": "h2", "type": "session.verify"}).to_string(),
            Some("h2"),
        ),
        (
            json!({"rid": "h3", "type": "user.create", "username": "abc", "password": "pass-word-9"})
                .to_string(),
            Some("h3"),
        ),
        // A request id longer than 64 bytes cannot be echoed.
        (
            json!({"rid": long_rid, "type": "ping"}).to_string(),
            None,
        ),
        // A rid that is not a string is ignored.
        (json!({"rid": 5, "type": "ping"}).to_string(), None),
    ];
    for (i, (frame, rid)) in cases.iter().enumerate() {
        ws.text(frame.clone()).await;
        let (got_rid, code) = ws.error().await;
        assert_eq!(code, ErrorCode::InvalidInput, "{frame}");
        assert_eq!(got_rid.as_deref(), *rid, "{frame}");
        ws.still_works(&format!("ok{i}")).await;
    }

    // Binary frames are refused the same way.
    ws.send(Message::binary(vec![0u8, 159, 146, 150])).await;
    let (rid, code) = ws.error().await;
    assert_eq!((rid, code), (None, ErrorCode::InvalidInput));
    ws.still_works("after-binary").await;
    // Pings from the client are fine and answered by the protocol, not by an error frame.
    ws.send(Message::Ping(b"hi".to_vec().into())).await;
    ws.still_works("after-ping").await;
    app.stop().await;
}

#[tokio::test]
async fn oversized_frames_are_refused_and_too_big_ones_cost_the_connection() {
    let app = spawn_app().await;
    let (_, _, token) = app.user(1).await;
    let mut ws = Raw::connect(&app.ws_url(1), &token).await;

    // Over the request limit (16 KiB) but within the message limit (64 KiB): a typed error,
    // and the socket stays.
    let (request_max, frame_max) = (REQUEST_MAX, FRAME_MAX);
    let big =
        json!({"rid": "big", "type": "ping", "pad": "x".repeat(request_max + 1024)}).to_string();
    assert!(big.len() > request_max && big.len() < frame_max);
    ws.text(big).await;
    assert_eq!(
        ws.error().await,
        (Some("big".into()), ErrorCode::PayloadTooLarge)
    );
    ws.still_works("after-big").await;
    // Just under the request limit is a normal frame.
    let fits =
        json!({"rid": "fits", "type": "ping", "pad": "x".repeat(request_max - 100)}).to_string();
    assert!(fits.len() <= request_max);
    ws.text(fits).await;
    assert!(matches!(
        ws.frame().await,
        ServerFrame::Reply { rid: Some(r), data: Response::Pong } if r == "fits"
    ));

    // Over the message limit: closed with 1009 (message too big).
    let huge =
        json!({"rid": "huge", "type": "ping", "pad": "x".repeat(frame_max + 1024)}).to_string();
    ws.text(huge).await;
    match ws.read(Duration::from_secs(10)).await {
        Read::Closed(code) => assert_eq!(code, Some(1009)),
        other => panic!("expected close 1009, got {other:?}"),
    }
    app.stop().await;
}

#[tokio::test]
async fn frames_are_rate_limited_per_connection() {
    let mut opts = Options::default();
    opts.edge.frames_per_second = 2;
    opts.edge.frame_burst = 2;
    let app = spawn_app_with(opts).await;
    let (_, _, token) = app.user(0).await;
    let mut ws = Raw::connect(&app.ws_url(0), &token).await;
    let mut other = Raw::connect(&app.ws_url(0), &token).await;
    for i in 0..6 {
        ws.text(json!({"type": "ping", "rid": format!("p{i}")}).to_string())
            .await;
    }
    let (mut pongs, mut limited) = (Vec::new(), Vec::new());
    while pongs.len() + limited.len() < 6 {
        match ws.frame().await {
            ServerFrame::Reply {
                rid: Some(r),
                data: Response::Pong,
            } => pongs.push(r),
            ServerFrame::Error {
                rid: Some(r),
                code: ErrorCode::RateLimited,
                ..
            } => limited.push(r),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        pongs.len() >= 2 && pongs.len() <= 3,
        "burst of 2: {pongs:?}"
    );
    assert!(limited.len() >= 3, "the rest are limited: {limited:?}");
    assert!(pongs.contains(&"p0".to_string()) && pongs.contains(&"p1".to_string()));
    // Per connection: another socket of the same user is unaffected.
    other.still_works("other").await;
    // The bucket refills.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    ws.still_works("later").await;
    app.stop().await;
}

#[tokio::test]
async fn bad_http_requests_get_typed_errors() {
    let app = spawn_app().await;
    let (_, _, token) = app.user(0).await;
    let h = app.http(1);
    let code = |b: &serde_json::Value| b["code"].as_str().unwrap_or("").to_string();

    // Bad JSON bodies.
    for path in ["/api/v1/users", "/api/v1/sessions", "/api/v1/rpc"] {
        let (s, b) = h.post_raw(path, b"{not json".to_vec(), Some(&token)).await;
        assert_eq!(
            (s, code(&b).as_str()),
            (400, "invalid_input"),
            "{path}: {b}"
        );
    }
    let (s, b) = h
        .post_raw("/api/v1/rpc", vec![0xff, 0xfe], Some(&token))
        .await;
    assert_eq!((s, code(&b).as_str()), (400, "invalid_input"), "{b}");
    let (s, b) = h
        .post(
            "/api/v1/rpc",
            json!({"type": "dm.open", "user_id": 1}),
            Some(&token),
        )
        .await;
    assert_eq!((s, code(&b).as_str()), (400, "invalid_input"), "{b}");
    let (s, _) = h
        .post(
            "/api/v1/rpc",
            json!({"type": "session.verify"}),
            Some(&token),
        )
        .await;
    assert_eq!(s, 400, "internal requests are not callable");

    // A path id in another spelling than the canonical one names nobody: refused, not looked up.
    for path in [
        "/api/v1/users/+7",
        "/api/v1/users/007",
        "/api/v1/users/%2B7",
    ] {
        let (s, b) = h.get(path, Some(&token)).await;
        assert_eq!(
            (s, code(&b).as_str()),
            (400, "invalid_input"),
            "{path}: {b}"
        );
    }

    // Unknown endpoints and methods.
    for path in [
        "/api/v1/nope",
        "/api/v1/users/1/2",
        "/api/v2/users/me",
        "/nope",
    ] {
        let (s, b) = h.get(path, Some(&token)).await;
        assert_eq!((s, code(&b).as_str()), (404, "not_found"), "{path}: {b}");
    }
    let (s, _) = h.delete("/api/v1/online", Some(&token)).await;
    assert_eq!(s, 404);

    // Bodies over 64 KiB.
    let big =
        serde_json::to_vec(&json!({"type": "ping", "pad": "x".repeat(FRAME_MAX + 1024)})).unwrap();
    for path in ["/api/v1/rpc", "/api/v1/users"] {
        let (s, b) = h.post_raw(path, big.clone(), Some(&token)).await;
        assert_eq!(
            (s, code(&b).as_str()),
            (413, "payload_too_large"),
            "{path}: {b}"
        );
    }

    // No session, or a bad one.
    for (path, auth) in [
        ("/api/v1/users/me", None),
        ("/api/v1/sessions", None),
        ("/api/v1/online", None),
        ("/api/v1/users/me", Some("garbage")),
        ("/api/v1/users/me", Some("")),
    ] {
        let (s, b) = h.get(path, auth).await;
        assert_eq!(
            (s, code(&b).as_str()),
            (401, "unauthorized"),
            "{path} {auth:?}: {b}"
        );
    }
    for frame in [
        json!({"type": "dm.list"}),
        json!({"type": "session.refresh"}),
    ] {
        let (s, _) = h.post("/api/v1/rpc", frame.clone(), None).await;
        assert_eq!(s, 401, "{frame}");
    }
    let (s, _) = h.delete("/api/v1/users/me", None).await;
    assert_eq!(s, 401);
    let resp = h
        .raw(|c, base| {
            c.get(format!("{base}/api/v1/users/me"))
                .header("authorization", format!("Basic {token}"))
        })
        .await;
    assert_eq!(resp.status().as_u16(), 401, "only bearer tokens count");

    // Browsers from origins not on the allowlist: 403, even with a valid session.
    let with_origin = |origin: &'static str| {
        let token = token.clone();
        move |c: &reqwest::Client, base: String| {
            c.get(format!("{base}/api/v1/users/me"))
                .bearer_auth(token)
                .header("origin", origin)
        }
    };
    let resp = h.raw(with_origin("http://evil.example")).await;
    assert_eq!(resp.status().as_u16(), 403);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "forbidden");
    let resp = h.raw(with_origin("http://allowed.example")).await;
    assert_eq!(resp.status().as_u16(), 200);
    let resp = h
        .raw(|c, base| {
            c.post(format!("{base}/api/v1/users"))
                .header("origin", "http://evil.example")
                .json(&json!({"username": e2e::unique("o"), "password": "pass-word-1"}))
        })
        .await;
    assert_eq!(resp.status().as_u16(), 403, "sign-up from a foreign origin");

    // After all that, the edge still serves.
    assert_eq!(h.get("/api/v1/users/me", Some(&token)).await.0, 200);
    app.stop().await;
}
