//! Broadcast (feature 3): one message to every connected client on every edge, rate limited.

mod common;

use common::{inside_one_minute_window, rpc};
use e2e::client::{err, ok, Client};
use e2e::{spawn_app, spawn_app_with, Options};
use serde_json::json;
use std::time::Duration;
use topics::{ErrorCode, Event, Response};

#[tokio::test]
async fn a_broadcast_reaches_every_socket_on_both_edges() {
    let app = spawn_app().await;
    let (ann, ann_name, ann_token) = app.user(0).await;
    let (_, bob_name, bob_token) = app.user(1).await;
    let (_, _, cat_token) = app.user(1).await;
    let ann2 = app.http(1).login(&ann_name, common::PASSWORD).await;
    let bob2 = app.http(0).login(&bob_name, common::PASSWORD).await;
    let mut sockets = vec![
        Client::connect(&app.ws_url(0), &ann_token).await,
        Client::connect(&app.ws_url(1), &ann2).await,
        Client::connect(&app.ws_url(1), &bob_token).await,
        Client::connect(&app.ws_url(0), &bob2).await,
        Client::connect(&app.ws_url(1), &cat_token).await,
    ];
    let Response::Ok = ok(sockets[0]
        .request(json!({"type": "broadcast.send", "text": "lobby: hello all"}))
        .await)
    else {
        panic!()
    };
    for (i, s) in sockets.iter_mut().enumerate() {
        let Event::Broadcast {
            from_user_id,
            from,
            text,
            sent_at_ms,
        } = s
            .event_where(|e| matches!(e, Event::Broadcast { .. }))
            .await
        else {
            unreachable!()
        };
        assert_eq!(
            (from_user_id, from.as_str(), text.as_str()),
            (ann, ann_name.as_str(), "lobby: hello all"),
            "socket {i} on {}",
            s.edge
        );
        assert!(sent_at_ms > 0);
    }
    // Over HTTP too, to the sockets; and exactly once each.
    let (s, b) = rpc(
        &app,
        1,
        &cat_token,
        json!({"type": "broadcast.send", "text": "second"}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    for s in sockets.iter_mut() {
        let Event::Broadcast { text, .. } = s
            .event_where(|e| matches!(e, Event::Broadcast { .. }))
            .await
        else {
            unreachable!()
        };
        assert_eq!(text, "second");
        assert!(
            s.event(Duration::from_millis(300)).await.is_none(),
            "delivered once"
        );
    }

    // Bad broadcasts.
    for (text, code) in [
        ("".to_string(), ErrorCode::InvalidInput),
        (" \t ".into(), ErrorCode::InvalidInput),
        ("x".repeat(4001), ErrorCode::PayloadTooLarge),
    ] {
        assert_eq!(
            err(sockets[2]
                .request(json!({"type": "broadcast.send", "text": text}))
                .await),
            code
        );
    }
    assert_eq!(
        err(sockets[2]
            .request(json!({"type": "broadcast.send", "text": 5}))
            .await),
        ErrorCode::InvalidInput
    );
    let (s, _) = app
        .http(0)
        .post(
            "/api/v1/rpc",
            json!({"type": "broadcast.send", "text": "anonymous"}),
            None,
        )
        .await;
    assert_eq!(s, 401);
    for s in sockets.iter_mut() {
        assert!(
            s.event(Duration::from_millis(200)).await.is_none(),
            "refused broadcasts reach nobody"
        );
    }
    for s in sockets {
        s.close().await;
    }
    app.stop().await;
}

#[tokio::test]
async fn broadcasts_are_rate_limited_per_user() {
    let mut opts = Options::default();
    opts.limits.broadcasts_per_user_per_minute = 2;
    let app = spawn_app_with(opts).await;
    let (_, _, ann_token) = app.user(0).await;
    let (_, _, bob_token) = app.user(1).await;
    let mut a = Client::connect(&app.ws_url(0), &ann_token).await;
    let mut b = Client::connect(&app.ws_url(1), &bob_token).await;
    inside_one_minute_window(Duration::from_secs(10)).await;
    for i in 0..2 {
        ok(
            a.request(json!({"type": "broadcast.send", "text": format!("hello {i}")}))
                .await,
        );
    }
    assert_eq!(
        err(a
            .request(json!({"type": "broadcast.send", "text": "one too many"}))
            .await),
        ErrorCode::RateLimited
    );
    let (s, body) = rpc(
        &app,
        1,
        &ann_token,
        json!({"type": "broadcast.send", "text": "over http"}),
    )
    .await;
    assert_eq!((s, body["code"].as_str()), (429, Some("rate_limited")));
    // Per user: Bob may still broadcast.
    ok(
        b.request(json!({"type": "broadcast.send", "text": "bob here"}))
            .await,
    );
    let mut seen = Vec::new();
    while let Some(e) = b.event(Duration::from_millis(1_500)).await {
        if let Event::Broadcast { text, .. } = e {
            seen.push(text);
        }
        if seen.len() == 3 {
            break;
        }
    }
    assert_eq!(seen, vec!["hello 0", "hello 1", "bob here"]);
    assert!(b.event(Duration::from_millis(300)).await.is_none());
    a.close().await;
    b.close().await;
    app.stop().await;
}
