//! The metrics every process serves on `/metrics`, through `prometheus-client`: one [`Metrics`]
//! per process, every series of its [`Role`] registered when it is built (so each shows at zero
//! before first use), rendered in the OpenMetrics text format with `# HELP` / `# TYPE` lines.
//! Names are snake_case in base units (seconds, bytes); counters are registered without the
//! `_total` the format appends; labels are bounded (request kinds, topic kinds, error codes,
//! shards, partitions), never user ids. The series of a known label value are created once: a
//! call site takes its handle by index ([`ByLabel::at`]) or value ([`ByLabel::get`]) without
//! building a key, and hot paths keep the handle.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
pub use prometheus_client::metrics::counter::Counter;
pub use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
pub use prometheus_client::metrics::gauge::Gauge;
pub use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::Instant;
use topics::kinds::KINDS;
use topics::{Domain, ErrorCode};

/// The `Content-Type` of `/metrics`.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Buckets of every latency histogram, in seconds: 0.5 ms to 10 s.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Buckets of the consumer's batch sizes, in records.
pub const BATCH_BUCKETS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// The commit this binary was built from (`build.rs`), `unknown` outside a git checkout.
pub const COMMIT: &str = env!("SB_BUILD_COMMIT");

/// Topic kinds ([`crate::kafka::kind_of`]): the worker domains' request topics, then the shared
/// and per-edge topics.
pub fn topic_kinds() -> Vec<&'static str> {
    Domain::ALL
        .iter()
        .map(|d| d.as_str())
        .chain(["deliver", "dead-letter", "edge"])
        .collect()
}
/// What closed a consumer batch (`consume::Bound::as_str`).
pub const BATCH_BOUNDS: [&str; 4] = ["records", "bytes", "wait", "closed"];
/// Why a worker answered a request `unavailable` (`sb_requests_unavailable_total`): the
/// breaker of a shard it needs was open, or trying the shard failed and opened it.
pub const UNAVAILABLE_REASONS: [&str; 2] = ["breaker_open", "shard_failed"];
/// Why an edge closed or refused an HTTP connection.
pub const HTTP_CLOSE_REASONS: [&str; 4] = [
    "header_timeout",
    "idle_timeout",
    "request_timeout",
    "handshakes_full",
];

/// The dependencies a readiness check asks (`health::kafka`, `health::redis`, the workers'
/// `mariadb`): the values of `sb_dependency_up`'s `dependency` label.
pub const DEPENDENCIES: [&str; 3] = ["kafka", "redis", "mariadb"];

/// The connection pools of a MariaDB shard: the values of the `pool` label of
/// `sb_mariadb_connections_in_use` / `_max`.
pub const MARIADB_POOLS: [&str; 2] = ["primary", "replica"];

/// A gauge of seconds that can be NaN (unknown).
pub type FloatGauge = Gauge<f64, AtomicU64>;

/// Counts one use of something while it lives: the gauge goes up when it is made and down when
/// it is dropped (a connection checked out of a pool, a Redis request waiting for its answer),
/// whichever way its holder ends, cancelled or panicking included.
#[derive(Debug)]
pub struct InUse(Gauge);

impl InUse {
    pub fn new(gauge: &Gauge) -> Self {
        gauge.inc();
        InUse(gauge.clone())
    }
}

impl Drop for InUse {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A label set: `(name, value)` pairs.
pub type Labels = Vec<(&'static str, String)>;
type Ctor<M> = fn() -> M;

fn latency() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

fn batch_sizes() -> Histogram {
    Histogram::new(BATCH_BUCKETS)
}

/// Seconds since `t0`, for a histogram.
pub fn since(t0: Instant) -> f64 {
    t0.elapsed().as_secs_f64()
}

/// What a process is; it decides which series the process registers (an edge shows no
/// consumer-loop series, a worker no WebSocket ones). [`Role::All`] registers everything (tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Edge,
    Worker(Domain),
    Router,
    All,
}

impl Role {
    fn is(self, other: Role) -> bool {
        self == Role::All || self == other
    }

    fn consumes(self) -> bool {
        self != Role::Edge
    }

    fn is_worker(self) -> bool {
        matches!(self, Role::Worker(_) | Role::All)
    }

    /// Does this process handle requests of `domain` (its worker)?
    fn handles(self, domain: Domain) -> bool {
        self.is(Role::Worker(domain))
    }

    /// The topic kind this process consumes from, if it runs the consumer loop.
    fn consumes_kind(self, kind: &str) -> bool {
        match self {
            Role::All => true,
            Role::Worker(d) => d.as_str() == kind,
            Role::Router => kind == "deliver",
            Role::Edge => false,
        }
    }
}

/// The series of one label, one per known value, created up front; unknown values (not
/// expected) get a series on first use.
pub struct ByLabel<M> {
    key: &'static str,
    values: Vec<&'static str>,
    handles: Vec<M>,
    family: Family<Labels, M, Ctor<M>>,
}

impl<M: EncodeMetric + Clone + std::fmt::Debug + Send + Sync + 'static> ByLabel<M> {
    /// `shown(value)` says whether the series of `value` is created (and so rendered) up front;
    /// the others are handles nobody scrapes.
    fn new(
        key: &'static str,
        values: Vec<&'static str>,
        ctor: Ctor<M>,
        shown: impl Fn(usize, &str) -> bool,
    ) -> Self {
        let family = Family::new_with_constructor(ctor);
        let handles = values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                if shown(i, v) {
                    family.get_or_create_owned(&vec![(key, v.to_string())])
                } else {
                    ctor()
                }
            })
            .collect();
        ByLabel {
            key,
            values,
            handles,
            family,
        }
    }

    /// The series of the `i`-th known value (request kinds: `Request::kind_index`).
    pub fn at(&self, i: usize) -> &M {
        &self.handles[i]
    }

    /// The series of `value`.
    pub fn get(&self, value: &str) -> M {
        match self.values.iter().position(|v| *v == value) {
            Some(i) => self.handles[i].clone(),
            None => self
                .family
                .get_or_create_owned(&vec![(self.key, value.to_string())]),
        }
    }
}

