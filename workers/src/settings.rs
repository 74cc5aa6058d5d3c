use runtime::{KafkaSettings, RedisSettings, ServiceSettings};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub kafka: KafkaSettings,
    pub redis: RedisSettings,
    pub database: DatabaseSettings,
    pub service: ServiceSettings,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub log: runtime::LogSettings,
    #[serde(default)]
    pub trace: runtime::TraceSettings,
}

/// Only `[database]`: what `sb-migrate` reads.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrateSettings {
    pub database: DatabaseSettings,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    pub user: String,
    #[serde(serialize_with = "expose")]
    pub password: SecretString,
    pub name: String,
    pub shards: Vec<ShardSettings>,
    /// Logical shards rows are hashed to; each maps to a physical shard. Adding a shard moves
    /// logical shards, never rehashes keys.
    #[serde(default = "d_logical")]
    pub logical_shards: u32,
    /// Physical shard of each logical shard (default: logical % physical).
    #[serde(default)]
    pub logical_map: Option<Vec<usize>>,
    #[serde(default = "d_pool")]
    pub pool_max: usize,
    /// The longest a guarded shard operation (any statement of a request) may
    /// wait for a connection to the shard's primary (a server that accepts and never answers, or
    /// a host that does not answer SYN); past it the attempt counts as a failure of the shard.
    #[serde(default = "d_shard_connect_timeout")]
    pub shard_connect_timeout_ms: u64,
    /// The longest a guarded shard operation may take in all (a server that stalls mid-statement);
    /// past it the attempt counts as a failure of the shard. Above the slowest commits seen under
    /// load, so that a slow shard is not taken for a down one.
    #[serde(default = "d_shard_timeout")]
    pub shard_timeout_ms: u64,
    /// Failures in a row (unreachable, or no answer within `shard_timeout_ms`) that open a shard's
    /// breaker: requests that need it are then answered `unavailable` at once.
    #[serde(default = "d_breaker_failures")]
    pub breaker_failures: u32,
    /// How often an open breaker's shard is probed (`SELECT 1`); the first answer closes it.
    #[serde(default = "d_breaker_probe")]
    pub breaker_probe_ms: u64,
}

fn expose<S: serde::Serializer>(s: &SecretString, ser: S) -> Result<S::Ok, S::Error> {
    use secrecy::ExposeSecret;
    ser.serialize_str(s.expose_secret())
}

fn d_logical() -> u32 {
    64
}
fn d_pool() -> usize {
    32
}
fn d_shard_connect_timeout() -> u64 {
    1_000
}
fn d_shard_timeout() -> u64 {
    5_000
}
fn d_breaker_failures() -> u32 {
    2
}
fn d_breaker_probe() -> u64 {
    1_000
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        DatabaseSettings {
            user: "switchboard".into(),
            password: SecretString::from("switchboard"),
            name: "switchboard".into(),
            shards: vec![
                ShardSettings {
                    primary: "127.0.0.1:13306".into(),
                    replica: Some("127.0.0.1:13307".into()),
                    failover: false,
                },
                ShardSettings {
                    primary: "127.0.0.1:13308".into(),
                    replica: Some("127.0.0.1:13309".into()),
                    failover: false,
                },
            ],
            logical_shards: d_logical(),
            logical_map: None,
            pool_max: d_pool(),
            shard_connect_timeout_ms: d_shard_connect_timeout(),
            shard_timeout_ms: d_shard_timeout(),
            breaker_failures: d_breaker_failures(),
            breaker_probe_ms: d_breaker_probe(),
        }
    }
}

