//! `/metrics` of the real processes after real traffic: one DM over WebSocket through nginx, then
//! the edge's and the dms worker's expositions hold the histograms of that request with non-zero
//! counts, the consumer lag of the worker's group, `process_*` and the build info.

mod common;

use common::{chat, eventually};
use e2e::client::{ok, Client};
use e2e::spawn_app;
use runtime::metrics::sample;
use serde_json::json;
use std::net::SocketAddr;
use topics::{Event, Response};

/// `/metrics` of `addr`: (content type, body).
async fn scrape(addr: SocketAddr) -> (String, String) {
    let r = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{addr}");
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    (ct, r.text().await.unwrap())
}

/// The sum of every sample line of `name` (all label sets).
fn total(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn one_dm_shows_in_the_histograms_of_the_edge_and_the_worker() {
    let app = spawn_app().await;
    let c = chat(&app).await;
    let mut bob = Client::connect(&app.ws_url(1), &c.bob_token).await;
    let mut ann = Client::connect(&app.ws_url(0), &c.ann_token).await;
    let Response::Sent { .. } = ok(ann
        .request(json!({"type": "dm.send", "conversation_id": c.conv, "client_msg_id": "m1", "text": "hi"}))
        .await)
    else {
        panic!("not sent")
    };
    bob.event_where(|e| matches!(e, Event::DmMessage { .. }))
        .await;

    // The edge that published the send timed it to its reply.
    let (ct, edge) = scrape(app.internal[0]).await;
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    assert!(edge.contains("# TYPE sb_edge_request_duration_seconds histogram"));
    assert!(edge.contains("# HELP sb_edge_request_duration_seconds "));
    let sent = sample(
        &edge,
        "sb_edge_request_duration_seconds_count{kind=\"dm.send\"}",
    );
    assert_eq!(sent, Some(1.0), "{edge}");
    assert!(
        sample(
            &edge,
            "sb_edge_request_duration_seconds_bucket{le=\"10.0\",kind=\"dm.send\"}"
        ) == Some(1.0),
        "answered within 10 s: {edge}"
    );
    // a kind nobody sent is there at zero
    assert_eq!(
        sample(
            &edge,
            "sb_edge_request_duration_seconds_count{kind=\"broadcast.send\"}"
        ),
        Some(0.0)
    );
    assert!(total(&edge, "sb_kafka_produce_duration_seconds_count") >= 1.0);
    assert!(sample(&edge, "sb_ws_connections").unwrap() >= 1.0);
    // read from the hub at scrape time; ann's queue was drained when her reply was written
    assert!(sample(&edge, "sb_ws_outbound_queued").is_some(), "{edge}");
    assert!(sample(&edge, "sb_ws_outbound_queue_max").is_some());
    assert!(sample(&edge, "process_resident_memory_bytes").unwrap() > 0.0);
    assert!(edge.contains("switchboard_build_info{version=\""));
    assert!(
        !edge.contains("sb_records_consumed"),
        "edges run no consumer loop"
    );

    // Bob's edge queued the new message to his socket: its age since the commit.
    let (_, peer) = scrape(app.internal[1]).await;
    assert_eq!(
        sample(&peer, "sb_dm_delivery_duration_seconds_count"),
        Some(1.0),
        "{peer}"
    );

    // The dms worker: its handler time, the shard's transaction, its batch, its publishes.
    let dms = app.health["worker-dms"];
    let (_, worker) = scrape(dms).await;
    assert_eq!(
        sample(
            &worker,
            "sb_request_handler_duration_seconds_count{kind=\"dm.send\"}"
        ),
        Some(1.0),
        "{worker}"
    );
    assert_eq!(
        sample(&worker, "sb_requests_handled_total{kind=\"dm.send\"}"),
        Some(1.0)
    );
    // dm.open of the setup went through the same worker
    assert!(
        sample(
            &worker,
            "sb_request_handler_duration_seconds_count{kind=\"dm.open\"}"
        )
        .unwrap()
            >= 1.0
    );
    assert_eq!(total(&worker, "sb_dm_commit_duration_seconds_count"), 1.0);
    let shards = app.database.shards.len();
    for s in 0..shards {
        let series = format!("sb_dm_commit_duration_seconds_count{{shard=\"{s}\"}}");
        assert!(sample(&worker, &series).is_some(), "{series}: {worker}");
    }
    assert!(total(&worker, "sb_consumer_batch_records_count") >= 2.0);
    assert!(sample(&worker, "sb_consumer_records_in_flight").is_some());
    // (the reply can reach the edge a moment before the worker marks its batch finished)
    eventually("nothing in flight in worker-dms", || async {
        let (_, text) = scrape(dms).await;
        let idle = sample(&text, "sb_consumer_records_in_flight") == Some(0.0)
            && sample(&text, "sb_consumer_oldest_in_flight_seconds") == Some(0.0);
        idle.then_some(())
    })
    .await;
    assert!(total(&worker, "sb_kafka_produce_duration_seconds_count") >= 1.0);
    assert_eq!(sample(&worker, "sb_messages_persisted_total"), Some(1.0));
    assert!(!worker.contains("sb_ws_"), "a worker has no sockets");

    // librdkafka's statistics (every 5 s) give the group's lag per partition: all consumed.
    let group = format!("{}.worker-dms", app.prefix);
    let lag = eventually("the dms group's consumer lag", || async {
        let (_, text) = scrape(dms).await;
        let lines: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with(&format!("sb_consumer_lag{{group=\"{group}\"")))
            .map(String::from)
            .collect();
        (!lines.is_empty()).then_some(lines)
    })
    .await;
    assert!(
        lag.iter()
            .all(|l| l.contains(&format!("topic=\"{}.dms.v1\"", app.prefix))),
        "{lag:?}"
    );
    assert!(lag.iter().all(|l| l.ends_with(" 0")), "{lag:?}");

    ann.close().await;
    bob.close().await;
    app.stop().await;
}