/// `sb_request_errors_total{kind,code}`: one counter per request kind and error code.
pub struct ByKindCode {
    handles: Vec<Vec<Counter>>,
}

impl ByKindCode {
    fn new(reg: &mut Registry, shown: impl Fn(Domain) -> bool) -> Self {
        let family: Family<Labels, Counter> = Family::default();
        let handles = KINDS
            .iter()
            .map(|k| {
                ErrorCode::ALL
                    .iter()
                    .map(|c| {
                        if shown(k.domain) {
                            family.get_or_create_owned(&vec![
                                ("kind", k.name.to_string()),
                                ("code", c.as_str().to_string()),
                            ])
                        } else {
                            Counter::default()
                        }
                    })
                    .collect()
            })
            .collect();
        if KINDS.iter().any(|k| shown(k.domain)) {
            reg.register(
                "sb_request_errors",
                "Requests workers refused with an error frame, by request kind and error code",
                family,
            );
        }
        ByKindCode { handles }
    }

    /// The counter of request kind `kind` (its `kind_index`) refused with `code`.
    pub fn get(&self, kind: usize, code: ErrorCode) -> &Counter {
        let c = ErrorCode::ALL
            .iter()
            .position(|x| *x == code)
            .expect("ErrorCode::ALL lists every code");
        &self.handles[kind][c]
    }
}

/// A process's metrics. Cloning shares them.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

