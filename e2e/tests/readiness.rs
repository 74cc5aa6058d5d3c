//! `/readyz` of each kind of process against the real servers: ready once it is built and its
//! dependencies answer; 503 naming the dependency that does not.

use e2e::client::Http;
use e2e::{spawn_app, TestApp};
use serde_json::Value;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A loopback address nothing listens on (bound, then let go).
fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
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
    settings.database.shards[1].primary = free_addr();
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