/// One physical shard: a primary and an optional replica (asynchronous replication), or, with
/// `failover`, two nodes of one synchronous cluster (MariaDB Galera).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardSettings {
    /// Where writes go. With `failover`: the node preferred for writes.
    pub primary: String,
    /// Reads that tolerate lag. With `failover`: the other node of the cluster.
    #[serde(default)]
    pub replica: Option<String>,
    /// `primary` and `replica` are nodes of one Galera cluster, where a commit is acknowledged
    /// only once the other node has it: every worker writes to the first of them, in that order,
    /// that answers and reports itself ready and Synced (`wsrep_ready` ON, `wsrep_local_state`
    /// 4), moves to the other by itself when it stops answering, and back once it is Synced
    /// again ([`crate::db::Cluster`]). Needs `replica`. Never set it on an asynchronous replica:
    /// it would not be chosen (it reports no Synced state), but promotion stays manual there.
    #[serde(default)]
    pub failover: bool,
}

/// Product limits; the defaults are what users get.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// A session unused (no refresh) this long expires.
    pub session_idle_timeout_s: u64,
    /// A session ends this long after its login however active it is: refreshing never extends
    /// it past that.
    pub session_max_lifetime_s: u64,
    /// A rotated-out token keeps working this long, so requests in flight do not fail.
    pub token_grace_s: u64,
    /// Failed logins to one account from one address in the last minute (sliding); past it that
    /// address is refused for that account until the oldest failure is a minute old.
    pub login_failures_per_user_per_address_per_minute: u64,
    /// Failed logins to one account from all addresses in the last hour (sliding; OWASP ASVS
    /// 2.2.1 asks for at most 100). Addresses that never logged in to the account may use only
    /// nine tenths of it, so a stranger cannot lock the owner out of an address they use.
    pub login_failures_per_user_per_hour: u64,
    /// Login attempts from one address, to any accounts, per minute.
    pub login_attempts_per_address_per_minute: u64,
    pub signups_per_address_per_minute: u64,
    pub pending_invites_max: u64,
    pub broadcasts_per_user_per_minute: u64,
    /// An edge silent this long is dead (its connections leave the online list).
    pub edge_liveness_ms: u64,
    /// Parallel lanes of each consumer, but worker-dms'.
    pub lanes: usize,
    /// Lanes of worker-dms, whose handler takes batches: fewer lanes make larger batches at the
    /// same load (one lane measured p99 45 ms at 1,000 msg/s against 182 ms with 16, at the
    /// same saturation; docs/benchmarks.md). Scale with processes and partitions instead.
    pub dm_lanes: usize,
    /// At most this many records in one batch of worker-dms. With one lane the batch size caps
    /// the rate: 64 drained ~5,000 msg/s, 256 drained 5,700–6,200 (docs/benchmarks.md).
    pub dm_batch_records: usize,
    /// How long a worker-dms batch waits for more sends after its first when none are queued
    /// behind it; 0 takes only what is already queued. Each batch costs a transaction per shard
    /// and a record per edge, so fewer, larger batches cost less: 5 ms measured 8-11 % less
    /// platform CPU per DM at 1,000 msg/s and more delivered at saturation, for 1.5-5 ms more p50
    /// (docs/benchmarks.md). A send waits at most this long for company.
    pub dm_batch_wait_ms: u64,
    /// Replicas of the node holding a session key that must have a revocation (logout, logout
    /// everywhere, account deletion, a reused token) before it is reported done (Redis `WAIT`);
    /// 0 answers without waiting. Fewer within `revocation_ack_timeout_ms`: `unavailable`.
    pub revocation_replicas: u64,
    /// How long a revocation waits for those replicas (`WAIT`'s timeout).
    pub revocation_ack_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            session_idle_timeout_s: 600,
            session_max_lifetime_s: 30 * 24 * 3600,
            token_grace_s: 30,
            login_failures_per_user_per_address_per_minute: 10,
            login_failures_per_user_per_hour: 100,
            login_attempts_per_address_per_minute: 60,
            signups_per_address_per_minute: 30,
            pending_invites_max: 100,
            broadcasts_per_user_per_minute: 10,
            edge_liveness_ms: 10_000,
            lanes: 16,
            dm_lanes: 1,
            dm_batch_records: 256,
            dm_batch_wait_ms: 5,
            revocation_replicas: 1,
            revocation_ack_timeout_ms: 1000,
        }
    }
}
