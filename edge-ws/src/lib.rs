//! The WebSocket/HTTP edge. It terminates client connections, wraps every frame and HTTP call in
//! an [`topics::Envelope`], publishes it to Kafka, consumes its own per-edge topic and writes what
//! arrives to the right sockets. No business logic and no database: what a request means is the
//! workers' business.

pub mod flights;
pub mod http;
pub mod hub;
pub mod inbox;
pub mod limits;
pub mod ratelimit;
pub mod rpc;
pub mod server;
pub mod settings;
pub mod ws;

pub use settings::{EdgeSettings, Settings};

use hub::Hub;
use runtime::kafka::Publisher;
use runtime::metrics::Metrics;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use topics::{EdgeEvent, Topics};
use warp::Filter;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Runtime(#[from] runtime::Error),
    #[error("edge id {0:?} must be 1-32 characters of a-z, 0-9 and -")]
    EdgeId(String),
    #[error("listen address {0:?}: {1}")]
    Listen(String, std::net::AddrParseError),
    #[error("binding {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What every part of the edge shares.
pub struct Edge {
    pub settings: EdgeSettings,
    pub topics: Topics,
    pub publisher: Publisher,
    /// Shared with the producer's failure callbacks (which must not hold the edge, and so its
    /// producer, themselves).
    pub hub: Arc<Hub>,
    /// Per-client connection caps and API rate limits.
    pub limits: limits::Limits,
    pub metrics: Metrics,
    /// Every connection's task, so shutdown can wait for them.
    pub connections: tokio_util::task::TaskTracker,
    /// Boot time in seconds: the top bits of every connection id of this process.
    pub epoch: u64,
}

impl Edge {
    /// An edge for unit tests: no listener, and a producer whose broker is not there.
    #[cfg(test)]
    pub(crate) fn for_tests(settings: EdgeSettings) -> Arc<Edge> {
        Edge::for_tests_with(settings, &runtime::KafkaSettings::default())
    }

    /// [`Edge::for_tests`] with these Kafka settings (a short `message_timeout_ms`, say).
    #[cfg(test)]
    pub(crate) fn for_tests_with(
        settings: EdgeSettings,
        kafka: &runtime::KafkaSettings,
    ) -> Arc<Edge> {
        let metrics = Metrics::default();
        Arc::new(Edge {
            limits: limits::Limits::new(&settings),
            settings,
            topics: Topics::new("t"),
            publisher: Publisher::new(kafka, metrics.clone()).expect("producer"),
            hub: Arc::new(Hub::new(1, metrics.clone())),
            metrics,
            connections: tokio_util::task::TaskTracker::new(),
            epoch: 1,
        })
    }

    /// [`Edge::for_tests`] with no broker at its address: every publish fails once
    /// `message_timeout_ms` has passed (real time: librdkafka's own timers).
    #[cfg(test)]
    pub(crate) fn without_broker(message_timeout_ms: u64) -> Arc<Edge> {
        let kafka = runtime::KafkaSettings {
            brokers: "127.0.0.1:1".into(),
            message_timeout_ms,
            ..Default::default()
        };
        Edge::for_tests_with(Default::default(), &kafka)
    }

    /// Publish an edge event to the presence topic under its key ([`EdgeEvent::key`]: the edge
    /// for `started` and heartbeats, the connection for `connected` / `disconnected`).
    pub async fn emit(&self, event: EdgeEvent) {
        let topic = self.topics.requests(topics::Domain::Presence);
        if let Err(e) = self
            .publisher
            .send(&topic, &event.key(), &event.encode())
            .await
        {
            tracing::warn!(error = %runtime::telemetry::Chain(&e), "edge event not published");
        }
    }
}

/// How long an edge's producer holds client requests before sending them in one request, when
/// `kafka.linger_ms` is unset. Each of several edges on a machine sees only its share of the
/// traffic, so at 1 ms its produce requests carry a record or two each, and the broker's cost is
/// per request; 5 ms cut Kafka's CPU per DM by about a third (docs/benchmarks.md).
pub const EDGE_LINGER_MS: u64 = 5;

/// An edge's Kafka settings: the operator's, with [`EDGE_LINGER_MS`] where no linger is set.
fn edge_kafka(mut kafka: runtime::KafkaSettings) -> runtime::KafkaSettings {
    kafka.linger_ms.get_or_insert(EDGE_LINGER_MS);
    kafka
}

/// The `edge-ws` binary: settings, telemetry, serve until a signal, on a multi-threaded Tokio
/// runtime. A plain function the binary calls rather than a future it awaits, so the edge's code
/// is compiled once, in this library, not again in the binary.
#[tokio::main]
pub async fn start() -> anyhow::Result<()> {
    let settings: Settings = runtime::settings::load_or_exit();
    let telemetry =
        runtime::telemetry::init_or_exit(&settings.edge.id, &settings.log, &settings.trace);
    let stop = runtime::shutdown::on_signal();
    Application::build(settings)
        .await?
        .run_until_stopped(stop)
        .await;
    telemetry.shutdown().await;
    Ok(())
}

pub struct Application {
    edge: Arc<Edge>,
    listener: tokio::net::TcpListener,
    /// `/metrics` and `/healthz` for operators (`internal_listen`).
    internal: tokio::net::TcpListener,
    consumer: rdkafka::consumer::StreamConsumer,
}

impl Application {
    /// Create topics, subscribe to this edge's topic and bind the listener.
    pub async fn build(settings: Settings) -> Result<Self> {
        let Settings {
            kafka, edge: es, ..
        } = settings;
        let kafka = edge_kafka(kafka);
        if !topics::names::valid_edge_id(&es.id) {
            return Err(Error::EdgeId(es.id));
        }
        let addr: SocketAddr = es
            .listen
            .parse()
            .map_err(|e| Error::Listen(es.listen.clone(), e))?;
        let internal_addr: SocketAddr = es
            .internal_listen
            .parse()
            .map_err(|e| Error::Listen(es.internal_listen.clone(), e))?;
        let topics = kafka.topics();
        let own = topics.edge(&es.id);
        runtime::kafka::ensure_shared_topics(&kafka).await?;
        runtime::kafka::ensure_topics(
            &kafka,
            std::slice::from_ref(&own),
            1,
            Some(runtime::kafka::REQUEST_RETENTION_MS),
        )
        .await?;
        let consumer = inbox::subscribe(&kafka, &topics, &es.id).await?;
        let metrics = Metrics::new(runtime::metrics::Role::Edge);
        let publisher = Publisher::new(&kafka, metrics.clone())?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Error::Bind(addr, e))?;
        let internal = tokio::net::TcpListener::bind(internal_addr)
            .await
            .map_err(|e| Error::Bind(internal_addr, e))?;
        let epoch = runtime::now_ms() / 1000;
        let edge = Arc::new(Edge {
            hub: Arc::new(Hub::new(epoch, metrics.clone())),
            limits: limits::Limits::new(&es),
            settings: es,
            topics,
            publisher,
            metrics,
            connections: tokio_util::task::TaskTracker::new(),
            epoch,
        });
        // the outbound queues' depth, read when scraped (weak: the metrics live in the edge)
        let weak = Arc::downgrade(&edge);
        edge.metrics.on_scrape(move || {
            if let Some(edge) = weak.upgrade() {
                let (sum, max) = edge.hub.queued();
                edge.metrics.ws_outbound_queued.set(sum as i64);
                edge.metrics.ws_outbound_queue_max.set(max as i64);
            }
        });
        Ok(Application {
            edge,
            listener,
            internal,
            consumer,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener")
    }

    /// Where `/metrics` is served.
    pub fn internal_addr(&self) -> SocketAddr {
        self.internal.local_addr().expect("bound listener")
    }

    /// Serve until `stop`: then stop accepting, let HTTP requests in progress finish, close every
    /// socket (clients reconnect to another edge), tell presence, and flush the producer.
    pub async fn run_until_stopped(self, stop: CancellationToken) {
        let Application {
            edge,
            listener,
            internal,
            consumer,
        } = self;
        let mut tasks = JoinSet::new();
        edge.emit(EdgeEvent::Started {
            edge: edge.settings.id.clone(),
            epoch: edge.epoch,
        })
        .await;
        tasks.spawn(inbox::run(edge.clone(), consumer, stop.clone()));
        tasks.spawn(heartbeat(edge.clone(), stop.clone()));
        tasks.spawn(registry_sweep(edge.clone(), stop.clone()));
        let limits = server::Limits::of(&edge.settings);
        let max_handshakes = edge.settings.max_handshakes;
        tasks.spawn(server::serve(
            listener,
            http::routes(edge.clone(), stop.clone()).boxed(),
            limits,
            max_handshakes,
            edge.metrics.clone(),
            edge.connections.clone(),
            stop.clone(),
        ));
        // Ready while Kafka answers: an edge's only dependency (it reaches the rest through it).
        let readiness = runtime::health::Readiness::new(stop.clone());
        readiness.set(vec![runtime::health::kafka(&edge.publisher)]);
        tasks.spawn(server::serve(
            internal,
            runtime::health::routes(edge.metrics.clone(), readiness).boxed(),
            limits,
            max_handshakes,
            edge.metrics.clone(),
            edge.connections.clone(),
            stop.clone(),
        ));
        tracing::info!(edge = %edge.settings.id, "edge running");
        stop.cancelled().await;
        edge.hub.close_all("edge shutting down");
        edge.connections.close();
        let grace = std::time::Duration::from_secs(5);
        if tokio::time::timeout(grace, edge.connections.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                left = edge.hub.len(),
                "connections still open after the grace period"
            );
        }
        let drain = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, drain).await.is_err() {
            tasks.abort_all();
        }
        edge.publisher
            .flush(std::time::Duration::from_secs(5))
            .await;
        tracing::info!(edge = %edge.settings.id, "edge stopped");
    }
}

