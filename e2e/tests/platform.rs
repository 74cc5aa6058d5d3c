//! Through nginx, against the processes `./sb` started (in `./sb test`: the instrumented
//! binaries): clients on different nginx instances and different edges, the live path, invites,
//! direct messages and a broadcast. Few sign-ups and logins: the platform runs with the default
//! rate limits.

mod common;

use e2e::client::{ok, Client, Http};
use e2e::unique;
use serde_json::json;
use std::time::Duration;
use topics::{Event, Response};

#[tokio::test]
async fn two_users_through_both_nginx_instances_and_both_edges() {
    let stack = e2e::stack();
    assert!(
        stack.edges.len() >= 2 && stack.nginx.len() >= 2,
        "needs the full platform (`./sb up`), not --infra-only: {stack:?}"
    );
    let http0 = Http::new(&format!("http://{}", stack.nginx[0]));
    let http1 = Http::new(&format!("http://{}", stack.nginx[1]));
    let (ann, ann_token) = common::signup_and_login(&http0).await;
    let (bob, bob_token) = common::signup_and_login(&http1).await;

    let mut a = Client::connect(&format!("ws://{}/ws", stack.nginx[0]), &ann_token).await;
    // nginx balances over the edges: reconnect until Bob sits on the other edge.
    let mut b = Client::connect(&format!("ws://{}/ws", stack.nginx[1]), &bob_token).await;
    for _ in 0..10 {
        if b.edge != a.edge {
            break;
        }
        b.close().await;
        b = Client::connect(&format!("ws://{}/ws", stack.nginx[1]), &bob_token).await;
    }
    assert_ne!(a.edge, b.edge, "clients on different edges");

    // The live path: each reply reaches its own socket only.
    assert_eq!(ok(a.request(json!({"type": "ping"})).await), Response::Pong);
    assert!(b.event(Duration::from_millis(300)).await.is_none());
    assert_eq!(ok(b.request(json!({"type": "ping"})).await), Response::Pong);

    // Invite by code, accepted live, then a DM both ways and a broadcast.
    let conv = common::befriend_over_ws(&mut a, &mut b, ann, bob).await;
    for (from, to, cid, text) in [(&mut a, &mut b, "m1", "hello via nginx")] {
        ok(from
            .request(json!({"type": "dm.send", "conversation_id": conv, "client_msg_id": cid, "text": text}))
            .await);
        let Event::DmMessage { message } = to
            .event_where(|e| matches!(e, Event::DmMessage { .. }))
            .await
        else {
            panic!()
        };
        assert_eq!(message.text, text);
    }
    ok(b.request(json!({"type": "dm.send", "conversation_id": conv, "client_msg_id": "m2", "text": "and back"}))
        .await);
    let Event::DmMessage { message } = a
        .event_where(|e| matches!(e, Event::DmMessage { message } if message.seq == 2))
        .await
    else {
        panic!()
    };
    assert_eq!(message.author_id, Some(bob));
    let text = format!("lobby {}", unique("b"));
    ok(a.request(json!({"type": "broadcast.send", "text": text}))
        .await);
    for c in [&mut a, &mut b] {
        c.event_where(|e| matches!(e, Event::Broadcast { text: t, .. } if *t == text))
            .await;
    }
    a.close().await;
    b.close().await;
}

/// `/metrics` is an operator endpoint: each process serves it at its own address for scrapers
/// (an edge on its internal listener, not its public port); the public nginx instances refuse it.
#[tokio::test]
async fn metrics_are_not_served_through_the_public_nginx() {
    let stack = e2e::stack();
    assert!(
        !stack.nginx.is_empty() && !stack.edges.is_empty(),
        "{stack:?}"
    );
    for n in &stack.nginx {
        let r = reqwest::get(format!("http://{n}/metrics")).await.unwrap();
        assert_eq!(r.status().as_u16(), 404, "nginx {n}");
        let body = r.text().await.unwrap();
        assert!(!body.contains("sb_"), "nginx {n} served metrics: {body}");
    }
    for edge in &stack.edges {
        let r = reqwest::get(format!("http://{}/metrics", edge.addr))
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 404, "public port of {}", edge.id);
        let internal = edge
            .metrics_addr
            .as_ref()
            .expect("stack.json names each edge's internal listener");
        let r = reqwest::get(format!("http://{internal}/metrics"))
            .await
            .unwrap();
        assert_eq!(
            r.status().as_u16(),
            200,
            "the edge serves its scraper on its internal listener"
        );
    }
}

/// Every process the launcher started says it is ready (`/readyz`, where it is scraped: an edge's
/// internal listener, a worker's or the router's health port), with the checks of its kind, and,
/// like `/metrics`, the public nginx does not serve it.
#[tokio::test]
async fn every_platform_process_is_ready() {
    let stack = e2e::stack();
    let kinds: Vec<&str> = stack.services.iter().map(|s| s.kind.as_str()).collect();
    for kind in ["edge", "worker", "router"] {
        assert!(
            kinds.contains(&kind),
            "stack.json lists no {kind}: {stack:?}"
        );
    }
    for service in &stack.services {
        let r = reqwest::get(format!("http://{}/readyz", service.health_addr))
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{}", service.name);
        let body: serde_json::Value = r.json().await.unwrap();
        let checks: &[&str] = match service.kind.as_str() {
            "edge" => &["kafka"],
            "router" => &["kafka", "redis"],
            _ => &["kafka", "redis", "mariadb"],
        };
        for c in checks {
            assert_eq!(body["checks"][c], "ok", "{}: {body}", service.name);
        }
    }
    for n in &stack.nginx {
        let r = reqwest::get(format!("http://{n}/readyz")).await.unwrap();
        assert_eq!(r.status().as_u16(), 404, "nginx {n}");
    }
}
