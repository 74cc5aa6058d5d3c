//! The router: turns "deliver this frame to users U… / to these sessions / to everyone" into
//! records on the right per-edge topics, using the connection registry in Redis Cluster.
//! Connections of dead edges, or of an earlier process of a live edge, are skipped and removed
//! from the registry on the way.

use futures::future::BoxFuture;
use runtime::consume::{Failure, Handler, Inbound};
use runtime::kafka::Publisher;
use runtime::metrics::Metrics;
use runtime::redis::{Cluster, Keys};
use runtime::registry::{plan, users_of, Registry};
use runtime::{KafkaSettings, RedisSettings, ServiceSettings};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use topics::bus::decode_versioned;
use topics::{Delivery, Topics};
use tracing::Instrument;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub kafka: KafkaSettings,
    pub redis: RedisSettings,
    pub service: ServiceSettings,
    #[serde(default)]
    pub router: RouterSettings,
    #[serde(default)]
    pub log: runtime::LogSettings,
    #[serde(default)]
    pub trace: runtime::TraceSettings,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouterSettings {
    /// An edge silent this long is dead.
    pub edge_liveness_ms: u64,
    pub lanes: usize,
}

impl Default for RouterSettings {
    fn default() -> Self {
        RouterSettings {
            edge_liveness_ms: 10_000,
            lanes: 16,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Runtime(#[from] runtime::Error),
    #[error("redis: {0}")]
    Redis(#[from] runtime::redis::redis::RedisError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub struct Router {
    pub topics: Topics,
    pub publisher: Publisher,
    pub redis: Cluster,
    pub registry: Registry,
    pub metrics: Metrics,
}

impl Router {
    /// Route one delivery; returns how many edge records were published.
    pub async fn route(&self, d: &Delivery) -> Result<usize, Failure> {
        let transient = |e: Error| Failure::Transient(e.to_string());
        let c = self.redis.get().await.map_err(|e| transient(e.into()))?;
        let users = users_of(d);
        let reach = self
            .registry
            .reach(&c, &users, runtime::now_ms())
            .await
            .map_err(|e| transient(e.into()))?;
        let records = plan(d, reach.conns_of(&users), &reach.live);
        let sends = records.iter().map(|(edge, msg)| {
            let payload = serde_json::to_vec(msg).expect("edge messages serialise");
            let topic = self.topics.edge(edge);
            async move { self.publisher.send(&topic, &d.key(), &payload).await }
        });
        for sent in futures::future::join_all(sends).await {
            sent.map_err(|e| Failure::Transient(e.to_string()))?;
        }
        self.metrics.deliveries_routed.inc_by(records.len() as u64);
        Ok(records.len())
    }
}

impl Handler for Router {
    fn handle<'a>(&'a self, record: &'a Inbound) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async move {
            let d: Delivery =
                decode_versioned(&record.payload).map_err(|e| Failure::Poison(e.to_string()))?;
            // with tracing on, the routing is a span of the delivery's trace, parent of the
            // publishes to the edges
            let span = runtime::trace::span_if(record.trace.sampled(), || {
                let span = tracing::info_span!("router.route", otel.kind = "consumer");
                runtime::trace::set_parent(&span, &record.trace);
                span
            });
            self.route(&d).instrument(span).await.map(|_| ())
        })
    }
}

/// Build the router's dependencies.
pub async fn build(settings: &Settings, metrics: Metrics) -> Result<Arc<Router>> {
    let topics = settings.kafka.topics();
    runtime::kafka::ensure_shared_topics(&settings.kafka).await?;
    Ok(Arc::new(Router {
        publisher: Publisher::new(&settings.kafka, metrics.clone())?,
        redis: runtime::redis::cluster(&settings.redis)?.counted(&metrics.redis_requests_in_flight),
        registry: Registry {
            keys: Keys::new(settings.redis.key_prefix.clone()),
            liveness_ms: settings.router.edge_liveness_ms,
        },
        topics,
        metrics,
    }))
}

/// The `router` binary: settings, telemetry, run until a signal, on a multi-threaded Tokio
/// runtime; a plain function so that the router's code is compiled once, in this library.
#[tokio::main]
pub async fn start() -> anyhow::Result<()> {
    let settings: Settings = runtime::settings::load_or_exit();
    let telemetry = runtime::telemetry::init_or_exit("router", &settings.log, &settings.trace);
    let stop = runtime::shutdown::on_signal();
    let result = run(settings, stop).await;
    telemetry.shutdown().await;
    Ok(result?)
}

/// Run until `stop`: consume the delivery topic, drain, flush.
pub async fn run(settings: Settings, stop: CancellationToken) -> Result<()> {
    let metrics = Metrics::new(runtime::metrics::Role::Router);
    let readiness = runtime::health::Readiness::new(stop.clone());
    // /readyz answers 503 "stopping" (and /metrics still answers) while the process drains: the
    // health endpoint stops last, once this function returns, whichever way
    let health_stop = CancellationToken::new();
    let _health_guard = health_stop.clone().drop_guard();
    let (addr, health) = runtime::health::serve(
        &settings.service.health_listen,
        metrics.clone(),
        readiness.clone(),
        health_stop.clone(),
    )
    .await?;
    tracing::info!(%addr, "router health endpoint up");
    let router = build(&settings, metrics.clone()).await?;
    readiness.set(vec![
        runtime::health::kafka(&router.publisher),
        runtime::health::redis(&router.redis),
    ]);
    let consumer =
        runtime::kafka::loop_consumer(&settings.kafka, &router.topics.group("router"), false)?;
    {
        use rdkafka::consumer::Consumer;
        consumer
            .subscribe(&[&router.topics.deliver()])
            .map_err(runtime::Error::from)?;
    }
    let loop_settings = runtime::consume::LoopSettings {
        lanes: settings.router.lanes,
        lane_capacity: 64,
        dead_letter_topic: router.topics.dead_letter(),
        drain_timeout: std::time::Duration::from_secs(10),
        batch: runtime::consume::BatchSettings::default(),
    };
    runtime::consume::run(
        consumer,
        router.clone(),
        router.publisher.clone(),
        loop_settings,
        metrics,
        stop,
    )
    .await;
    router
        .publisher
        .flush(std::time::Duration::from_secs(5))
        .await;
    health_stop.cancel();
    let _ = health.await;
    tracing::info!("router stopped");
    Ok(())
}
