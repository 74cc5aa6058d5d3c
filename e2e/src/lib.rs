//! Test harness. `spawn_app()` runs two edges, every worker role and the router in this process
//! against the shared real stack that `./sb` started (found through `SB_STACK_FILE`, default
//! `.sb/stack.json`), with a unique topic prefix, Redis key prefix and database name, so tests
//! run in parallel without seeing each other, and puts two real nginx instances in front of the
//! edges: every HTTP call and WebSocket of a test goes through nginx (`nginx.rs`).
//! `tests/platform.rs` talks to the processes `./sb` started, through their nginx.

pub mod client;
pub mod forward;
pub mod launcher;
pub mod nginx;

pub use client::{Client, Http};

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;
use workers::settings::{DatabaseSettings, Limits, ShardSettings};

#[derive(Clone, Debug, Deserialize)]
pub struct Stack {
    pub kafka: KafkaStack,
    pub redis: RedisStack,
    pub mariadb: MariaStack,
    pub nginx: Vec<String>,
    #[serde(default)]
    pub edges: Vec<EdgeStack>,
    /// Every app process the launcher started and where it answers `/healthz`, `/readyz` and
    /// `/metrics` (absent in stack files of older launchers and with `--infra-only`).
    #[serde(default)]
    pub services: Vec<ServiceStack>,
    /// The Prometheus `./sb up` runs, scraping every app process (absent with `--infra-only` and
    /// in stack files of older launchers).
    #[serde(default)]
    pub prometheus: Option<PrometheusStack>,
    /// The Jaeger `./sb up` runs, receiving every app process's spans (absent with
    /// `--infra-only` and in stack files of older launchers).
    #[serde(default)]
    pub jaeger: Option<JaegerStack>,
}

impl Stack {
    /// The URL of the platform's Jaeger (its query API).
    pub fn jaeger_url(&self) -> String {
        let j = self.jaeger.as_ref();
        j.map(|j| j.url.clone())
            .unwrap_or_else(|| no_tool("Jaeger"))
    }

    /// The URL of the platform's Prometheus.
    pub fn prometheus_url(&self) -> String {
        let p = self.prometheus.as_ref();
        p.map(|p| p.url.clone())
            .unwrap_or_else(|| no_tool("Prometheus"))
    }
}

/// A stack without the platform's own tools (`--infra-only`, or an older launcher's).
fn no_tool(name: &str) -> ! {
    panic!("stack.json names no {name}: run the full platform (`./sb up`, `./sb test`)")
}

#[derive(Clone, Debug, Deserialize)]
pub struct JaegerStack {
    /// The query API and UI, e.g. `http://127.0.0.1:18311`
    pub url: String,
    /// Where the processes post their spans (OTLP/HTTP)
    pub otlp_endpoint: String,
}

#[derive(Clone, Debug, Deserialize)]
pub struct PrometheusStack {
    /// e.g. `http://127.0.0.1:18300`
    pub url: String,
}

#[derive(Clone, Debug, Deserialize)]
pub struct ServiceStack {
    pub name: String,
    pub kind: String,
    pub health_addr: String,
}

#[derive(Clone, Debug, Deserialize)]
pub struct KafkaStack {
    pub brokers: String,
    pub replication_factor: i32,
}
#[derive(Clone, Debug, Deserialize)]
pub struct RedisStack {
    pub nodes: Vec<String>,
}
#[derive(Clone, Debug, Deserialize)]
pub struct MariaStack {
    pub user: String,
    pub password: String,
    pub database: String,
    pub shards: Vec<ShardSettings>,
}
#[derive(Clone, Debug, Deserialize)]
pub struct EdgeStack {
    pub id: String,
    pub addr: String,
    /// The edge's internal listener (`/metrics`); absent in stack files of older launchers.
    #[serde(default)]
    pub metrics_addr: Option<String>,
}

/// Where the stack file is: `SB_STACK_FILE`, default `.sb/stack.json`. The launcher's
/// `state.json` (every process' PID) is beside it.
pub fn stack_path() -> PathBuf {
    std::env::var("SB_STACK_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.sb/stack.json"))
}

/// The body of `/metrics` of the process whose health (internal) listener is `addr`.
pub async fn scrape(addr: impl std::fmt::Display) -> String {
    reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The stack `./sb up` (or `./sb test`) started.
pub fn stack() -> Stack {
    let path = stack_path();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "no running stack at {} ({e}): start one with `./sb up` or run `./sb test`",
            path.display()
        )
    });
    serde_json::from_str(&text).expect("stack.json is valid")
}

