//! The live path: a frame through an edge, Kafka, a worker and back to the right socket.

use e2e::client::{connect, ok, Client};
use e2e::spawn_app;
use serde_json::json;
use topics::Response;

#[tokio::test]
async fn ping_goes_through_kafka_and_a_worker_to_the_right_socket() {
    let app = spawn_app().await;
    let (_, _, t1) = app.user(0).await;
    let (_, _, t2) = app.user(1).await;
    let mut a = Client::connect(&app.ws_url(0), &t1).await;
    let mut b = Client::connect(&app.ws_url(1), &t2).await;
    assert_eq!(a.edge, "edge-0");
    assert_eq!(b.edge, "edge-1");
    assert_eq!(ok(a.request(json!({"type": "ping"})).await), Response::Pong);
    // b must not see a's reply.
    assert!(b
        .event(std::time::Duration::from_millis(500))
        .await
        .is_none());
    assert_eq!(ok(b.request(json!({"type": "ping"})).await), Response::Pong);
    a.close().await;
    b.close().await;
    app.stop().await;
}

#[tokio::test]
async fn handshakes_without_a_valid_session_or_from_foreign_origins_are_refused() {
    let app = spawn_app().await;
    let (_, _, token) = app.user(0).await;
    assert_eq!(connect(&app.ws_url(0), None, None).await.err(), Some(401));
    assert_eq!(
        connect(&app.ws_url(0), Some("not-a-token"), None)
            .await
            .err(),
        Some(401)
    );
    assert_eq!(
        connect(&app.ws_url(1), Some(&token), Some("http://evil.example"))
            .await
            .err(),
        Some(403)
    );
    let c = connect(&app.ws_url(1), Some(&token), Some("http://allowed.example"))
        .await
        .expect("allowed origin");
    c.close().await;
    app.stop().await;
}
