//! The router: turns "deliver this frame to users U… / to these sessions / to everyone" into
//! records on the right per-edge topics, using the connection registry in Redis Cluster.
//! Connections of dead edges, or of an earlier process of a live edge, are skipped and removed
//! from the registry on the way.

use futures::future::BoxFuture;
use runtime::consume::{Failure, Handler, Inbound};
use runtime::kafka::Publisher;
use runtime::metrics::{self, Metrics};
use runtime::redis::redis::AsyncCommands;
use runtime::redis::{Keys, Pool};
use runtime::registry::{conn_field, is_current, Conn, Registry};
use runtime::{KafkaSettings, RedisSettings, ServiceSettings};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use topics::bus::decode_versioned;
use topics::{Delivery, EdgeMessage, Target, Topics};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub kafka: KafkaSettings,
    pub redis: RedisSettings,
    pub service: ServiceSettings,
    #[serde(default)]
    pub router: RouterSettings,
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
    #[error("redis pool: {0}")]
    RedisPool(#[from] runtime::redis::PoolError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub struct Router {
    pub topics: Topics,
    pub publisher: Publisher,
    pub redis: Pool,
    pub registry: Registry,
    pub metrics: Metrics,
}

/// Per edge, the records a delivery becomes.
pub fn plan(
    d: &Delivery,
    conns: &[Conn],
    live: &HashMap<String, u64>,
) -> BTreeMap<String, EdgeMessage> {
    let mut out = BTreeMap::new();
    if let Target::All = d.target {
        for edge in live.keys() {
            out.insert(
                edge.clone(),
                EdgeMessage::Broadcast {
                    frame: d.frame.clone(),
                },
            );
        }
        return out;
    }
    let mut by_edge: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for c in conns.iter().filter(|c| is_current(c, live)) {
        if let Target::Sessions { session_ids, .. } = &d.target {
            if !session_ids.contains(&c.session_id) {
                continue;
            }
        }
        by_edge.entry(c.edge.clone()).or_default().push(c.conn);
    }
    for (edge, conns) in by_edge {
        let msg = match &d.close {
            Some(reason) => EdgeMessage::Close {
                conns,
                frame: d.frame.clone(),
                reason: reason.clone(),
            },
            None => EdgeMessage::Deliver {
                conns,
                frame: d.frame.clone(),
            },
        };
        out.insert(edge, msg);
    }
    out
}

impl Router {
    /// Route one delivery; returns how many edge records were published.
    pub async fn route(&self, d: &Delivery, traceparent: Option<&str>) -> Result<usize, Failure> {
        let transient = |e: Error| Failure::Transient(e.to_string());
        let mut c = self.redis.get().await.map_err(|e| transient(e.into()))?;
        let live = self
            .registry
            .live_edges(&mut c, runtime::now_ms())
            .await
            .map_err(|e| transient(e.into()))?;
        let users = match &d.target {
            Target::Users { user_ids } => user_ids.clone(),
            Target::Sessions { user_id, .. } => vec![*user_id],
            Target::All => vec![],
        };
        let mut conns = Vec::new();
        for u in users {
            let found = self
                .registry
                .user_conns(&mut c, u)
                .await
                .map_err(|e| transient(e.into()))?;
            let stale: Vec<String> = found
                .iter()
                .filter(|x| !is_current(x, &live))
                .map(|x| conn_field(&x.edge, x.conn))
                .collect();
            if !stale.is_empty() {
                let _: () = c
                    .hdel(self.registry.conns_key(u), stale)
                    .await
                    .map_err(|e| transient(e.into()))?;
            }
            conns.extend(found);
        }
        drop(c);
        let records = plan(d, &conns, &live);
        for (edge, msg) in &records {
            let payload = serde_json::to_vec(msg).expect("edge messages serialise");
            self.publisher
                .send(&self.topics.edge(edge), &d.key(), &payload, traceparent)
                .await
                .map_err(|e| Failure::Transient(e.to_string()))?;
        }
        self.metrics
            .get(metrics::DELIVERIES_ROUTED_TOTAL, &[])
            .add(records.len() as u64);
        Ok(records.len())
    }
}

