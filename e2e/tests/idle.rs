//! Idle timeout with ping/pong (brief section 5): a client that reads answers the edge's pings
//! and stays; one that never reads never answers, and is closed.

mod common;

use common::{Raw, Read};
use e2e::client::{ok, Client};
use e2e::{spawn_app_with, Options};
use serde_json::json;
use std::time::Duration;
use topics::Response;

#[tokio::test]
async fn reading_clients_stay_and_silent_ones_are_closed() {
    let mut opts = Options::default();
    opts.edge.idle_timeout_ms = 1_500;
    let app = spawn_app_with(opts).await;
    let (_, _, token) = app.user(0).await;
    let mut reader = Client::connect(&app.ws_url(0), &token).await;
    let mut silent = Raw::connect(&app.ws_url(1), &token).await;

    // The reader sends nothing for 4 s, but reads — and so answers every ping.
    assert!(reader.event(Duration::from_secs(4)).await.is_none());
    // The silent client never read in that time, so it never answered a ping.
    assert_eq!(
        ok(reader.request(json!({"type": "ping"})).await),
        Response::Pong,
        "a reading client outlives the idle timeout"
    );
    match silent.read(Duration::from_secs(5)).await {
        Read::Closed(code) => assert_eq!(code, Some(4000), "closed for idleness"),
        Read::Eof => {}
        Read::Frame(f) => panic!("unexpected frame {f:?}"),
        Read::Nothing => panic!("the silent client was not closed"),
    }
    reader.close().await;
    app.stop().await;
}
