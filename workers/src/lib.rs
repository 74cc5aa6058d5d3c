//! Switchboard's workers. Each role is its own binary and Kafka consumer group, scaled by adding
//! processes: `auth` (login, sessions, refresh, logout), `users` (sign-up, lookup, delete),
//! `invites`, `dms` (direct conversations and messages) and `presence` (edge events, the online
//! list, broadcasts). Handlers are plain `async fn`s of (request, context) → outcome; the Kafka
//! loop around them lives in [`runtime::consume`].

pub mod accounts;
pub mod auth;
pub mod breaker;
pub mod context;
pub mod db;
pub mod dispatch;
pub mod dms;
pub mod ids;
pub mod invites;
pub mod login_limits;
pub mod migrations;
pub mod mysql;
pub mod presence;
pub mod sessions;
pub mod settings;
pub mod users;

pub use context::{Caller, Ctx, Deps, Outcome};
pub use settings::{DatabaseSettings, Limits, Settings};

use runtime::kafka::Publisher;
use runtime::metrics::Metrics;
use runtime::redis::Keys;
use runtime::registry::Registry;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use topics::{Domain, ErrorBody, ErrorCode};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Runtime(#[from] runtime::Error),
    #[error("database: {0}")]
    Db(#[from] mysql_async::Error),
    #[error("redis: {0}")]
    Redis(#[from] runtime::redis::redis::RedisError),
    #[error(transparent)]
    Publish(#[from] runtime::kafka::PublishError),
    #[error("configuration: {0}")]
    Config(String),
    /// A migration run refused (changed or unknown migration, lock held by another runner).
    #[error("migrations: {0}")]
    Migration(String),
    /// A refusal the client is told about (typed error frame); nothing else went wrong.
    #[error("{}: {}", .0.code.as_str(), .0.message)]
    Reply(ErrorBody),
    #[error("password hashing: {0}")]
    Hash(String),
    /// A shared account check failed ([`accounts::AccountChecks`]); retried like any database
    /// error.
    #[error("account check: {0}")]
    AccountCheck(String),
    /// A request reached a domain whose handler has no arm for its kind: the table in
    /// `topics::kinds` names a domain that does not handle it (a programming error, poison).
    #[error("{0} is not handled by its domain")]
    Unrouted(&'static str),
    /// A MariaDB shard the request needs is known down: its breaker is open
    /// ([`breaker`]). `tried`: this request's own attempt failed and opened it; otherwise it was
    /// refused without trying. A request is answered `unavailable`; anything else retries.
    #[error("shard {shard} is unavailable (breaker open)")]
    ShardDown { shard: usize, tried: bool },
    /// A shard did not answer within `database.shard_timeout_ms` (its breaker is still closed):
    /// retried like any database error.
    #[error("shard {0} did not answer in time")]
    ShardTimeout(usize),
    /// Every connection of the shard's pool stayed held by other requests for
    /// `database.shard_connect_timeout_ms`: the workers' own load, not a failure of the shard
    /// (its breaker does not count it); retried like any database error.
    #[error("shard {0}: every pooled connection busy")]
    ShardBusy(usize),
    /// This worker's id node lease was found held by another process, or gone ([`ids::renew_node`]):
    /// the worker stops (exit 1) rather than mint ids on a node that may be another's.
    #[error("id node {0}: lease lost (another process holds it, or it expired)")]
    LeaseLost(u64),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A refusal for the client.
pub fn refuse(code: ErrorCode, message: impl Into<String>) -> Error {
    Error::Reply(ErrorBody::new(code, message))
}

impl From<ErrorBody> for Error {
    fn from(e: ErrorBody) -> Self {
        Error::Reply(e)
    }
}

/// The worker roles: one per domain, each its own binary (`worker-<domain>`) and consumer group.
pub type Role = Domain;

/// Build the dependencies every role shares: topics, producer, Redis Cluster, shards, ids.
pub async fn deps(settings: &Settings, metrics: Metrics) -> Result<Arc<Deps>> {
    let topics = settings.kafka.topics();
    runtime::kafka::ensure_shared_topics(&settings.kafka).await?;
    let redis =
        runtime::redis::cluster(&settings.redis)?.counted(&metrics.redis_requests_in_flight);
    let keys = Keys::new(settings.redis.key_prefix.clone());
    // Redis Cluster may be slow to accept the first connections (a loaded machine, a failover in
    // progress): retry for a minute before giving up.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    let lease = loop {
        match ids::lease_node(&redis, &keys).await {
            Ok(l) => break l,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %runtime::telemetry::Chain(&e), "redis not reachable yet; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e),
        }
    };
    let db = db::Shards::connect_counted(&settings.database, &metrics)?;
    metrics.shards(db.all().len());
    for shard in db.all() {
        shard.breaker.report_to(metrics.shard_breaker(shard.index));
    }
    Ok(Arc::new(Deps {
        publisher: Publisher::new(&settings.kafka, metrics.clone())?,
        registry: Registry {
            keys: keys.clone(),
            liveness_ms: settings.limits.edge_liveness_ms,
        },
        accounts: accounts::AccountChecks::new(&db, &metrics),
        db,
        ids: ids::IdGen::new(lease.node),
        id_lease: lease,
        limits: settings.limits.clone(),
        topics,
        revocations: runtime::redis::cluster(&settings.redis)?
            .counted(&metrics.redis_requests_in_flight),
        redis,
        keys,
        metrics,
    }))
}

/// What a worker needs to do its work: Kafka, Redis Cluster and every shard's primary.
pub fn readiness_checks(deps: &Deps) -> runtime::health::Checks {
    let db = deps.db.clone();
    vec![
        runtime::health::kafka(&deps.publisher),
        runtime::health::redis(&deps.redis),
        (
            "mariadb",
            runtime::health::check(move || {
                let db = db.clone();
                async move { db.reachable().await }
            }),
        ),
    ]
}

/// Run one role until `stop`: consume its topic, serve health, drain, flush.
pub async fn run(role: Role, settings: Settings, stop: CancellationToken) -> Result<()> {
    let metrics = Metrics::new(runtime::metrics::Role::Worker(role));
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
    tracing::info!(role = %role.worker(), %addr, "health endpoint up");
    let deps = deps(&settings, metrics.clone()).await?;
    readiness.set(readiness_checks(&deps));
    // One role asks the replicas for their lag at each scrape (sb_mariadb_replica_*): the users
    // workers, light and replica readers themselves; every role asking would only repeat it.
    if role == Role::Users {
        readiness.set_probe(deps.db.replica_probe(&deps.metrics));
    }
    let renew = tokio::spawn(ids::renew_node(
        deps.redis.clone(),
        deps.keys.clone(),
        deps.id_lease.clone(),
        stop.clone(),
        ids::RENEW_EVERY,
    ));
    let probe = tokio::spawn(deps.db.clone().probe(stop.clone()));
    let topic = deps.topics.requests(role);
    let group = deps.topics.group(&role.worker());
    let consumer = runtime::kafka::loop_consumer(&settings.kafka, &group, false)?;
    {
        use rdkafka::consumer::Consumer;
        consumer
            .subscribe(&[&topic])
            .map_err(runtime::Error::from)?;
    }
    let dispatcher = Arc::new(dispatch::Dispatcher {
        deps: deps.clone(),
        role,
    });
    // Direct messages are handled in batches; every other role one record at a time.
    let handler: Arc<dyn runtime::consume::BatchHandler> = match role {
        Role::Dms => Arc::new(dms::batch::DmBatch { dispatcher }),
        _ => Arc::new(runtime::consume::PerRecord(dispatcher)),
    };
    let (lanes, batch) = lanes_and_batches(role, &settings.limits);
    let loop_settings = runtime::consume::LoopSettings {
        lanes,
        lane_capacity: 64,
        dead_letter_topic: deps.topics.dead_letter(),
        drain_timeout: std::time::Duration::from_secs(10),
        batch,
    };
    runtime::consume::run_batched(
        consumer,
        handler,
        deps.publisher.clone(),
        loop_settings,
        metrics,
        stop.clone(),
    )
    .await;
    deps.publisher
        .flush(std::time::Duration::from_secs(5))
        .await;
    let lease = renew.await;
    let _ = probe.await;
    health_stop.cancel();
    let _ = health.await;
    tracing::info!(role = %role.worker(), "worker stopped");
    match lease {
        // its id node may be another's now: the worker exits with the reason, to start again
        Ok(Err(e)) => Err(e),
        _ => Ok(()),
    }
}

/// `sb-migrate`: apply the schema migrations to every shard (see [`start`] for why it lives here).
#[tokio::main]
pub async fn migrate_main() -> anyhow::Result<()> {
    let settings: settings::MigrateSettings = runtime::settings::load_or_exit();
    let _telemetry =
        runtime::telemetry::init_or_exit("sb-migrate", &Default::default(), &Default::default());
    let applied = db::migrate(&settings.database).await?;
    println!(
        "migrations applied on {} shard(s): {:?}",
        settings.database.shards.len(),
        applied
    );
    Ok(())
}

/// Entry point of every worker binary: settings (exit 64 when bad), telemetry, run until signal,
/// on a multi-threaded Tokio runtime. A plain function the binaries call, rather than a future
/// they await: the code it runs is compiled once, in this library, instead of again in each of
/// the six binaries (a release build spent ~55 s per binary on that).
#[tokio::main]
pub async fn start(role: Role) -> anyhow::Result<()> {
    let mut settings: Settings = runtime::settings::load_or_exit();
    if settings.service.name.is_empty() {
        settings.service.name = role.worker();
    }
    let telemetry =
        runtime::telemetry::init_or_exit(&role.worker(), &settings.log, &settings.trace);
    let stop = runtime::shutdown::on_signal();
    let result = run(role, settings, stop).await;
    telemetry.shutdown().await;
    match result {
        Err(e @ Error::Config(_)) => {
            eprintln!("configuration error: {e}");
            std::process::exit(runtime::settings::EXIT_CONFIG);
        }
        other => Ok(other?),
    }
}

/// A role's consumer lanes and what one batch of a lane may hold: worker-dms' come from its own
/// limits (its handler takes a batch at once); every other role's records are handled one at a
/// time per key, so their batches take what is queued.
fn lanes_and_batches(role: Role, limits: &Limits) -> (usize, runtime::consume::BatchSettings) {
    match role {
        Role::Dms => (
            limits.dm_lanes,
            runtime::consume::BatchSettings {
                max_records: limits.dm_batch_records.max(1),
                max_wait_ms: limits.dm_batch_wait_ms,
                ..Default::default()
            },
        ),
        _ => (limits.lanes, Default::default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_dms_batches_by_its_own_limits_and_the_others_take_what_is_queued() {
        let limits = Limits {
            lanes: 7,
            dm_lanes: 2,
            dm_batch_records: 100,
            dm_batch_wait_ms: 9,
            ..Default::default()
        };
        let (lanes, batch) = lanes_and_batches(Role::Dms, &limits);
        assert_eq!((lanes, batch.max_records, batch.max_wait_ms), (2, 100, 9));
        for role in Role::ALL.iter().copied().filter(|r| *r != Role::Dms) {
            let (lanes, batch) = lanes_and_batches(role, &limits);
            assert_eq!((lanes, batch.max_wait_ms), (7, 0), "{role:?}");
        }
        let none = Limits {
            dm_batch_records: 0,
            ..Default::default()
        };
        assert_eq!(lanes_and_batches(Role::Dms, &none).1.max_records, 1);
    }

    #[test]
    fn the_launcher_lists_every_role() {
        let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../tools/sb/roles.txt");
        let listed: Vec<String> = std::fs::read_to_string(file)
            .unwrap()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(String::from)
            .collect();
        let roles: Vec<String> = Role::ALL.iter().map(|r| r.as_str().to_string()).collect();
        assert_eq!(
            listed, roles,
            "tools/sb/roles.txt must list Domain::ALL in order, one per line"
        );
    }
}
