//! `/readyz` of each kind of process against the real servers: ready once it is built and its
//! dependencies answer; 503 naming the dependency that does not.

use e2e::client::Http;
use e2e::{spawn_app, TestApp};
use serde_json::Value;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A loopback address nothing listens on.
fn free_addr() -> String {
    e2e::free_addr().to_string()
}

async fn readyz(addr: &str) -> (u16, Value) {
    Http::new(&format!("http://{addr}"))
        .get("/readyz", None)
        .await
}

/// Poll `/readyz` until it answers `want` with the process running (its checks registered).
async fn until(addr: &str, want: u16) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let answer = reqwest::get(format!("http://{addr}/readyz")).await;
        if let Ok(resp) = answer {
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            if status == want && body["state"] == "running" {
                return body;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{addr}/readyz never answered {want} while running"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn worker_settings(app: &TestApp, health: &str) -> workers::Settings {
    workers::Settings {
        kafka: app.kafka.clone(),
        redis: app.redis.clone(),
        database: app.database.clone(),
        service: runtime::ServiceSettings {
            name: "worker-users".into(),
            health_listen: health.into(),
        },
        limits: Default::default(),
        log: Default::default(),
        trace: Default::default(),
    }
}

#[tokio::test]
async fn every_kind_of_process_is_ready_when_its_dependencies_answer() {
    let app = spawn_app().await;
    for internal in &app.internal {
        let (status, body) = readyz(&internal.to_string()).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["checks"]["kafka"], "ok", "{body}");
    }

    let stop = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    let worker = free_addr();
    let settings = worker_settings(&app, &worker);
    let s = stop.clone();
    tasks.spawn(async move {
        workers::run(workers::Role::Users, settings, s)
            .await
            .unwrap()
    });
    let router = free_addr();
    let rs = router::Settings {
        kafka: app.kafka.clone(),
        redis: app.redis.clone(),
        service: runtime::ServiceSettings {
            name: "router".into(),
            health_listen: router.clone(),
        },
        router: Default::default(),
        log: Default::default(),
        trace: Default::default(),
    };
    let s = stop.clone();
    tasks.spawn(async move { router::run(rs, s).await.unwrap() });

    let body = until(&worker, 200).await;
    for dep in ["kafka", "redis", "mariadb"] {
        assert_eq!(body["checks"][dep], "ok", "{body}");
    }
    let body = until(&router, 200).await;
    for dep in ["kafka", "redis"] {
        assert_eq!(body["checks"][dep], "ok", "{body}");
    }
    stop.cancel();
    while tasks.join_next().await.is_some() {}
}

#[tokio::test]
async fn a_worker_whose_shard_is_down_is_not_ready_and_says_which() {
    let app = spawn_app().await;
    let health = free_addr();
    let mut settings = worker_settings(&app, &health);
    // nothing listens at shard 1's only server (a Galera shard's other node would take over)
    settings.database.shards[1] = workers::settings::ShardSettings {
        primary: free_addr(),
        ..Default::default()
    };
    let stop = CancellationToken::new();
    let s = stop.clone();
    let worker = tokio::spawn(async move {
        workers::run(workers::Role::Users, settings, s)
            .await
            .unwrap()
    });
    let body = until(&health, 503).await;
    assert_eq!(body["ready"], false, "{body}");
    assert_eq!(body["checks"]["kafka"], "ok", "{body}");
    assert_eq!(body["checks"]["redis"], "ok", "{body}");
    let why = body["checks"]["mariadb"].as_str().unwrap();
    assert!(why.starts_with("shard 1: "), "{why}");
    assert!(!why.contains("shard 0"), "{why}");
    stop.cancel();
    worker.await.unwrap();
}

