//! `/healthz` (liveness), `/readyz` (readiness) and `/metrics` for workers and the router (edges
//! serve them on their internal listener).
//!
//! Liveness says the process answers. Readiness says it can do its work: each dependency it
//! needs (Kafka, Redis Cluster, the database shards) answered a cheap question within
//! [`CHECK_TIMEOUT`]. A process is not ready while it is still starting (its checks are not
//! registered yet) or once it is stopping.

use crate::metrics::Metrics;
use futures::future::BoxFuture;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use warp::http::StatusCode;
use warp::Filter;

/// How long one readiness check may take before it counts as failed.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// One dependency check: `Ok`, or why not.
pub type Check = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// The named checks of a process.
pub type Checks = Vec<(&'static str, Check)>;

/// Something a scrape asks before `/metrics` is rendered, to set gauges from a server's answer
/// (the users workers' replica status). It sets its gauges itself, within [`CHECK_TIMEOUT`].
pub type Probe = Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

/// Wrap an async check.
pub fn check<F, Fut>(f: F) -> Check
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
{
    Arc::new(move || Box::pin(f()))
}

/// The Kafka check every process has: the cluster answers a metadata request.
pub fn kafka(publisher: &crate::kafka::Publisher) -> (&'static str, Check) {
    let p = publisher.clone();
    (
        "kafka",
        check(move || {
            let p = p.clone();
            async move { p.reachable().await }
        }),
    )
}

/// The Redis Cluster check: the cluster answers a `PING`.
pub fn redis(cluster: &crate::redis::Cluster) -> (&'static str, Check) {
    let c = cluster.clone();
    (
        "redis",
        check(move || {
            let c = c.clone();
            async move { c.reachable().await }
        }),
    )
}

/// What `/readyz` asks. Cheap to clone; the process registers its checks once its dependencies
/// are built.
#[derive(Clone)]
pub struct Readiness {
    checks: Arc<RwLock<Option<Checks>>>,
    probe: Arc<RwLock<Option<Probe>>>,
    stop: CancellationToken,
}

impl Readiness {
    /// Not ready until [`Readiness::set`]; not ready again once `stop` is cancelled.
    pub fn new(stop: CancellationToken) -> Self {
        Readiness {
            checks: Arc::new(RwLock::new(None)),
            probe: Arc::new(RwLock::new(None)),
            stop,
        }
    }

    /// The process is built: from now on it is ready while every check passes.
    pub fn set(&self, checks: Checks) {
        *self.checks.write().expect("readiness lock") = Some(checks);
    }

    /// From now on each scrape also runs `probe` (beside the checks, at most [`CHECK_TIMEOUT`])
    /// while the process is not stopping.
    pub fn set_probe(&self, probe: Probe) {
        *self.probe.write().expect("readiness lock") = Some(probe);
    }

    /// Run every check at once, each within [`CHECK_TIMEOUT`]: each check's answer, or `None`
    /// while the process is not running (starting or stopping).
    pub async fn answers(&self) -> Option<Vec<(&'static str, Result<(), String>)>> {
        if self.stop.is_cancelled() {
            return None;
        }
        let checks = self.checks.read().expect("readiness lock").clone()?;
        let answers = futures::future::join_all(checks.iter().map(|(name, c)| async move {
            let answer = match tokio::time::timeout(CHECK_TIMEOUT, c()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(why)) => Err(why),
                Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
            };
            (*name, answer)
        }))
        .await;
        Some(answers)
    }

    /// Run every check at once: ready or not, and each check's answer (`"ok"` or the reason).
    pub async fn report(&self) -> (bool, serde_json::Value) {
        let Some(answers) = self.answers().await else {
            let state = if self.stop.is_cancelled() {
                "stopping"
            } else {
                "starting"
            };
            return (false, serde_json::json!({"ready": false, "state": state}));
        };
        let ready = answers.iter().all(|(_, a)| a.is_ok());
        let map: serde_json::Map<String, serde_json::Value> = answers
            .into_iter()
            .map(|(name, a)| {
                (
                    name.to_string(),
                    a.err().unwrap_or_else(|| "ok".into()).into(),
                )
            })
            .collect();
        (
            ready,
            serde_json::json!({"ready": ready, "state": "running", "checks": map}),
        )
    }

    /// Set `sb_dependency_up` from the checks' answers now (left as they were while the process
    /// is starting or stopping), and run the probe if there is one.
    pub async fn record(&self, metrics: &Metrics) {
        let probe = self.probe.read().expect("readiness lock").clone();
        let probe = async {
            if let (Some(p), false) = (probe, self.stop.is_cancelled()) {
                // the probe bounds its own questions; this only stops one that does not
                let _ = tokio::time::timeout(CHECK_TIMEOUT, p()).await;
            }
        };
        let (answers, ()) = futures::future::join(self.answers(), probe).await;
        for (name, answer) in answers.unwrap_or_default() {
            metrics.dependency_up.get(name).set(answer.is_ok() as i64);
        }
    }
}