impl std::ops::Deref for Metrics {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl Default for Metrics {
    /// Every series of every role (tests).
    fn default() -> Self {
        Metrics::new(Role::All)
    }
}

/// The series; see docs/operations.md for what each means.
pub struct Inner {
    registry: Registry,
    /// Run before each rendering: sets the gauges read from the process's state at scrape time.
    refresh: OnceLock<Box<dyn Fn() + Send + Sync>>,
    // every process: its readiness checks' answers, asked at each scrape
    pub dependency_up: ByLabel<Gauge>,
    // every producer
    pub records_published: ByLabel<Counter>,
    pub publish_failures: Counter,
    pub produce_seconds: Histogram,
    // the consumer loop (workers, router)
    pub records_consumed: ByLabel<Counter>,
    pub records_dead_lettered: Counter,
    pub records_retried: Counter,
    pub consumer_batches: ByLabel<Counter>,
    pub consumer_batch_records: Histogram,
    pub consumer_lag: Family<Labels, Gauge>,
    pub consumer_prefetched: Family<Labels, Gauge>,
    pub consumer_in_flight: Gauge,
    pub consumer_oldest_in_flight: FloatGauge,
    // edges
    pub ws_connections: Gauge,
    pub ws_connections_opened: Counter,
    pub ws_handshakes_refused: ByLabel<Counter>,
    pub ws_frames_in: Counter,
    pub ws_frames_out: Counter,
    pub ws_frames_rejected: Counter,
    pub ws_requests_timed_out: Counter,
    pub ws_late_replies: Counter,
    pub ws_slow_clients_disconnected: Counter,
    pub http_requests: Counter,
    pub http_connections_closed: ByLabel<Counter>,
    pub edge_request_seconds: ByLabel<Histogram>,
    pub dm_delivery_seconds: Histogram,
    pub ws_outbound_queued: Gauge,
    pub ws_outbound_queue_max: Gauge,
    // workers
    pub requests_handled: ByLabel<Counter>,
    pub requests_expired: ByLabel<Counter>,
    pub request_errors: ByKindCode,
    pub handler_seconds: ByLabel<Histogram>,
    pub account_checks: Counter,
    pub account_check_queries: Counter,
    pub revocations_unacknowledged: Counter,
    pub requests_unavailable: ByLabel<Counter>,
    shard_breaker_open: Family<Labels, Gauge>,
    pub messages_persisted: Counter,
    dm_commit_seconds: Family<Labels, Histogram, Ctor<Histogram>>,
    mariadb_connections_in_use: Family<Labels, Gauge>,
    mariadb_connections_max: Family<Labels, Gauge>,
    // users workers: the shards' replicas, asked at each scrape
    mariadb_replica_lag: Family<Labels, FloatGauge>,
    mariadb_replica_up: Family<Labels, Gauge>,
    // workers and the router: requests on the Redis Cluster connections
    pub redis_requests_in_flight: Gauge,
    // router
    pub deliveries_routed: Counter,
}

impl Metrics {
    /// The metrics of a process of `role`, every series of it registered.
    pub fn new(role: Role) -> Self {
        let mut reg = Registry::default();
        let r = &mut reg;
        let kinds: Vec<&'static str> = KINDS.iter().map(|k| k.name).collect();

        r.register(
            "switchboard_build",
            "The version and commit of this binary",
            Info::new(vec![
                ("version", env!("CARGO_PKG_VERSION").to_string()),
                ("commit", COMMIT.to_string()),
            ]),
        );
        r.register_collector(Box::new(ProcessCollector));

        // an edge's only dependency is Kafka; the router also needs Redis; workers all three
        let dependency_up = ByLabel::new(
            "dependency",
            DEPENDENCIES.to_vec(),
            Gauge::default,
            |i, _| match role {
                Role::Edge => i == 0,
                Role::Router => i <= 1,
                Role::Worker(_) | Role::All => true,
            },
        );
        r.register(
            "sb_dependency_up",
            "1 if the dependency answered this process's readiness check run at this scrape, else 0",
            dependency_up.family.clone(),
        );
        let records_published =
            ByLabel::new("topic_kind", topic_kinds(), Counter::default, |_, _| true);
        r.register(
            "sb_records_published",
            "Records a producer had acknowledged by Kafka, by topic kind",
            records_published.family.clone(),
        );
        let publish_failures = Counter::default();
        r.register(
            "sb_publish_failures",
            "Records a producer could not deliver to Kafka in time",
            publish_failures.clone(),
        );
        r.register(
            "sb_trace_spans_dropped",
            "Finished spans not exported, by reason: queue_full (the exporter's queue was full), \
             export_failed (the collector refused them or did not answer in time)",
            crate::trace::drops().family.clone(),
        );
        let produce_seconds = latency();
        r.register_with_unit(
            "sb_kafka_produce_duration",
            "Time from handing a record to the producer to Kafka's acknowledgement",
            Unit::Seconds,
            produce_seconds.clone(),
        );

        let consumes = role.consumes();
        let records_consumed =
            ByLabel::new("topic_kind", topic_kinds(), Counter::default, |_, k| {
                role.consumes_kind(k)
            });
        let records_dead_lettered = Counter::default();
        let records_retried = Counter::default();
        let consumer_batches =
            ByLabel::new("bound", BATCH_BOUNDS.to_vec(), Counter::default, |_, _| {
                consumes
            });
        let consumer_batch_records = batch_sizes();
        let consumer_lag: Family<Labels, Gauge> = Family::default();
        let consumer_prefetched: Family<Labels, Gauge> = Family::default();
        let consumer_in_flight = Gauge::default();
        let consumer_oldest_in_flight = FloatGauge::default();
        if consumes {
            r.register(
                "sb_consumer_records_in_flight",
                "Records handed to the consumer loop's lanes and not finished yet: queued in a lane or being handled (at scrape time)",
                consumer_in_flight.clone(),
            );
            r.register(
                "sb_consumer_oldest_in_flight_seconds",
                "How long the oldest record in flight in the consumer loop has waited in its lane or its handler, 0 when none is (at scrape time): it grows without bound while a handler hangs",
                consumer_oldest_in_flight.clone(),
            );
            r.register(
                "sb_records_consumed",
                "Records the consumer loop finished, by topic kind",
                records_consumed.family.clone(),
            );
            r.register(
                "sb_records_dead_lettered",
                "Records the consumer loop published to the dead-letter topic",
                records_dead_lettered.clone(),
            );
            r.register(
                "sb_records_retried",
                "Records handed to the handler again after a transient failure",
                records_retried.clone(),
            );
            r.register(
                "sb_consumer_batches",
                "Batches the consumer loop handed to its handler, by what closed them",
                consumer_batches.family.clone(),
            );
            r.register(
                "sb_consumer_batch_records",
                "Records per batch the consumer loop handed to its handler",
                consumer_batch_records.clone(),
            );
            r.register(
                "sb_consumer_lag",
                "Records not yet consumed per partition of the group, from librdkafka's statistics",
                consumer_lag.clone(),
            );
            r.register(
                "sb_consumer_prefetched",
                "Records the group's consumer holds fetched and not yet taken by the loop, from librdkafka's statistics",
                consumer_prefetched.clone(),
            );
        }

        let edge = role.is(Role::Edge);
        let ws_connections = Gauge::default();
        let ws_connections_opened = Counter::default();
        let ws_handshakes_refused = ByLabel::new(
            "reason",
            ErrorCode::ALL.iter().map(|c| c.as_str()).collect(),
            Counter::default,
            |_, _| edge,
        );
        let ws_frames_in = Counter::default();
        let ws_frames_out = Counter::default();
        let ws_frames_rejected = Counter::default();
        let ws_requests_timed_out = Counter::default();
        let ws_late_replies = Counter::default();
        let ws_slow_clients_disconnected = Counter::default();
        let http_requests = Counter::default();
        let http_connections_closed = ByLabel::new(
            "reason",
            HTTP_CLOSE_REASONS.to_vec(),
            Counter::default,
            |_, _| edge,
        );
        let edge_request_seconds =
            ByLabel::new("kind", kinds.clone(), latency as Ctor<Histogram>, |_, _| {
                edge
            });
        let dm_delivery_seconds = latency();
        let ws_outbound_queued = Gauge::default();
        let ws_outbound_queue_max = Gauge::default();
        if edge {
            r.register(
                "sb_ws_outbound_queued",
                "Frames waiting in the WebSocket connections' outbound queues, summed (at scrape time)",
                ws_outbound_queued.clone(),
            );
            r.register(
                "sb_ws_outbound_queue_max",
                "Frames waiting in the fullest outbound queue (at scrape time)",
                ws_outbound_queue_max.clone(),
            );
            r.register_with_unit(
                "sb_dm_delivery_duration",
                "Time from a direct message's commit (the worker's clock, ms) to its event being queued for a recipient's socket (the edge's clock)",
                Unit::Seconds,
                dm_delivery_seconds.clone(),
            );
            r.register(
                "sb_ws_connections",
                "Open WebSocket connections",
                ws_connections.clone(),
            );
            r.register(
                "sb_ws_connections_opened",
                "WebSocket connections opened",
                ws_connections_opened.clone(),
            );
            r.register(
                "sb_ws_handshakes_refused",
                "WebSocket handshakes refused, by error code",
                ws_handshakes_refused.family.clone(),
            );
            r.register(
                "sb_ws_frames_in",
                "Text frames received from clients",
                ws_frames_in.clone(),
            );
            r.register(
                "sb_ws_frames_out",
                "Frames queued to client sockets",
                ws_frames_out.clone(),
            );
            r.register(
                "sb_ws_frames_rejected",
                "Error frames the edge answered itself",
                ws_frames_rejected.clone(),
            );
            r.register(
                "sb_ws_requests_timed_out",
                "WebSocket requests the edge answered unavailable: no reply within edge.request_timeout_ms",
                ws_requests_timed_out.clone(),
            );
            r.register(
                "sb_ws_late_replies",
                "Replies to WebSocket requests dropped: the request was answered already (at its deadline) or its connection had closed",
                ws_late_replies.clone(),
            );
            r.register(
                "sb_ws_slow_clients_disconnected",
                "Clients disconnected because their outbound queue was full",
                ws_slow_clients_disconnected.clone(),
            );
            r.register("sb_http_requests", "HTTP API calls", http_requests.clone());
            r.register(
                "sb_http_connections_closed",
                "HTTP connections the edge closed or refused for a bound, by reason",
                http_connections_closed.family.clone(),
            );
            r.register_with_unit(
                "sb_edge_request_duration",
                "Time from publishing a request to its worker's reply reaching the edge, by request kind",
                Unit::Seconds,
                edge_request_seconds.family.clone(),
            );
        }

        let worker = role.is_worker();
        let requests_handled = ByLabel::new("kind", kinds.clone(), Counter::default, |i, _| {
            role.handles(KINDS[i].domain)
        });
        let requests_expired = ByLabel::new("kind", kinds.clone(), Counter::default, |i, _| {
            role.handles(KINDS[i].domain)
        });
        let request_errors = ByKindCode::new(r, |d| role.handles(d));
        let handler_seconds = ByLabel::new("kind", kinds, latency as Ctor<Histogram>, |i, _| {
            role.handles(KINDS[i].domain)
        });
        let account_checks = Counter::default();
        let account_check_queries = Counter::default();
        let revocations_unacknowledged = Counter::default();
        let requests_unavailable = ByLabel::new(
            "reason",
            UNAVAILABLE_REASONS.to_vec(),
            Counter::default,
            |_, _| worker,
        );
        let shard_breaker_open: Family<Labels, Gauge> = Family::default();
        if worker {
            r.register(
                "sb_requests_handled",
                "Requests workers answered successfully, by request kind",
                requests_handled.family.clone(),
            );
            r.register(
                "sb_requests_expired",
                "Requests a worker dropped unapplied because their deadline had passed (their edge answered the client unavailable), by request kind",
                requests_expired.family.clone(),
            );
            r.register_with_unit(
                "sb_request_handler_duration",
                "Time a worker spent on a request (a batch of sends: the batch's time, per send), by request kind",
                Unit::Seconds,
                handler_seconds.family.clone(),
            );
            r.register(
                "sb_account_checks",
                "Checks that a bearer token's account still exists",
                account_checks.clone(),
            );
            r.register(
                "sb_account_check_queries",
                "Queries that answered the account checks",
                account_check_queries.clone(),
            );
            r.register(
                "sb_revocations_unacknowledged",
                "Revocations answered unavailable: too few replicas acknowledged them in time",
                revocations_unacknowledged.clone(),
            );
            r.register(
                "sb_requests_unavailable",
                "Requests a worker answered unavailable because a MariaDB shard they need is down, by reason: breaker_open (refused at once), shard_failed (tried; the failure opened the breaker)",
                requests_unavailable.family.clone(),
            );
            r.register(
                "sb_shard_breaker_open",
                "1 while the circuit breaker of a MariaDB shard is open (requests that need it are answered unavailable), else 0, by shard",
                shard_breaker_open.clone(),
            );
        }
        let mariadb_connections_in_use: Family<Labels, Gauge> = Family::default();
        let mariadb_connections_max: Family<Labels, Gauge> = Family::default();
        if worker {
            r.register(
                "sb_mariadb_connections_in_use",
                "MariaDB connections checked out of the worker's pool, by shard and pool (primary, replica)",
                mariadb_connections_in_use.clone(),
            );
            r.register(
                "sb_mariadb_connections_max",
                "The most connections the worker's MariaDB pool opens, by shard and pool (primary, replica)",
                mariadb_connections_max.clone(),
            );
        }
        let mariadb_replica_lag: Family<Labels, FloatGauge> = Family::default();
        let mariadb_replica_up: Family<Labels, Gauge> = Family::default();
        if role.handles(Domain::Users) {
            r.register_with_unit(
                "sb_mariadb_replica_lag",
                "Seconds_Behind_Master of each shard's replica, asked at this scrape; NaN when unknown (sb_mariadb_replica_up 0)",
                Unit::Seconds,
                mariadb_replica_lag.clone(),
            );
            r.register(
                "sb_mariadb_replica_up",
                "1 if each shard's replica answered SHOW REPLICA STATUS at this scrape with both replication threads running, else 0",
                mariadb_replica_up.clone(),
            );
        }
        let redis_requests_in_flight = Gauge::default();
        if worker || role.is(Role::Router) {
            r.register(
                "sb_redis_requests_in_flight",
                "Redis commands and pipelines sent on the process's cluster connections and not answered yet",
                redis_requests_in_flight.clone(),
            );
        }
        let messages_persisted = Counter::default();
        let dm_commit_seconds = Family::new_with_constructor(latency as Ctor<Histogram>);
        if role.handles(Domain::Dms) {
            r.register(
                "sb_messages_persisted",
                "Direct messages committed to MariaDB",
                messages_persisted.clone(),
            );
            r.register_with_unit(
                "sb_dm_commit_duration",
                "Time of one shard's MariaDB transaction storing a batch of direct messages, by shard",
                Unit::Seconds,
                dm_commit_seconds.clone(),
            );
        }

        let deliveries_routed = Counter::default();
        if role.is(Role::Router) {
            r.register(
                "sb_deliveries_routed",
                "Records the router published to edge topics",
                deliveries_routed.clone(),
            );
        }

        Metrics(Arc::new(Inner {
            registry: reg,
            refresh: OnceLock::new(),
            dependency_up,
            records_published,
            publish_failures,
            produce_seconds,
            records_consumed,
            records_dead_lettered,
            records_retried,
            consumer_batches,
            consumer_batch_records,
            consumer_lag,
            consumer_prefetched,
            consumer_in_flight,
            consumer_oldest_in_flight,
            ws_connections,
            ws_connections_opened,
            ws_handshakes_refused,
            ws_frames_in,
            ws_frames_out,
            ws_frames_rejected,
            ws_requests_timed_out,
            ws_late_replies,
            ws_slow_clients_disconnected,
            http_requests,
            http_connections_closed,
            edge_request_seconds,
            dm_delivery_seconds,
            ws_outbound_queued,
            ws_outbound_queue_max,
            requests_handled,
            requests_expired,
            request_errors,
            handler_seconds,
            account_checks,
            account_check_queries,
            revocations_unacknowledged,
            requests_unavailable,
            shard_breaker_open,
            messages_persisted,
            dm_commit_seconds,
            mariadb_connections_in_use,
            mariadb_connections_max,
            mariadb_replica_lag,
            mariadb_replica_up,
            redis_requests_in_flight,
            deliveries_routed,
        }))
    }