async fn heartbeat(edge: Arc<Edge>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(
        edge.settings.heartbeat_interval_ms,
    ));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                edge.emit(EdgeEvent::Heartbeat {
                    edge: edge.settings.id.clone(),
                    epoch: edge.epoch,
                    connections: edge.hub.len() as u64,
                }).await;
            }
        }
    }
}

/// Every `edge.registry_sweep_ms`, tell presence which of this process' connections are open
/// ([`EdgeEvent::Present`]), so that a registry entry whose `disconnected` was lost (a publish
/// that failed, say) is taken out rather than kept until the process ends. The ids covered are
/// those handed out before the previous tick: a handshake ends within `request_timeout_ms`
/// (shorter than the period, [`settings::EdgeSettings::sweep_period`]), so by now each of those
/// is in the hub or finished, and none still on its way into the registry is taken for gone.
async fn registry_sweep(edge: Arc<Edge>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(edge.settings.sweep_period());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut mark = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                if let Some(below) = mark {
                    let events = topics::bus::present(
                        &edge.settings.id,
                        edge.epoch,
                        below,
                        edge.hub.conn_ids(),
                        topics::bus::PRESENT_CHUNK,
                    );
                    for ev in events {
                        edge.emit(ev).await;
                    }
                }
                mark = Some(edge.hub.id_mark());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_edge_lingers_longer_than_a_worker_unless_told_otherwise() {
        let unset = runtime::KafkaSettings::default();
        assert_eq!(unset.linger_ms, None);
        assert_eq!(edge_kafka(unset).linger_ms, Some(EDGE_LINGER_MS));
        let told = runtime::KafkaSettings {
            linger_ms: Some(0),
            ..Default::default()
        };
        assert_eq!(edge_kafka(told).linger_ms, Some(0));
    }

    /// An edge id that cannot name a topic is refused at once with its typed error, before any
    /// topic is created or port bound: the broker here is not even there.
    #[tokio::test]
    async fn an_edge_id_that_cannot_name_a_topic_is_refused_before_any_io() {
        for id in ["Edge-1", "edge_1", "", &"e".repeat(33)] {
            let settings = Settings {
                kafka: runtime::KafkaSettings {
                    brokers: "127.0.0.1:1".into(),
                    ..Default::default()
                },
                edge: EdgeSettings {
                    id: id.to_string(),
                    listen: "127.0.0.1:0".into(),
                    ..Default::default()
                },
                ..Default::default()
            };
            let built = tokio::time::timeout(
                std::time::Duration::from_secs(1),
                Application::build(settings),
            )
            .await
            .expect("refused at once");
            let e = built.err().expect("refused");
            assert!(matches!(e, Error::EdgeId(_)), "{id:?}: {e}");
            assert_eq!(
                e.to_string(),
                format!("edge id {id:?} must be 1-32 characters of a-z, 0-9 and -")
            );
        }
    }
}