#[tokio::test]
async fn a_router_whose_redis_is_down_is_not_ready_and_says_which() {
    let app = spawn_app().await;
    let health = free_addr();
    let mut redis = app.redis.clone();
    redis.nodes = vec![format!("redis://{}", free_addr())];
    let rs = router::Settings {
        kafka: app.kafka.clone(),
        redis,
        service: runtime::ServiceSettings {
            name: "router".into(),
            health_listen: health.clone(),
        },
        router: Default::default(),
        log: Default::default(),
        trace: Default::default(),
    };
    let stop = CancellationToken::new();
    let s = stop.clone();
    let router = tokio::spawn(async move { router::run(rs, s).await.unwrap() });
    let body = until(&health, 503).await;
    assert_eq!(body["checks"]["kafka"], "ok", "{body}");
    assert_ne!(body["checks"]["redis"], "ok", "{body}");
    // liveness checks nothing: the process is up
    let (status, _) = Http::new(&format!("http://{health}"))
        .get("/healthz", None)
        .await;
    assert_eq!(status, 200);
    // and the scrape says which dependency is down
    let text = e2e::scrape(health).await;
    assert_eq!(
        runtime::metrics::sample(&text, "sb_dependency_up{dependency=\"redis\"}"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        runtime::metrics::sample(&text, "sb_dependency_up{dependency=\"kafka\"}"),
        Some(1.0)
    );
    stop.cancel();
    router.await.unwrap();
}

/// The Kafka check every process registers, asked through a real `/readyz` of a process whose
/// brokers are a port where nothing listens (a worker or edge that cannot reach Kafka at start
/// never gets past building its topics, and stays "starting": not ready either).
#[tokio::test]
async fn kafka_unreachable_makes_readyz_503_naming_kafka() {
    let app = spawn_app().await;
    let mut kafka = app.kafka.clone();
    kafka.brokers = free_addr();
    let dead =
        runtime::kafka::Publisher::new(&kafka, runtime::metrics::Metrics::default()).unwrap();
    let live =
        runtime::kafka::Publisher::new(&app.kafka, runtime::metrics::Metrics::default()).unwrap();
    let stop = CancellationToken::new();
    let readiness = runtime::health::Readiness::new(stop.clone());
    let until_stop = CancellationToken::new();
    let (addr, server) = runtime::health::serve(
        "127.0.0.1:0",
        runtime::metrics::Metrics::new(runtime::metrics::Role::Edge),
        readiness.clone(),
        until_stop.clone(),
    )
    .await
    .unwrap();
    readiness.set(vec![runtime::health::kafka(&live)]);
    let (status, body) = readyz(&addr.to_string()).await;
    assert_eq!(status, 200, "{body}");
    readiness.set(vec![runtime::health::kafka(&dead)]);
    let (status, body) = readyz(&addr.to_string()).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["state"], "running", "{body}");
    assert_ne!(body["checks"]["kafka"], "ok", "{body}");
    let (status, _) = Http::new(&format!("http://{addr}"))
        .get("/healthz", None)
        .await;
    assert_eq!(status, 200);
    until_stop.cancel();
    server.await.unwrap();
}

/// SIGTERM cancels the process's stop token (`runtime::shutdown`): from then on, while it drains
/// its lanes, commits and flushes, `/readyz` answers 503 "stopping" and `/healthz` and
/// `/metrics` 200; the endpoint closes only once the worker is done. The worker's future is held
/// still right after the stop (not polled), which stands for a drain that takes a while: the
/// endpoint, served by its own task, must answer meanwhile.
#[tokio::test]
async fn a_draining_worker_answers_not_ready_until_it_is_gone() {
    let app = spawn_app().await;
    let health = free_addr();
    let settings = worker_settings(&app, &health);
    let stop = CancellationToken::new();
    let mut worker = Box::pin(workers::run(workers::Role::Users, settings, stop.clone()));
    tokio::select! {
        r = &mut worker => panic!("the worker ended before it was ready: {r:?}"),
        _ = until(&health, 200) => {}
    }
    stop.cancel();
    let (status, body) = readyz(&health).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["state"], "stopping", "{body}");
    let get = |path: &'static str| {
        let url = format!("http://{health}{path}");
        async move { reqwest::get(url).await.unwrap().status().as_u16() }
    };
    assert_eq!(get("/healthz").await, 200);
    assert_eq!(get("/metrics").await, 200);
    // the drain goes on and ends; then the endpoint is gone
    worker.await.unwrap();
    assert!(reqwest::get(format!("http://{health}/healthz"))
        .await
        .is_err());
}