/// Whether the stack's MariaDB shards are Galera clusters (`./sb up`'s default for new data;
/// `--shard-replication async` makes primaries with GTID replicas).
pub fn galera_shards(stack: &Stack) -> bool {
    stack.mariadb.shards.iter().all(|s| s.failover)
}

/// A unique name for this test's topics, keys and database.
pub fn unique(prefix: &str) -> String {
    use rand::Rng;
    format!("{prefix}{:08x}", rand::rng().random::<u32>())
}

/// What a test may change before the app starts.
#[derive(Clone, Debug)]
pub struct Options {
    pub limits: Limits,
    pub edges: usize,
    pub edge: edge_ws::EdgeSettings,
    /// The worker roles started (default: all); requests of a role left out get no answer.
    pub roles: Vec<workers::Role>,
    /// The shard addresses the workers of `shard_roles` use instead of the stack's (a
    /// [`forward::Forwarder`] a test can cut, say); the database is migrated through the stack's
    /// real ones.
    pub shards: Option<Vec<ShardSettings>>,
    /// The roles that use `shards` (default: every role).
    pub shard_roles: Vec<workers::Role>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            limits: Limits::default(),
            edges: 2,
            edge: edge_ws::EdgeSettings {
                request_timeout_ms: 20_000,
                allowed_origins: vec!["http://allowed.example".into()],
                heartbeat_interval_ms: 500,
                ..Default::default()
            },
            roles: workers::Role::ALL.to_vec(),
            shards: None,
            shard_roles: workers::Role::ALL.to_vec(),
        }
    }
}

pub struct TestApp {
    pub prefix: String,
    pub edges: Vec<SocketAddr>,
    /// Each edge's internal listener (`/metrics`, `/healthz`).
    pub internal: Vec<SocketAddr>,
    /// Where each worker (by role, e.g. `worker-dms`) and the router (`router`) serve `/metrics`,
    /// `/healthz` and `/readyz`.
    pub health: std::collections::BTreeMap<String, SocketAddr>,
    pub stack: Stack,
    pub kafka: runtime::KafkaSettings,
    pub database: DatabaseSettings,
    pub redis: runtime::RedisSettings,
    /// nginx `i` sends to edge `i` (the other edge is its backup).
    pub nginx: Vec<nginx::Nginx>,
    stop: CancellationToken,
    tasks: tokio::task::JoinSet<()>,
}

impl TestApp {
    /// HTTP through the nginx in front of edge `edge`.
    pub fn http(&self, edge: usize) -> Http {
        Http::new(&format!("http://{}", self.nginx[edge].addr))
    }

    /// HTTP through the nginx in front of edge `edge`, from loopback address `127.0.0.<host>`
    /// (the client address the edges see).
    pub fn http_from(&self, edge: usize, host: u8) -> Http {
        Http::from_address(
            &format!("http://{}", self.nginx[edge].addr),
            std::net::Ipv4Addr::new(127, 0, 0, host).into(),
        )
    }

    /// The WebSocket URL of the nginx in front of edge `edge`.
    pub fn ws_url(&self, edge: usize) -> String {
        format!("ws://{}/ws", self.nginx[edge].addr)
    }