    /// `sb_shard_breaker_open` of physical shard `shard`.
    pub fn shard_breaker(&self, shard: usize) -> Gauge {
        self.shard_breaker_open
            .get_or_create(&vec![("shard", shard.to_string())])
            .clone()
    }

    /// Show the commit-time histogram of shards `0..n` at zero (a dms worker, once it knows its
    /// shards).
    pub fn shards(&self, n: usize) {
        for i in 0..n {
            self.dm_commit_seconds(i);
        }
    }

    /// The commit-time histogram of shard `shard` (looked up once per batch commit).
    pub fn dm_commit_seconds(&self, shard: usize) -> Histogram {
        self.dm_commit_seconds
            .get_or_create_owned(&vec![("shard", shard.to_string())])
    }

    /// The in-use gauge of the connection pool `pool` (of [`MARIADB_POOLS`]) of shard `shard`,
    /// shown at zero, with its maximum `max` beside it (a worker, once it builds its pools).
    pub fn mariadb_pool(&self, shard: usize, pool: &'static str, max: usize) -> Gauge {
        let labels = vec![("shard", shard.to_string()), ("pool", pool.to_string())];
        self.mariadb_connections_max
            .get_or_create(&labels)
            .set(max as i64);
        self.mariadb_connections_in_use.get_or_create_owned(&labels)
    }

