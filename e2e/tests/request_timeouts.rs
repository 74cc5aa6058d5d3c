//! WebSocket requests that get no reply (their worker role is not running) are answered
//! `unavailable` by the edge at `edge.request_timeout_ms`, once; requests of the roles that run are
//! answered by their workers as usual.

use e2e::client::{ok, Client};
use e2e::{spawn_app_with, Options};
use serde_json::json;
use std::time::{Duration, Instant};
use topics::{Response, ServerFrame};

#[tokio::test]
async fn a_request_nobody_answers_gets_unavailable_at_the_edge_deadline() {
    let mut opts = Options::default();
    opts.edge.request_timeout_ms = 1_500;
    // no presence worker: nobody consumes `online.list`
    opts.roles.retain(|r| *r != workers::Role::Presence);
    let app = spawn_app_with(opts).await;
    let (_, _, token) = app.user(0).await;
    let mut c = Client::connect(&app.ws_url(0), &token).await;

    let asked = Instant::now();
    let frame = c.request(json!({"type": "online.list"})).await;
    let waited = asked.elapsed();
    let ServerFrame::Error { code, message, .. } = &frame else {
        panic!("expected an error, got {frame:?}")
    };
    assert_eq!(code.as_str(), "unavailable", "{frame:?}");
    assert!(message.contains("did not answer in time"), "{message}");
    assert!(
        waited >= Duration::from_millis(1_500) && waited < Duration::from_secs(5),
        "answered after {waited:?}"
    );
    // the socket stays usable, and a role that runs answers as before
    assert!(matches!(
        ok(c.request(json!({"type": "ping"})).await),
        Response::Pong
    ));
    // nothing more comes for the unanswered request
    assert!(c.event(Duration::from_millis(500)).await.is_none());
    let metrics = e2e::scrape(app.internal[0]).await;
    assert_eq!(
        runtime::metrics::sample(&metrics, "sb_ws_requests_timed_out_total"),
        Some(1.0),
        "{metrics}"
    );
    c.close().await;
    app.stop().await;
}