/// Routes shared by every process: `GET /healthz` (200 "ok"), `GET /readyz` (200 or 503 with a
/// JSON report) and `GET /metrics` (which first runs the readiness checks for
/// `sb_dependency_up`).
pub fn routes(
    metrics: Metrics,
    readiness: Readiness,
) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone {
    use warp::Reply;
    let healthz = warp::path!("healthz")
        .and(warp::get())
        .map(|| "ok".into_response());
    let ready = readiness.clone();
    let readyz = warp::path!("readyz").and(warp::get()).then(move || {
        let readiness = ready.clone();
        async move {
            let (ready, report) = readiness.report().await;
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            warp::reply::with_status(warp::reply::json(&report), status).into_response()
        }
    });
    let m = warp::path!("metrics").and(warp::get()).then(move || {
        let (metrics, readiness) = (metrics.clone(), readiness.clone());
        async move {
            readiness.record(&metrics).await;
            warp::reply::with_header(
                metrics.render(),
                "content-type",
                crate::metrics::CONTENT_TYPE,
            )
            .into_response()
        }
    });
    healthz.or(readyz).unify().or(m).unify()
}

/// Serve the health routes on `addr` until `stop`; returns the bound address.
pub async fn serve(
    addr: &str,
    metrics: Metrics,
    readiness: Readiness,
    stop: CancellationToken,
) -> crate::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let addr: SocketAddr = addr
        .parse()
        .map_err(|e| crate::Error::Config(format!("health_listen {addr:?}: {e}")))?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let server = warp::serve(routes(metrics, readiness))
        .incoming(listener)
        .graceful(async move { stop.cancelled().await })
        .run();
    Ok((bound, tokio::spawn(server)))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(r: &Readiness, path: &str) -> (u16, String) {
        let resp = warp::test::request()
            .path(path)
            .reply(&routes(Metrics::default(), r.clone()))
            .await;
        (
            resp.status().as_u16(),
            String::from_utf8_lossy(resp.body()).into_owned(),
        )
    }

    #[tokio::test]
    async fn metrics_are_openmetrics_text() {
        let r = Readiness::new(CancellationToken::new());
        let resp = warp::test::request()
            .path("/metrics")
            .reply(&routes(Metrics::new(crate::metrics::Role::Router), r))
            .await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], crate::metrics::CONTENT_TYPE);
        let body = String::from_utf8_lossy(resp.body());
        assert!(
            body.contains("# TYPE sb_deliveries_routed counter"),
            "{body}"
        );
        assert!(body.ends_with("# EOF\n"));
    }

    #[tokio::test(start_paused = true)]
    async fn ready_only_while_running_and_every_check_passes() {
        let stop = CancellationToken::new();
        let r = Readiness::new(stop.clone());
        assert_eq!(get(&r, "/healthz").await, (200, "ok".into()));
        let (status, body) = get(&r, "/readyz").await;
        assert_eq!(status, 503);
        assert!(body.contains(r#""state":"starting""#), "{body}");

        r.set(vec![
            ("kafka", check(|| async { Ok(()) })),
            ("redis", check(|| async { Ok(()) })),
        ]);
        let (status, body) = get(&r, "/readyz").await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains(r#""kafka":"ok""#), "{body}");

        r.set(vec![
            ("kafka", check(|| async { Ok(()) })),
            (
                "mariadb",
                check(|| async { Err("shard 1: refused".into()) }),
            ),
            // a check that never answers
            ("redis", check(std::future::pending::<Result<(), String>>)),
        ]);
        let (status, body) = get(&r, "/readyz").await;
        assert_eq!(status, 503);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["checks"]["kafka"], "ok");
        assert_eq!(v["checks"]["mariadb"], "shard 1: refused");
        assert_eq!(v["checks"]["redis"], "no answer within 2s");

        r.set(vec![("kafka", check(|| async { Ok(()) }))]);
        assert_eq!(get(&r, "/readyz").await.0, 200);
        stop.cancel();
        let (status, body) = get(&r, "/readyz").await;
        assert_eq!(status, 503);
        assert!(body.contains(r#""state":"stopping""#), "{body}");
        assert_eq!(
            get(&r, "/healthz").await.0,
            200,
            "still alive while stopping"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn each_scrape_asks_the_checks_for_sb_dependency_up() {
        let stop = CancellationToken::new();
        let r = Readiness::new(stop.clone());
        let m = Metrics::new(crate::metrics::Role::Router);
        let scrape = |m: &Metrics, r: &Readiness| {
            let (m, r) = (m.clone(), r.clone());
            async move {
                let resp = warp::test::request()
                    .path("/metrics")
                    .reply(&routes(m, r))
                    .await;
                String::from_utf8_lossy(resp.body()).into_owned()
            }
        };
        let dep = |text: &str, d: &str| {
            crate::metrics::sample(text, &format!("sb_dependency_up{{dependency=\"{d}\"}}"))
        };
        // starting: shown at zero; a router has no database
        let text = scrape(&m, &r).await;
        assert_eq!(dep(&text, "kafka"), Some(0.0), "{text}");
        assert_eq!(dep(&text, "redis"), Some(0.0));
        assert_eq!(dep(&text, "mariadb"), None);

        let redis_up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let up = redis_up.clone();
        r.set(vec![
            ("kafka", check(|| async { Ok(()) })),
            (
                "redis",
                check(move || {
                    let up = up.load(std::sync::atomic::Ordering::Relaxed);
                    async move {
                        if up {
                            Ok(())
                        } else {
                            Err("refused".into())
                        }
                    }
                }),
            ),
        ]);
        let text = scrape(&m, &r).await;
        assert_eq!(dep(&text, "kafka"), Some(1.0), "{text}");
        assert_eq!(dep(&text, "redis"), Some(1.0));
        redis_up.store(false, std::sync::atomic::Ordering::Relaxed);
        let text = scrape(&m, &r).await;
        assert_eq!(dep(&text, "kafka"), Some(1.0));
        assert_eq!(dep(&text, "redis"), Some(0.0), "{text}");
        // stopping: the last answers stay
        redis_up.store(true, std::sync::atomic::Ordering::Relaxed);
        stop.cancel();
        assert_eq!(dep(&scrape(&m, &r).await, "redis"), Some(0.0));
    }

    #[tokio::test(start_paused = true)]
    async fn each_scrape_runs_the_probe_within_the_check_timeout_until_stopping() {
        let stop = CancellationToken::new();
        let r = Readiness::new(stop.clone());
        let m = Metrics::new(crate::metrics::Role::Worker(topics::Domain::Users));
        let (lag, up) = m.mariadb_replica(0);
        let scrape = || async {
            let resp = warp::test::request()
                .path("/metrics")
                .reply(&routes(m.clone(), r.clone()))
                .await;
            String::from_utf8_lossy(resp.body()).into_owned()
        };
        let runs = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let n = runs.clone();
        r.set_probe(Arc::new(move || {
            let (lag, up, n) = (lag.clone(), up.clone(), n.clone());
            Box::pin(async move {
                let run = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                lag.set(run as f64 * 1.5);
                up.set(1);
                if run == 2 {
                    // a probe that hangs is given up on at the timeout; its scrape still answers
                    tokio::time::sleep(Duration::from_secs(600)).await;
                }
            })
        }));
        // (still starting: the probe runs anyway, the checks do not)
        let text = scrape().await;
        assert_eq!(
            crate::metrics::sample(&text, "sb_mariadb_replica_lag_seconds{shard=\"0\"}"),
            Some(1.5),
            "{text}"
        );
        assert_eq!(
            crate::metrics::sample(&text, "sb_mariadb_replica_up{shard=\"0\"}"),
            Some(1.0)
        );
        let t0 = tokio::time::Instant::now();
        let text = scrape().await;
        assert_eq!(t0.elapsed(), CHECK_TIMEOUT);
        assert_eq!(
            crate::metrics::sample(&text, "sb_mariadb_replica_lag_seconds{shard=\"0\"}"),
            Some(3.0)
        );
        assert_eq!(runs.load(std::sync::atomic::Ordering::Relaxed), 2);
        stop.cancel();
        scrape().await;
        assert_eq!(
            runs.load(std::sync::atomic::Ordering::Relaxed),
            2,
            "not while stopping"
        );
    }

    /// One `GET` over a real socket: the status code, or `None` if nothing accepts.
    async fn status_of(addr: SocketAddr, path: &str) -> Option<u16> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).await.ok()?;
        out.split(' ').nth(1)?.parse().ok()
    }

    #[tokio::test]
    async fn the_endpoint_outlives_the_stop_so_a_draining_process_answers_not_ready() {
        let stop = CancellationToken::new();
        let r = Readiness::new(stop.clone());
        r.set(vec![("kafka", check(|| async { Ok(()) }))]);
        let until = CancellationToken::new();
        let (addr, server) = serve("127.0.0.1:0", Metrics::default(), r, until.clone())
            .await
            .unwrap();
        assert_eq!(status_of(addr, "/readyz").await, Some(200));
        // SIGTERM: the process drains; its probes see "not ready", its scrapes still answer
        stop.cancel();
        assert_eq!(status_of(addr, "/readyz").await, Some(503));
        assert_eq!(status_of(addr, "/healthz").await, Some(200));
        assert_eq!(status_of(addr, "/metrics").await, Some(200));
        until.cancel();
        server.await.unwrap();
        assert_eq!(status_of(addr, "/healthz").await, None);
        assert!(
            serve("nonsense", Metrics::default(), Readiness::new(stop), until)
                .await
                .is_err()
        );
    }
}
