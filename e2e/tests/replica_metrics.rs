//! `sb_mariadb_replica_lag_seconds` and `sb_mariadb_replica_up` read the real replicas: the users
//! worker's scrape shows each shard's replica caught up, then a replica held back (its SQL thread
//! waiting on a table lock while applying a write stamped ten minutes ago) at least that far
//! behind, then caught up again once released; a replica nobody answers at shows `up` 0 and an
//! unknown lag. (Its own file: holding a replica back must not slow other tests' replica reads.)

mod common;

use common::eventually;
use futures::FutureExt;
use mysql_async::prelude::*;
use runtime::metrics::{sample, Metrics, Role};
use std::panic::AssertUnwindSafe;
use topics::Domain;

fn lag(text: &str, shard: usize) -> Option<f64> {
    sample(
        text,
        &format!("sb_mariadb_replica_lag_seconds{{shard=\"{shard}\"}}"),
    )
}

fn up(text: &str, shard: usize) -> Option<f64> {
    sample(text, &format!("sb_mariadb_replica_up{{shard=\"{shard}\"}}"))
}

/// Why these tests do nothing on a platform with Galera shards: they read `SHOW REPLICA STATUS` of
/// GTID replicas. `./sb test` runs this file on a platform with async shards.
const ASYNC_ONLY: &str =
    "the platform's shards are Galera clusters, without GTID replicas (`./sb up --shard-replication async`)";

/// How far the write that holds the replica back is stamped in the past.
const STAMPED_AGO: u64 = 600;

#[tokio::test]
async fn the_users_worker_shows_how_far_each_real_replica_is_behind() {
    if e2e::galera_shards(&e2e::stack()) {
        eprintln!("skipped: {}", ASYNC_ONLY);
        return;
    }
    let app = e2e::spawn_app().await;
    let shards = workers::db::Shards::connect(&app.database).unwrap();
    assert!(
        shards.all().iter().all(|s| s.has_replica),
        "the stack has a replica per shard"
    );
    let users = app.health["worker-users"];
    // caught up: every replica answers, at most a few seconds behind
    eventually("every replica up and caught up", || async {
        let text = e2e::scrape(users).await;
        (0..shards.all().len())
            .all(|i| up(&text, i) == Some(1.0) && lag(&text, i).is_some_and(|l| l < 5.0))
            .then_some(())
    })
    .await;
    // other workers do not ask
    let dms = e2e::scrape(app.health["worker-dms"]).await;
    assert!(!dms.contains("sb_mariadb_replica"), "{dms}");

    let shard = &shards.all()[1];
    let mut primary = shard.primary.get_conn().await.unwrap();
    primary
        .query_drop("CREATE TABLE lag_probe (id INT PRIMARY KEY)")
        .await
        .unwrap();
    let mut replica = shard.replica.get_conn().await.unwrap();
    for tries in 0.. {
        let t: Option<String> = replica
            .query_first("SHOW TABLES LIKE 'lag_probe'")
            .await
            .unwrap();
        if t.is_some() {
            break;
        }
        assert!(tries < 150, "the replica never got the table");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // the replica's SQL thread will wait for this lock to apply the next write
    replica
        .query_drop("LOCK TABLES lag_probe READ")
        .await
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    primary
        .query_drop(format!("SET TIMESTAMP = {}", now - STAMPED_AGO))
        .await
        .unwrap();
    primary
        .query_drop("INSERT INTO lag_probe VALUES (1)")
        .await
        .unwrap();
    // The lock goes before any assertion can end the test, failed or not.
    let behind = AssertUnwindSafe(eventually("shard 1's replica behind", || async {
        let text = e2e::scrape(users).await;
        let l = lag(&text, 1)?;
        (l >= (STAMPED_AGO - 60) as f64 && up(&text, 1) == Some(1.0)).then_some((l, lag(&text, 0)))
    }))
    .catch_unwind()
    .await;
    replica.query_drop("UNLOCK TABLES").await.unwrap();
    primary.query_drop("SET TIMESTAMP = DEFAULT").await.unwrap();
    let (l, other) = behind.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    assert!(l <= (STAMPED_AGO + 60) as f64, "{l}");
    assert!(
        other.is_some_and(|o| o < 5.0),
        "shard 0 is not held: {other:?}"
    );
    eventually("shard 1's replica caught up again", || async {
        let text = e2e::scrape(users).await;
        lag(&text, 1).is_some_and(|l| l < 5.0).then_some(())
    })
    .await;
    let applied: Option<u32> = replica
        .query_first("SELECT id FROM lag_probe")
        .await
        .unwrap();
    assert_eq!(applied, Some(1));
}

#[tokio::test]
async fn a_replica_that_does_not_answer_shows_down_with_an_unknown_lag() {
    if e2e::galera_shards(&e2e::stack()) {
        eprintln!("skipped: {}", ASYNC_ONLY);
        return;
    }
    let app = e2e::spawn_app().await;
    let mut settings = app.database.clone();
    // nothing listens there: the connection is refused
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    settings.shards[0].replica = Some(addr.to_string());
    let metrics = Metrics::new(Role::Worker(Domain::Users));
    let shards = workers::db::Shards::connect_counted(&settings, &metrics).unwrap();
    let probe = shards.replica_probe(&metrics);
    let t0 = std::time::Instant::now();
    probe().await;
    assert!(t0.elapsed() <= workers::db::REPLICA_STATUS_TIMEOUT * 2);
    let text = metrics.render();
    assert_eq!(up(&text, 0), Some(0.0), "{text}");
    assert!(lag(&text, 0).is_some_and(f64::is_nan), "{text}");
    // shard 1's replica answers (how far behind it is depends on the test above, which holds
    // that replica back on purpose while it runs beside this one)
    assert_eq!(up(&text, 1), Some(1.0), "{text}");
    assert!(lag(&text, 1).is_some_and(f64::is_finite), "{text}");
    // a primary asked for a replica's status is not a replica
    let lag0 = workers::db::Shard {
        replica: shards.all()[1].primary.clone(),
        ..shards.all()[1].clone()
    }
    .replica_lag(workers::db::REPLICA_STATUS_TIMEOUT)
    .await;
    assert!(lag0.unwrap_err().contains("not a replica"));
    // a shard without a replica has no series
    settings.shards[0].replica = None;
    let metrics = Metrics::new(Role::Worker(Domain::Users));
    let shards = workers::db::Shards::connect_counted(&settings, &metrics).unwrap();
    shards.replica_probe(&metrics)().await;
    let text = metrics.render();
    assert_eq!(up(&text, 0), None, "{text}");
    assert_eq!(up(&text, 1), Some(1.0), "{text}");
}