    /// The lag and up gauges of shard `shard`'s replica (a users worker, for each shard with a
    /// replica): the lag starts as NaN (unknown), up at 0, until the first scrape asks.
    pub fn mariadb_replica(&self, shard: usize) -> (FloatGauge, Gauge) {
        let labels = vec![("shard", shard.to_string())];
        let lag = self.mariadb_replica_lag.get_or_create_owned(&labels);
        let up = self.mariadb_replica_up.get_or_create_owned(&labels);
        if up.get() == 0 {
            lag.set(f64::NAN);
        }
        (lag, up)
    }

    /// Run `f` before each rendering, to set gauges from state read at scrape time (the first
    /// one set stays). `f` must not hold what holds these metrics (a cycle): take a `Weak`.
    pub fn on_scrape(&self, f: impl Fn() + Send + Sync + 'static) {
        let _ = self.refresh.set(Box::new(f));
    }

    /// The OpenMetrics text exposition, ending in `# EOF`.
    pub fn render(&self) -> String {
        if let Some(f) = self.refresh.get() {
            f();
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// The value of the sample line `series` (name and labels exactly as rendered, e.g.
/// `sb_ws_connections` or `sb_requests_handled_total{kind="ping"}`) in an exposition `text`.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
}

/// `process_*`: CPU time, resident memory and open file descriptors, read from `/proc/self` at
/// each scrape (nothing where there is no `/proc`).
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(p) = ProcessStats::read() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(p.cpu_seconds);
        cpu.encode(enc.encode_descriptor(
            "process_cpu",
            "Total user and system CPU time spent.",
            Some(&Unit::Seconds),
            cpu.metric_type(),
        )?)?;
        let rss = ConstGauge::new(p.resident_bytes);
        rss.encode(enc.encode_descriptor(
            "process_resident_memory",
            "Resident memory size.",
            Some(&Unit::Bytes),
            rss.metric_type(),
        )?)?;
        let fds = ConstGauge::new(p.open_fds);
        fds.encode(enc.encode_descriptor(
            "process_open_fds",
            "Number of open file descriptors.",
            None,
            fds.metric_type(),
        )?)?;
        Ok(())
    }
}

/// How many file descriptors this process has open. Linux 6.2 and later give the count as the
/// size of `/proc/self/fd`; listing that directory instead makes the kernel build an entry per
/// descriptor, which an edge holding 16,000 sockets paid at every scrape (about a tenth of its
/// CPU during a broadcast while the load generator scraped each second). Older kernels report
/// size 0 there: then the directory is listed.
fn open_fds() -> Option<usize> {
    fds_from(std::fs::metadata("/proc/self/fd").ok()?.len(), listed_fds)
}

/// The count from the directory's `size`, or from `list` where the kernel reports none.
fn fds_from(size: u64, list: fn() -> Option<usize>) -> Option<usize> {
    match size {
        0 => list(),
        n => Some(n as usize),
    }
}

/// The entries of a listing of `/proc/self/fd`, less the descriptor the listing itself holds.
fn listed_fds() -> Option<usize> {
    Some(
        std::fs::read_dir("/proc/self/fd")
            .ok()?
            .count()
            .saturating_sub(1),
    )
}

/// What `process_*` shows.
#[derive(Clone, Debug, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_bytes: i64,
    pub open_fds: i64,
}

