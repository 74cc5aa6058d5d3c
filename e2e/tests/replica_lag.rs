//! What must see a write made a moment ago reads the primary. With replication paused (every
//! replica's SQL thread stopped), an account made after the pause can be invited by its code at
//! once. (Its own file: pausing replication must not slow other tests' replica reads.)

mod common;

use common::{invite_code, rpc};
use futures::FutureExt;
use mysql_async::prelude::*;
use serde_json::json;
use std::panic::AssertUnwindSafe;

/// Stop (or start) every replica's SQL thread.
async fn replication(shards: &workers::db::Shards, statement: &str) {
    for shard in shards.all() {
        let mut c = shard.replica.get_conn().await.unwrap();
        c.query_drop(statement).await.unwrap();
    }
}

#[tokio::test]
async fn a_new_account_is_invited_by_its_code_while_replicas_lag() {
    if e2e::galera_shards(&e2e::stack()) {
        // a Galera node that falls behind stops serving reads (the workers read from Synced nodes
        // only): nothing lags to test. `./sb test` runs this file on a platform with async shards.
        eprintln!("skipped: the platform's shards are Galera clusters (`./sb up --shard-replication async`)");
        return;
    }
    let app = e2e::spawn_app().await;
    let (_, _, ann_token) = app.user(0).await;
    let shards = workers::db::Shards::connect(&app.database).unwrap();
    replication(&shards, "STOP SLAVE SQL_THREAD").await;
    // Replication restarts before any assertion can end the test, failed or not.
    let outcome = AssertUnwindSafe(async {
        let (bob, _, bob_token) = app.user(1).await;
        let code = invite_code(&app, &bob_token).await;
        let (status, body) = rpc(
            &app,
            0,
            &ann_token,
            json!({"type": "invite.send", "code": code}),
        )
        .await;
        (bob, status, body)
    })
    .catch_unwind()
    .await;
    replication(&shards, "START SLAVE SQL_THREAD").await;
    let (bob, status, body) = outcome.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["link"]["user_id"], json!(bob.to_string()));
}