/// `sb_mariadb_connections_in_use` / `_max` and `sb_redis_requests_in_flight` against the real
/// MariaDB and Redis Cluster: a connection held counts until it goes back (dropped, or its holder
/// cancelled), a Redis command waiting for its answer counts until answered, and the live
/// workers and router show the series.
#[tokio::test]
async fn pools_count_connections_held_and_redis_requests_waiting() {
    use mysql_async::prelude::*;
    use runtime::metrics::{Metrics, Role};
    let app = spawn_app().await;
    let metrics = Metrics::new(Role::Worker(topics::Domain::Dms));
    let db = workers::db::Shards::connect_counted(&app.database, &metrics).unwrap();
    let in_use = |shard: usize, pool: &str| {
        sample(
            &metrics.render(),
            &format!("sb_mariadb_connections_in_use{{shard=\"{shard}\",pool=\"{pool}\"}}"),
        )
    };
    let max = app.database.pool_max as f64;
    let text = metrics.render();
    for s in 0..app.database.shards.len() {
        for pool in ["primary", "replica"] {
            assert_eq!(in_use(s, pool), Some(0.0), "{text}");
            let m = format!("sb_mariadb_connections_max{{shard=\"{s}\",pool=\"{pool}\"}}");
            assert_eq!(sample(&text, &m), Some(max), "{text}");
        }
    }
    let shard = &db.all()[0];
    let mut a = shard.primary.get_conn().await.unwrap();
    let mut b = shard.primary.get_conn().await.unwrap();
    let r = shard.replica.get_conn().await.unwrap();
    assert_eq!(in_use(0, "primary"), Some(2.0));
    assert_eq!(in_use(0, "replica"), Some(1.0));
    assert_eq!(in_use(1, "primary"), Some(0.0));
    // held through a transaction on the real server
    let mut tx = a
        .start_transaction(mysql_async::TxOpts::default())
        .await
        .unwrap();
    let one: Option<u8> = tx.query_first("SELECT 1").await.unwrap();
    assert_eq!(one, Some(1));
    tx.commit().await.unwrap();
    b.query_drop("SELECT 1").await.unwrap();
    drop((a, r));
    assert_eq!(in_use(0, "primary"), Some(1.0));
    assert_eq!(in_use(0, "replica"), Some(0.0));
    drop(b);
    assert_eq!(in_use(0, "primary"), Some(0.0));
    // a statement helper gives its connection back, and so does a replica read
    workers::db::exec_drop(shard, "DO SLEEP(0)", ())
        .await
        .unwrap();
    assert_eq!(in_use(0, "primary"), Some(0.0));
    let one: Option<u8> = shard
        .on_replica(async |c| Ok(c.query_first("SELECT 1").await?))
        .await
        .unwrap();
    assert_eq!(one, Some(1));
    assert_eq!(in_use(0, "replica"), Some(0.0));
    // a holder cancelled in the middle of a statement gives it back too
    let held = tokio::time::timeout(std::time::Duration::from_millis(200), async {
        let mut c = shard.primary.get_conn().await.unwrap();
        c.query_drop("DO SLEEP(5)").await.unwrap();
    })
    .await;
    assert!(held.is_err());
    assert_eq!(in_use(0, "primary"), Some(0.0));

    // Redis: a BLPOP answered after a second is in flight until then
    let gauge = runtime::metrics::Gauge::default();
    let cluster = runtime::redis::cluster(&app.redis).unwrap().counted(&gauge);
    let mut c = cluster.get().await.unwrap();
    // a cluster has only database 0
    assert_eq!(runtime::redis::redis::aio::ConnectionLike::get_db(&c), 0);
    let key = format!("{}:in-flight", app.prefix);
    let waiting = async {
        let popped: Option<(String, String)> = runtime::redis::redis::cmd("BLPOP")
            .arg(&key)
            .arg(1)
            .query_async(&mut c)
            .await
            .unwrap();
        popped
    };
    let watch = async {
        eventually("the BLPOP in flight", || async {
            (gauge.get() == 1).then_some(())
        })
        .await;
    };
    let (popped, ()) = futures::future::join(waiting, watch).await;
    assert_eq!(popped, None);
    assert_eq!(gauge.get(), 0);
    // a pipeline is one request; the answer brings the count back
    let (n,): (i64,) = runtime::redis::redis::pipe()
        .cmd("DEL")
        .arg(&key)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(n, 0);
    assert_eq!(gauge.get(), 0);

    // the live processes show them: workers both, the router Redis only
    for process in ["worker-dms", "worker-auth", "router"] {
        let (_, text) = scrape(app.health[process]).await;
        assert!(
            sample(&text, "sb_redis_requests_in_flight").is_some(),
            "{process}: {text}"
        );
        let pools = sample(
            &text,
            "sb_mariadb_connections_max{shard=\"1\",pool=\"replica\"}",
        );
        assert_eq!(pools.is_some(), process != "router", "{process}: {text}");
    }
}