    /// A user signed up and logged in: (user id, username, token).
    pub async fn user(&self, edge: usize) -> (topics::Id, String, String) {
        let name = unique("u");
        let h = self.http(edge);
        let (status, body) = h
            .post(
                "/api/v1/users",
                serde_json::json!({"username": name, "password": "pass-word-1"}),
                None,
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let id: topics::Id = serde_json::from_value(body["user"]["user_id"].clone()).unwrap();
        let token = h.login(&name, "pass-word-1").await;
        (id, name, token)
    }

    /// Stop everything and wait for it.
    pub async fn stop(mut self) {
        self.nginx.clear();
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Where [`free_addr`] looks for ports: below Linux's ephemeral range (32768-60999), which
/// the kernel hands to outgoing connections and to `bind(":0")`, and below every port the
/// launcher uses (13306 and up, plus its offset; tools/sb/ports.py).
const FREE_PORTS: std::ops::Range<u16> = 11_000..13_000;

/// A loopback address with a port free a moment ago, for a process that reports no bound
/// address back (workers and the router log theirs) or for a test that needs an address nothing
/// listens on.
///
/// A port from `bind(":0")` is in the ephemeral range: between letting it go and the process
/// binding it, one of the test's own connections to Kafka, Redis or MariaDB can take it as its
/// local port (a worker then fails with "address in use"). Ports of [`FREE_PORTS`] are only
/// taken by an explicit bind; each call of this process takes the next one.
pub fn free_addr() -> SocketAddr {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let span = u32::from(FREE_PORTS.end - FREE_PORTS.start);
    // test binaries run one after another; a start that depends on the process keeps two that
    // do overlap apart anyway
    let start = std::process::id() % span;
    for _ in 0..span {
        let n = (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let port = FREE_PORTS.start + u16::try_from(n).expect("below the span");
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return l.local_addr().expect("a bound address");
        }
    }
    panic!("no free loopback port in {FREE_PORTS:?}")
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Options::default()).await
}

/// Start two edges, every worker role and the router in this process.
pub async fn spawn_app_with(opts: Options) -> TestApp {
    runtime::telemetry::init_for_tests();
    let stack = stack();
    let prefix = unique("t");
    let kafka = runtime::KafkaSettings {
        brokers: stack.kafka.brokers.clone(),
        topic_prefix: prefix.clone(),
        replication_factor: stack.kafka.replication_factor,
        partitions: 2,
        message_timeout_ms: 5_000,
        ..Default::default()
    };
    let redis = runtime::RedisSettings {
        nodes: stack.redis.nodes.clone(),
        key_prefix: prefix.clone(),
    };
    let database = DatabaseSettings {
        user: stack.mariadb.user.clone(),
        password: stack.mariadb.password.clone().into(),
        name: prefix.clone(),
        shards: stack.mariadb.shards.clone(),
        logical_shards: 16,
        logical_map: None,
        pool_max: 8,
        ..Default::default()
    };
    workers::db::migrate(&database).await.expect("migrations");
    let stop = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    let mut health = std::collections::BTreeMap::new();
    for role in opts.roles.iter().copied() {
        let addr = free_addr();
        health.insert(role.worker(), addr);
        let mut db = database.clone();
        if let Some(shards) = opts
            .shards
            .as_ref()
            .filter(|_| opts.shard_roles.contains(&role))
        {
            db.shards = shards.clone();
        }
        let settings = workers::Settings {
            kafka: kafka.clone(),
            redis: redis.clone(),
            database: db,
            service: runtime::ServiceSettings {
                name: role.worker(),
                health_listen: addr.to_string(),
            },
            limits: opts.limits.clone(),
            log: Default::default(),
            trace: Default::default(),
        };
        let s = stop.clone();
        tasks.spawn(async move { workers::run(role, settings, s).await.expect("worker runs") });
    }
    let addr = free_addr();
    health.insert("router".into(), addr);
    let rs = router::Settings {
        kafka: kafka.clone(),
        redis: redis.clone(),
        service: runtime::ServiceSettings {
            name: "router".into(),
            health_listen: addr.to_string(),
        },
        router: router::RouterSettings {
            edge_liveness_ms: opts.limits.edge_liveness_ms,
            lanes: 4,
        },
        log: Default::default(),
        trace: Default::default(),
    };
    let s = stop.clone();
    tasks.spawn(async move { router::run(rs, s).await.expect("router runs") });
    let mut edges = Vec::new();
    let mut internal = Vec::new();
    for i in 0..opts.edges {
        let es = edge_ws::EdgeSettings {
            id: format!("edge-{i}"),
            listen: "127.0.0.1:0".into(),
            internal_listen: "127.0.0.1:0".into(),
            ..opts.edge.clone()
        };
        let app = edge_ws::Application::build(edge_ws::Settings {
            kafka: kafka.clone(),
            edge: es,
            log: Default::default(),
            trace: Default::default(),
        })
        .await
        .expect("edge builds");
        edges.push(app.local_addr());
        internal.push(app.internal_addr());
        let s = stop.clone();
        tasks.spawn(app.run_until_stopped(s));
    }
    let nginx = (0..edges.len())
        .map(|i| {
            let backup = edges[(i + 1) % edges.len()];
            nginx::start(&format!("{prefix}-{i}"), edges[i], backup)
        })
        .collect();
    let app = TestApp {
        prefix,
        nginx,
        edges,
        internal,
        health,
        stack,
        kafka,
        database,
        redis,
        stop,
        tasks,
    };
    // Ready when a ping makes the round trip through Kafka and the auth worker on every edge.
    for i in 0..app.edges.len() {
        let h = app.http(i);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let (status, _) = h
                .post("/api/v1/rpc", serde_json::json!({"type": "ping"}), None)
                .await;
            if status == 200 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "app did not become ready"
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
    app
}