impl ProcessStats {
    /// This process's figures, from `/proc/self`.
    pub fn read() -> Option<ProcessStats> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        ProcessStats::parse(
            &stat,
            &statm,
            open_fds()?,
            rustix::param::clock_ticks_per_second(),
            rustix::param::page_size(),
        )
    }

    /// From the texts of `/proc/self/stat` (utime and stime in clock ticks, fields 14 and 15)
    /// and `/proc/self/statm` (resident pages, field 2).
    pub fn parse(
        stat: &str,
        statm: &str,
        fds: usize,
        ticks_per_second: u64,
        page_size: usize,
    ) -> Option<ProcessStats> {
        // the command name (field 2) is in parentheses and may hold spaces: count after it
        let after = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = after.split_whitespace().collect();
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        let pages: i64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        Some(ProcessStats {
            cpu_seconds: (utime + stime) as f64 / ticks_per_second.max(1) as f64,
            resident_bytes: pages * page_size as i64,
            open_fds: fds as i64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> Option<f64> {
        sample(text, series)
    }

    #[test]
    fn every_topic_has_a_kind_of_its_own() {
        let t = topics::Topics::new("sb");
        let mut names: Vec<String> = Domain::ALL.iter().map(|d| t.requests(*d)).collect();
        names.extend([t.deliver(), t.dead_letter(), t.edge("edge-0")]);
        let kinds: Vec<&str> = names.iter().map(|n| crate::kafka::kind_of(n)).collect();
        assert_eq!(kinds, topic_kinds());
    }

    #[test]
    fn every_series_is_shown_at_zero_with_help_and_type() {
        // (`sb_consumer_lag` is per partition, known once assigned: `consume::record_lag`, and
        // `sb_consumer_prefetched` per group, from the first statistics report; the
        // shards of `sb_dm_commit_duration_seconds` are known once the worker connects)
        let m = Metrics::default();
        m.shards(2);
        let text = m.render();
        for (family, kind) in [
            ("sb_records_consumed", "counter"),
            ("sb_records_published", "counter"),
            ("sb_records_dead_lettered", "counter"),
            ("sb_records_retried", "counter"),
            ("sb_consumer_batches", "counter"),
            ("sb_consumer_batch_records", "histogram"),
            ("sb_consumer_records_in_flight", "gauge"),
            ("sb_publish_failures", "counter"),
            ("sb_trace_spans_dropped", "counter"),
            ("sb_kafka_produce_duration_seconds", "histogram"),
            ("sb_ws_connections", "gauge"),
            ("sb_ws_connections_opened", "counter"),
            ("sb_ws_handshakes_refused", "counter"),
            ("sb_ws_frames_in", "counter"),
            ("sb_ws_frames_out", "counter"),
            ("sb_ws_frames_rejected", "counter"),
            ("sb_ws_requests_timed_out", "counter"),
            ("sb_ws_late_replies", "counter"),
            ("sb_ws_slow_clients_disconnected", "counter"),
            ("sb_http_requests", "counter"),
            ("sb_http_connections_closed", "counter"),
            ("sb_edge_request_duration_seconds", "histogram"),
            ("sb_dm_delivery_duration_seconds", "histogram"),
            ("sb_ws_outbound_queued", "gauge"),
            ("sb_ws_outbound_queue_max", "gauge"),
            ("sb_requests_handled", "counter"),
            ("sb_requests_expired", "counter"),
            ("sb_request_errors", "counter"),
            ("sb_request_handler_duration_seconds", "histogram"),
            ("sb_account_checks", "counter"),
            ("sb_account_check_queries", "counter"),
            ("sb_revocations_unacknowledged", "counter"),
            ("sb_requests_unavailable", "counter"),
            ("sb_messages_persisted", "counter"),
            ("sb_dm_commit_duration_seconds", "histogram"),
            ("sb_deliveries_routed", "counter"),
            ("switchboard_build", "info"),
            ("sb_dependency_up", "gauge"),
        ] {
            assert!(
                text.contains(&format!("\n# TYPE {family} {kind}\n")),
                "{family}: {text}"
            );
            assert!(text.contains(&format!("# HELP {family} ")), "{family}");
        }
        // the documented names, at zero before any use
        for series in [
            "sb_records_consumed_total{topic_kind=\"dms\"}",
            "sb_records_published_total{topic_kind=\"edge\"}",
            "sb_records_dead_lettered_total",
            "sb_records_retried_total",
            "sb_consumer_batches_total{bound=\"wait\"}",
            "sb_consumer_records_in_flight",
            "sb_publish_failures_total",
            "sb_trace_spans_dropped_total{reason=\"queue_full\"}",
            "sb_trace_spans_dropped_total{reason=\"export_failed\"}",
            "sb_ws_connections",
            "sb_ws_outbound_queued",
            "sb_ws_outbound_queue_max",
            "sb_ws_connections_opened_total",
            "sb_ws_handshakes_refused_total{reason=\"unauthorized\"}",
            "sb_ws_frames_in_total",
            "sb_ws_frames_out_total",
            "sb_ws_frames_rejected_total",
            "sb_ws_requests_timed_out_total",
            "sb_ws_late_replies_total",
            "sb_ws_slow_clients_disconnected_total",
            "sb_http_requests_total",
            "sb_http_connections_closed_total{reason=\"header_timeout\"}",
            "sb_requests_handled_total{kind=\"dm.send\"}",
            "sb_requests_expired_total{kind=\"dm.send\"}",
            "sb_request_errors_total{kind=\"dm.send\",code=\"forbidden\"}",
            "sb_account_checks_total",
            "sb_account_check_queries_total",
            "sb_revocations_unacknowledged_total",
            "sb_requests_unavailable_total{reason=\"breaker_open\"}",
            "sb_requests_unavailable_total{reason=\"shard_failed\"}",
            "sb_messages_persisted_total",
            "sb_deliveries_routed_total",
            "sb_edge_request_duration_seconds_count{kind=\"ping\"}",
            "sb_request_handler_duration_seconds_count{kind=\"session.login\"}",
            "sb_kafka_produce_duration_seconds_count",
            "sb_dm_delivery_duration_seconds_count",
            "sb_consumer_batch_records_count",
        ] {
            assert_eq!(value(&text, series), Some(0.0), "{series}: {text}");
        }
        assert!(text.ends_with("# EOF\n"));
        // every kind, every code
        let kinds = text
            .lines()
            .filter(|l| l.starts_with("sb_requests_handled_total{"))
            .count();
        assert_eq!(kinds, KINDS.len());
        let errors = text
            .lines()
            .filter(|l| l.starts_with("sb_request_errors_total{"))
            .count();
        assert_eq!(errors, KINDS.len() * ErrorCode::ALL.len());
        assert!(text.contains(&format!(
            "switchboard_build_info{{version=\"{}\",commit=\"{COMMIT}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
        assert!(!COMMIT.is_empty());
    }

    #[test]
    fn each_role_shows_its_own_series() {
        let edge = Metrics::new(Role::Edge).render();
        assert!(edge.contains("sb_ws_connections 0"));
        assert!(edge.contains("sb_edge_request_duration_seconds_count{kind=\"dm.send\"} 0"));
        assert!(edge.contains("sb_records_published_total{topic_kind=\"dms\"} 0"));
        assert!(!edge.contains("sb_records_consumed"), "{edge}");
        assert!(!edge.contains("sb_requests_handled"));
        assert!(!edge.contains("sb_deliveries_routed"));
        assert!(edge.contains("sb_dependency_up{dependency=\"kafka\"} 0"));
        assert!(!edge.contains("sb_dependency_up{dependency=\"redis\"}"));

        let dms = Metrics::new(Role::Worker(Domain::Dms));
        dms.shards(2);
        let text = dms.render();
        assert!(text.contains("sb_records_consumed_total{topic_kind=\"dms\"} 0"));
        assert!(!text.contains("sb_records_consumed_total{topic_kind=\"auth\"}"));
        assert!(text.contains("sb_requests_handled_total{kind=\"dm.send\"} 0"));
        assert!(!text.contains("sb_requests_handled_total{kind=\"ping\"}"));
        assert!(text.contains("sb_dm_commit_duration_seconds_count{shard=\"1\"} 0"));
        assert!(!text.contains("sb_ws_"));
        for d in DEPENDENCIES {
            assert!(text.contains(&format!("sb_dependency_up{{dependency=\"{d}\"}} 0")));
        }
        // a handle of a series not shown still works (nobody scrapes it)
        dms.requests_handled.at(0).inc();
        dms.request_errors.get(0, ErrorCode::Internal).inc();
        assert!(!dms.render().contains("kind=\"ping\""));

        let auth = Metrics::new(Role::Worker(Domain::Auth)).render();
        assert!(!auth.contains("sb_messages_persisted"));
        assert!(auth.contains("sb_request_errors_total{kind=\"ping\",code=\"internal\"} 0"));

        let router = Metrics::new(Role::Router).render();
        assert!(router.contains("sb_deliveries_routed_total 0"));
        assert!(router.contains("sb_records_consumed_total{topic_kind=\"deliver\"} 0"));
        assert!(!router.contains("sb_request_errors"));
        assert!(router.contains("sb_dependency_up{dependency=\"redis\"} 0"));
        assert!(!router.contains("sb_dependency_up{dependency=\"mariadb\"}"));
    }

    #[test]
    fn observations_land_in_their_series_and_buckets() {
        let m = Metrics::default();
        m.records_consumed.get("dms").inc_by(3);
        m.records_consumed.get("other").inc();
        m.ws_connections.inc();
        m.ws_connections.inc();
        m.ws_connections.dec();
        m.request_errors
            .get(topics::Request::Ping.kind_index(), ErrorCode::Conflict)
            .inc();
        let h = m
            .edge_request_seconds
            .at(topics::Request::Ping.kind_index());
        h.observe(0.0007);
        h.observe(0.003);
        h.observe(20.0);
        m.dm_commit_seconds(0).observe(0.02);
        let text = m.render();
        assert_eq!(
            value(&text, "sb_records_consumed_total{topic_kind=\"dms\"}"),
            Some(3.0)
        );
        assert_eq!(
            value(&text, "sb_records_consumed_total{topic_kind=\"other\"}"),
            Some(1.0)
        );
        assert_eq!(value(&text, "sb_ws_connections"), Some(1.0));
        assert_eq!(
            value(
                &text,
                "sb_request_errors_total{kind=\"ping\",code=\"conflict\"}"
            ),
            Some(1.0)
        );
        let bucket = |le: &str| {
            value(
                &text,
                &format!("sb_edge_request_duration_seconds_bucket{{le=\"{le}\",kind=\"ping\"}}"),
            )
        };
        assert_eq!(bucket("0.0005"), Some(0.0));
        assert_eq!(bucket("0.001"), Some(1.0));
        assert_eq!(bucket("0.005"), Some(2.0));
        assert_eq!(bucket("10.0"), Some(2.0));
        assert_eq!(bucket("+Inf"), Some(3.0));
        assert_eq!(
            value(
                &text,
                "sb_edge_request_duration_seconds_count{kind=\"ping\"}"
            ),
            Some(3.0)
        );
        assert_eq!(
            value(&text, "sb_dm_commit_duration_seconds_count{shard=\"0\"}"),
            Some(1.0)
        );
        assert!(text.contains("# UNIT sb_edge_request_duration_seconds seconds"));

        // gauges read at scrape time
        let n = Arc::new(std::sync::atomic::AtomicI64::new(4));
        let weak = Arc::downgrade(&n);
        let g = m.ws_outbound_queued.clone();
        m.on_scrape(move || {
            if let Some(n) = weak.upgrade() {
                g.set(n.load(std::sync::atomic::Ordering::Relaxed));
            }
        });
        assert_eq!(value(&m.render(), "sb_ws_outbound_queued"), Some(4.0));
        n.store(9, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(value(&m.render(), "sb_ws_outbound_queued"), Some(9.0));
    }

    #[test]
    fn pool_and_replica_gauges_show_per_shard_and_in_use_counts_while_held() {
        let m = Metrics::new(Role::Worker(Domain::Users));
        let text = m.render();
        assert!(text.contains("\n# TYPE sb_redis_requests_in_flight gauge\n"));
        assert_eq!(value(&text, "sb_redis_requests_in_flight"), Some(0.0));
        // the shards' series come with the pools (a worker, once it builds them)
        assert!(!text.contains("sb_mariadb"), "{text}");

        let primary = m.mariadb_pool(1, "primary", 16);
        m.mariadb_pool(1, "replica", 16);
        let (lag, up) = m.mariadb_replica(1);
        let in_use = "sb_mariadb_connections_in_use{shard=\"1\",pool=\"primary\"}";
        let text = m.render();
        for family in [
            "sb_mariadb_connections_in_use",
            "sb_mariadb_connections_max",
            "sb_mariadb_replica_up",
            "sb_mariadb_replica_lag_seconds",
        ] {
            assert!(
                text.contains(&format!("\n# TYPE {family} gauge\n")),
                "{text}"
            );
            assert!(text.contains(&format!("# HELP {family} ")), "{family}");
        }
        assert!(text.contains("# UNIT sb_mariadb_replica_lag_seconds seconds"));
        assert_eq!(value(&text, in_use), Some(0.0), "{text}");
        assert_eq!(
            value(
                &text,
                "sb_mariadb_connections_max{shard=\"1\",pool=\"replica\"}"
            ),
            Some(16.0)
        );
        // unknown until asked
        assert_eq!(
            value(&text, "sb_mariadb_replica_lag_seconds{shard=\"1\"}").map(f64::is_nan),
            Some(true)
        );
        assert_eq!(
            value(&text, "sb_mariadb_replica_up{shard=\"1\"}"),
            Some(0.0)
        );
        up.set(1);
        lag.set(4.0);
        // asking for the gauges again (a second pool of the same shard) keeps what they show
        let _ = m.mariadb_replica(1);
        assert_eq!(
            value(&m.render(), "sb_mariadb_replica_lag_seconds{shard=\"1\"}"),
            Some(4.0)
        );

        let a = InUse::new(&primary);
        let b = InUse::new(&primary);
        assert_eq!(value(&m.render(), in_use), Some(2.0));
        drop(a);
        assert_eq!(value(&m.render(), in_use), Some(1.0));
        let held = std::panic::catch_unwind(move || {
            let _b = b;
            panic!("a holder that panics still gives its count back");
        });
        assert!(held.is_err());
        assert_eq!(value(&m.render(), in_use), Some(0.0));

        // who shows what: every worker its pools, users workers the replicas, the router Redis
        let dms = Metrics::new(Role::Worker(Domain::Dms));
        dms.mariadb_pool(0, "primary", 4);
        let _ = dms.mariadb_replica(0);
        let dms = dms.render();
        assert!(dms.contains("sb_mariadb_connections_max{shard=\"0\",pool=\"primary\"} 4"));
        assert!(!dms.contains("sb_mariadb_replica"), "{dms}");
        let router = Metrics::new(Role::Router).render();
        assert!(router.contains("sb_redis_requests_in_flight 0"));
        assert!(!router.contains("sb_mariadb"));
        let edge = Metrics::new(Role::Edge).render();
        assert!(!edge.contains("sb_redis") && !edge.contains("sb_mariadb"));
    }

    #[test]
    fn process_figures_come_from_proc() {
        assert_eq!(sample("a 1\nb x\n", "b"), None);
        let stat = "42 (my (odd) name) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1";
        let p = ProcessStats::parse(stat, "1000 300 20 1 0 50 0", 7, 100, 4096).unwrap();
        assert_eq!(
            p,
            ProcessStats {
                cpu_seconds: 3.0,
                resident_bytes: 300 * 4096,
                open_fds: 7,
            }
        );
        assert_eq!(ProcessStats::parse("no parens", "1 2", 0, 100, 4096), None);
        assert_eq!(ProcessStats::parse(stat, "1", 0, 100, 4096), None);
        let live = ProcessStats::read().expect("Linux has /proc");
        assert!(live.resident_bytes > 0 && live.open_fds > 0);
        // the descriptors are counted from the directory's size where the kernel gives one,
        // else listed; both see the same descriptors (other tests open and close a few meanwhile)
        assert_eq!(fds_from(0, || Some(3)), Some(3));
        assert_eq!(fds_from(9, || None), Some(9));
        let held: Vec<std::fs::File> = (0..200)
            .map(|_| std::fs::File::open("/dev/null").unwrap())
            .collect();
        let (sized, listed) = (open_fds().unwrap(), listed_fds().unwrap());
        assert!(
            sized >= held.len() && listed >= held.len(),
            "{sized} {listed}"
        );
        assert!(sized.abs_diff(listed) < 50, "{sized} {listed}");
        let text = Metrics::default().render();
        assert!(text.contains("# TYPE process_cpu_seconds counter"));
        assert!(text.contains("process_cpu_seconds_total "));
        assert!(text.contains("# TYPE process_resident_memory_bytes gauge"));
        assert!(text.contains("process_resident_memory_bytes "));
        assert!(text.contains("process_open_fds "));
    }
}