impl Handler for Router {
    fn handle<'a>(&'a self, record: &'a Inbound) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async move {
            let d: Delivery =
                decode_versioned(&record.payload).map_err(|e| Failure::Poison(e.to_string()))?;
            self.route(&d, record.traceparent.as_deref())
                .await
                .map(|_| ())
        })
    }
}

/// Build the router's dependencies.
pub async fn build(settings: &Settings, metrics: Metrics) -> Result<Arc<Router>> {
    let topics = settings.kafka.topics();
    runtime::kafka::ensure_shared_topics(&settings.kafka).await?;
    Ok(Arc::new(Router {
        publisher: Publisher::new(&settings.kafka, metrics.clone())?,
        redis: runtime::redis::pool(&settings.redis)?,
        registry: Registry {
            keys: Keys::new(settings.redis.key_prefix.clone()),
            liveness_ms: settings.router.edge_liveness_ms,
        },
        topics,
        metrics,
    }))
}

/// Run until `stop`: consume the delivery topic, drain, flush.
pub async fn run(settings: Settings, stop: CancellationToken) -> Result<()> {
    let metrics = Metrics::default();
    let (addr, health) = runtime::health::serve(
        &settings.service.health_listen,
        metrics.clone(),
        stop.clone(),
    )
    .await?;
    tracing::info!(%addr, "router health endpoint up");
    let router = build(&settings, metrics.clone()).await?;
    let consumer =
        runtime::kafka::consumer(&settings.kafka, &router.topics.group("router"), false)?;
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
    router.publisher.flush(std::time::Duration::from_secs(5));
    let _ = health.await;
    tracing::info!("router stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use topics::Id;

    fn conn(edge: &str, epoch: u64, n: u64, sid: &str) -> Conn {
        Conn {
            edge: edge.into(),
            conn: topics::bus::conn_id(epoch, n),
            session_id: sid.into(),
        }
    }

    #[test]
    fn plans_per_edge_records() {
        let live: HashMap<String, u64> =
            [("e0".to_string(), 1u64), ("e1".to_string(), 2u64)].into();
        let conns = vec![
            conn("e0", 1, 1, "s1"),
            conn("e0", 1, 2, "s2"),
            conn("e1", 2, 3, "s1"),
            conn("e1", 1, 4, "s1"),
            conn("dead", 1, 5, "s1"),
        ];
        let d = Delivery::new(
            Target::Users {
                user_ids: vec![Id(1)],
            },
            "f".into(),
        );
        let p = plan(&d, &conns, &live);
        assert_eq!(p.len(), 2);
        assert_eq!(
            p["e0"],
            EdgeMessage::Deliver {
                conns: vec![conns[0].conn, conns[1].conn],
                frame: "f".into()
            }
        );
        assert_eq!(
            p["e1"],
            EdgeMessage::Deliver {
                conns: vec![conns[2].conn],
                frame: "f".into()
            },
            "earlier epoch skipped"
        );

        let mut s = Delivery::new(
            Target::Sessions {
                user_id: Id(1),
                session_ids: vec!["s2".into()],
            },
            "f".into(),
        );
        s.close = Some("bye".into());
        let p = plan(&s, &conns, &live);
        assert_eq!(p.len(), 1);
        assert_eq!(
            p["e0"],
            EdgeMessage::Close {
                conns: vec![conns[1].conn],
                frame: "f".into(),
                reason: "bye".into()
            }
        );

        let all = plan(&Delivery::new(Target::All, "b".into()), &[], &live);
        assert_eq!(all.len(), 2);
        assert_eq!(all["e1"], EdgeMessage::Broadcast { frame: "b".into() });
    }
}
