//! Sharded MariaDB: a logical-shard map over physical shards (each a primary and an optional
//! replica, or two nodes of a Galera cluster that the workers fail over between by themselves,
//! [`Cluster`]). The migration runner is in [`crate::migrations`].

use crate::breaker::Breaker;
use crate::settings::DatabaseSettings;
use crate::{Error, Result};
use mysql_async::prelude::*;
use mysql_async::{Conn, Opts, OptsBuilder, Pool, PoolConstraints, PoolOpts};
use runtime::metrics::{Gauge, InUse, Metrics};
use secrecy::ExposeSecret;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use crate::migrations::migrate;

/// A connection pool that counts its checked-out connections (`sb_mariadb_connections_in_use`):
/// every connection the workers take goes through [`CountedPool::get_conn`]. Its connections go
/// to one server or, for a Galera shard, to the node its [`Cluster`] currently elects for the
/// pool's use (writes, or reads that tolerate lag).
#[derive(Clone)]
pub struct CountedPool {
    target: Target,
    in_use: Gauge,
    /// Most connections the pool opens (`database.pool_max`).
    max: usize,
}

#[derive(Clone)]
enum Target {
    One(Pool),
    Elected(Arc<Cluster>, Use),
}

/// What a pool of a [`Cluster`] is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Use {
    /// Writes and the reads that must see them: the elected writer.
    Write,
    /// Reads that tolerate lag: the other node while it serves, else the writer.
    Read,
}

/// A Galera node's answer about itself: it serves (in the primary component, `wsrep_ready` ON,
/// and Synced, `wsrep_local_state` 4), or not. A server without Galera reports neither.
pub fn serves(ready: Option<&str>, local_state: Option<&str>) -> bool {
    ready == Some("ON") && local_state == Some("4")
}

/// Whether a Galera node can take writes though not Synced: in the primary component and
/// Donor/Desynced (`wsrep_local_state` 2), as the node that streams a state transfer to a joiner
/// is. With `mariabackup` state transfers (`./sb`'s) the donor goes on committing meanwhile.
pub fn donor(ready: Option<&str>, local_state: Option<&str>) -> bool {
    ready == Some("ON") && local_state == Some("2")
}

/// What a node said of itself when asked ([`serves`], [`donor`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeState {
    pub synced: bool,
    pub donor: bool,
}

/// The writer of a cluster whose nodes, in configuration order, said `nodes`: the first Synced
/// one, so that every worker, asking the same nodes, picks the same one; when none is Synced,
/// the first donor (a node rejoining by a full state transfer leaves its donor the only node
/// that can write, for as long as the transfer takes). `None` when neither (the current choice
/// stays).
pub fn elect_writer(nodes: &[NodeState]) -> Option<usize> {
    nodes
        .iter()
        .position(|n| n.synced)
        .or_else(|| nodes.iter().position(|n| n.donor))
}

/// The node for reads that tolerate lag: the first Synced node that is not the writer, else
/// the writer itself.
pub fn elect_reader(nodes: &[NodeState], writer: usize) -> usize {
    (0..nodes.len())
        .find(|&i| i != writer && nodes[i].synced)
        .unwrap_or(writer)
}

/// The nodes of one Galera shard and which of them each [`Use`] goes to. Every worker elects
/// on its own, by the same rule ([`elect_writer`]): in steady state all write to one node. A
/// worker that lost its writer (a connection error, no answer in time, [`Cluster::suspect`])
/// elects again at once, and otherwise every `database.breaker_probe_ms` ([`Cluster::watch`]),
/// which also moves it back to a node earlier in order once that node is Synced again.
///
/// Two workers briefly writing to different nodes (one has moved, the other not yet) cannot
/// assign one sequence number twice: Galera certifies each commit against the write sets
/// ordered before it, and the later of two conflicting transactions fails with a deadlock
/// error (1213), which is retried.
pub struct Cluster {
    shard: usize,
    addrs: Vec<String>,
    /// Per node: the pool of writes, and the pool of reads that tolerate lag.
    write: Vec<Pool>,
    read: Vec<Pool>,
    writer: AtomicUsize,
    reader: AtomicUsize,
    /// Elect again now (a suspected writer).
    wake: tokio::sync::Notify,
    /// How long a node may take to say how it is.
    ask_timeout: Duration,
}

/// The shortest time between two elections of one cluster.
const ELECTION_GAP: Duration = Duration::from_millis(100);

impl Cluster {
    fn new(shard: usize, addrs: Vec<String>, s: &DatabaseSettings) -> Result<Self> {
        let pools = || {
            addrs
                .iter()
                .map(|a| Ok(Pool::new(opts(s, a, Some(&s.name))?)))
                .collect::<Result<Vec<_>>>()
        };
        Ok(Cluster {
            shard,
            write: pools()?,
            read: pools()?,
            // until the first election: the second node reads, if there is one
            reader: AtomicUsize::new(usize::from(addrs.len() > 1)),
            addrs,
            writer: AtomicUsize::new(0),
            wake: tokio::sync::Notify::new(),
            ask_timeout: Duration::from_millis(s.shard_connect_timeout_ms.max(1)),
        })
    }

    /// The node `use_` goes to now (an index into the configured nodes).
    pub fn node(&self, use_: Use) -> usize {
        match use_ {
            Use::Write => self.writer.load(Ordering::Acquire),
            Use::Read => self.reader.load(Ordering::Acquire),
        }
    }

    /// The address of node `i`.
    pub fn addr(&self, i: usize) -> &str {
        &self.addrs[i]
    }

    fn pool(&self, use_: Use) -> &Pool {
        match use_ {
            Use::Write => &self.write[self.node(use_)],
            Use::Read => &self.read[self.node(use_)],
        }
    }

    /// The writer may be gone: elect again now rather than at the next round.
    pub fn suspect(&self) {
        self.wake.notify_one();
    }

    /// Ask node `i` how it is, within `ask_timeout` (no answer: neither Synced nor a donor).
    async fn ask(&self, i: usize) -> NodeState {
        let asked = tokio::time::timeout(self.ask_timeout, async {
            let mut c = self.write[i].get_conn().await?;
            let rows: Vec<(String, String)> = c
                .query("SHOW GLOBAL STATUS WHERE Variable_name IN ('wsrep_ready', 'wsrep_local_state')")
                .await?;
            Ok::<_, mysql_async::Error>(rows)
        })
        .await;
        match asked {
            Ok(Ok(rows)) => {
                let get = |k: &str| rows.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
                let (ready, state) = (get("wsrep_ready"), get("wsrep_local_state"));
                NodeState {
                    synced: serves(ready, state),
                    donor: donor(ready, state),
                }
            }
            _ => NodeState::default(),
        }
    }

    /// Wait until node `i` has applied every write set committed in the cluster before now
    /// (`wsrep_sync_wait`): a new writer then reads what the old one acknowledged.
    async fn catch_up(&self, i: usize) -> bool {
        let waited = tokio::time::timeout(self.ask_timeout * 5, async {
            let mut c = self.write[i].get_conn().await?;
            c.query_drop("SET STATEMENT wsrep_sync_wait = 1 FOR SELECT 1")
                .await
        })
        .await;
        matches!(waited, Ok(Ok(())))
    }

    /// One election: ask every node at once, then move the writer and the reader by
    /// [`elect_writer`] and [`elect_reader`]. A new writer first catches up ([`Cluster::catch_up`]);
    /// when it cannot, the writer stays.
    pub async fn elect(&self) {
        let nodes = futures::future::join_all((0..self.addrs.len()).map(|i| self.ask(i))).await;
        let before = self.node(Use::Write);
        let writer = match elect_writer(&nodes) {
            Some(w) if w != before => {
                if self.catch_up(w).await {
                    tracing::warn!(shard = self.shard, from = %self.addrs[before], to = %self.addrs[w], "shard writer moved");
                    self.writer.store(w, Ordering::Release);
                    w
                } else {
                    before
                }
            }
            Some(w) => w,
            None => {
                tracing::debug!(shard = self.shard, "no node of the shard serves");
                before
            }
        };
        self.reader
            .store(elect_reader(&nodes, writer), Ordering::Release);
    }

    /// Until `stop`: elect every `every`, and at once when [`Cluster::suspect`] says so (at most
    /// one election per [`ELECTION_GAP`]).
    pub async fn watch(
        self: Arc<Self>,
        every: Duration,
        stop: tokio_util::sync::CancellationToken,
    ) {
        loop {
            self.elect().await;
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(ELECTION_GAP) => {}
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
                _ = self.wake.notified() => {}
            }
        }
    }

    /// For `sb_mariadb_replica_*`: 0 when reads that tolerate lag have a Synced node of their
    /// own (Galera applies each write set on every node under flow control: it has no lag in
    /// seconds to report); else why not (the shard is down to its writer, or the node does not
    /// answer in `timeout` or is not Synced).
    pub async fn reader_lag(&self, timeout: Duration) -> std::result::Result<u64, String> {
        let (r, w) = (self.node(Use::Read), self.node(Use::Write));
        if r == w {
            return Err(format!("only {} serves the shard", self.addrs[w]));
        }
        match tokio::time::timeout(timeout, self.ask(r)).await {
            Ok(n) if n.synced => Ok(0),
            Ok(_) => Err(format!("{} is not a Synced node", self.addrs[r])),
            Err(_) => Err(format!("no answer within {timeout:?}")),
        }
    }

    async fn disconnect(&self) {
        for p in self.write.iter().chain(&self.read) {
            let _ = p.clone().disconnect().await;
        }
    }
}

/// A connection checked out of a [`CountedPool`]: it derefs to the connection, and going back
/// to the pool (dropped, whichever way its holder ends) takes it off the in-use count.
pub struct PooledConn {
    // dropped in this order: the connection goes back to the pool, then the count goes down
    conn: Conn,
    _in_use: InUse,
}

impl std::ops::Deref for PooledConn {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        &self.conn
    }
}

impl std::ops::DerefMut for PooledConn {
    fn deref_mut(&mut self) -> &mut Conn {
        &mut self.conn
    }
}

impl CountedPool {
    /// `pool` of at most `max` connections, counting in `in_use`.
    pub fn new(pool: Pool, in_use: Gauge, max: usize) -> Self {
        CountedPool {
            target: Target::One(pool),
            in_use,
            max,
        }
    }

    /// The pool of `cluster`'s node elected for `use_`, counting in `in_use`.
    pub fn elected(cluster: Arc<Cluster>, use_: Use, in_use: Gauge, max: usize) -> Self {
        CountedPool {
            target: Target::Elected(cluster, use_),
            in_use,
            max,
        }
    }

    /// Whether every connection the pool may open is held: a wait for one is then a wait for
    /// another request to finish, not a sign that the server is unreachable.
    pub fn saturated(&self) -> bool {
        self.in_use.get() >= self.max as i64
    }

    /// The cluster this pool follows, if it is a Galera shard's.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        match &self.target {
            Target::One(_) => None,
            Target::Elected(c, _) => Some(c),
        }
    }

    /// A connection of the pool, counted while it is held. For a cluster's pool, one to the
    /// node elected now; failing to connect to it makes the cluster elect again at once.
    pub async fn get_conn(&self) -> std::result::Result<PooledConn, mysql_async::Error> {
        let conn = match &self.target {
            Target::One(pool) => pool.get_conn().await?,
            Target::Elected(cluster, use_) => match cluster.pool(*use_).get_conn().await {
                Ok(c) => c,
                Err(e) => {
                    if unreachable(&e) {
                        cluster.suspect();
                    }
                    return Err(e);
                }
            },
        };
        Ok(PooledConn {
            conn,
            _in_use: InUse::new(&self.in_use),
        })
    }

    /// Close the pool's connections once they are back.
    pub async fn disconnect(self) -> std::result::Result<(), mysql_async::Error> {
        match self.target {
            Target::One(pool) => pool.disconnect().await,
            Target::Elected(cluster, _) => {
                cluster.disconnect().await;
                Ok(())
            }
        }
    }
}

/// An error that says the server cannot serve this connection: not an answer to the statement
/// (the connection failed), or a Galera node that is not ready (1047: outside the primary
/// component, or still joining).
pub fn unreachable(e: &mysql_async::Error) -> bool {
    match e {
        mysql_async::Error::Server(s) => s.code == crate::mysql::ER_UNKNOWN_COM_ERROR,
        _ => true,
    }
}

/// One physical shard.
#[derive(Clone)]
pub struct Shard {
    pub index: usize,
    pub primary: CountedPool,
    /// Reads that tolerate replication lag; the primary when there is no replica.
    pub replica: CountedPool,
    /// Whether `replica` is a replica of its own (else it is the primary's pool).
    pub has_replica: bool,
    /// Whether the shard is known down ([`Shard::guard`]).
    pub breaker: Arc<Breaker>,
    /// How long one guarded operation may take (`database.shard_timeout_ms`).
    pub timeout: Duration,
    /// How long it may wait for a connection ([`Shard::primary_conn`],
    /// `database.shard_connect_timeout_ms`).
    pub connect_timeout: Duration,
}

/// How long a scrape waits for one replica's `SHOW REPLICA STATUS`, connecting included.
pub const REPLICA_STATUS_TIMEOUT: Duration = Duration::from_secs(1);

/// A replica's lag from its `SHOW REPLICA STATUS` (`Slave_IO_Running`, `Slave_SQL_Running`,
/// `Seconds_Behind_Master`; `None` for a column that is NULL or absent): the seconds it is
/// behind, or why that is unknown (a replication thread not running, no status at all).
pub fn replica_lag(
    io: Option<&str>,
    sql: Option<&str>,
    behind: Option<u64>,
) -> std::result::Result<u64, String> {
    match (io, sql, behind) {
        (Some("Yes"), Some("Yes"), Some(s)) => Ok(s),
        (Some("Yes"), Some("Yes"), None) => Err("Seconds_Behind_Master is NULL".into()),
        (None, None, _) => Err("not a replica (SHOW REPLICA STATUS is empty)".into()),
        (io, sql, _) => Err(format!(
            "replication threads: I/O {}, SQL {}",
            io.unwrap_or("NULL"),
            sql.unwrap_or("NULL")
        )),
    }
}

impl Shard {
    /// Ask the replica how far behind its primary it is (`SHOW REPLICA STATUS`), within
    /// `timeout`: seconds, or why not (unreachable, refused, a thread stopped, no answer in time).
    pub async fn replica_lag(&self, timeout: Duration) -> std::result::Result<u64, String> {
        if let Some(cluster) = self.replica.cluster() {
            return cluster.reader_lag(timeout).await;
        }
        let ask = async {
            let mut c = self.replica.get_conn().await.map_err(|e| e.to_string())?;
            let row: Option<mysql_async::Row> = c
                .query_first("SHOW REPLICA STATUS")
                .await
                .map_err(|e| e.to_string())?;
            let Some(row) = row else {
                return replica_lag(None, None, None);
            };
            let text = |name: &str| row.get_opt::<Option<String>, _>(name)?.ok().flatten();
            let behind = row
                .get_opt::<Option<u64>, _>("Seconds_Behind_Master")
                .and_then(|v| v.ok())
                .flatten();
            replica_lag(
                text("Slave_IO_Running").as_deref(),
                text("Slave_SQL_Running").as_deref(),
                behind,
            )
        };
        match tokio::time::timeout(timeout, ask).await {
            Ok(answer) => answer,
            Err(_) => Err(format!("no answer within {timeout:?}")),
        }
    }

    /// Run `op`, which needs this shard, under its breaker ([`crate::breaker`]): refused at once
    /// ([`Error::ShardDown`]) while the breaker is open; otherwise given at most `timeout`. A
    /// failure to reach the shard (an error that is not the server's answer) or no answer in time
    /// counts against the breaker, and is [`Error::ShardDown`] if it opened it; any answer of the
    /// server, an error included, closes it. A pool with every connection held
    /// ([`Error::ShardBusy`]) does neither.
    ///
    /// An operation cut by the timeout may still have committed (the answer was lost): callers
    /// must be safe to repeat, as a `dm.send` is (its `client_msg_id` finds it again).
    pub async fn guard<T>(&self, op: impl Future<Output = Result<T>>) -> Result<T> {
        let failed = |e: Error| {
            if let Some(cluster) = self.primary.cluster() {
                cluster.suspect();
            }
            if self.breaker.failure() {
                tracing::warn!(shard = self.index, error = %runtime::telemetry::Chain(&e), "shard unreachable");
                Error::ShardDown {
                    shard: self.index,
                    tried: true,
                }
            } else {
                e
            }
        };
        let down = |tried| Error::ShardDown {
            shard: self.index,
            tried,
        };
        if self.breaker.is_open() {
            return Err(down(false));
        }
        match tokio::time::timeout(self.timeout, op).await {
            Ok(Err(Error::Db(e))) if unreachable(&e) => Err(failed(Error::Db(e))),
            Ok(Err(e @ Error::ShardTimeout(_))) => Err(failed(e)),
            // every connection held by other requests: neither a failure nor an answer
            Ok(Err(e @ Error::ShardBusy(_))) => Err(e),
            Ok(answered) => {
                self.breaker.success();
                answered
            }
            Err(_) => Err(failed(Error::ShardTimeout(self.index))),
        }
    }

    /// A connection to the primary within `connect_timeout`, for operations run under
    /// [`Shard::guard`]. None in time is [`Error::ShardBusy`] when every connection of the pool
    /// was held meanwhile (the workers' own load, which says nothing about the server), else
    /// [`Error::ShardTimeout`].
    pub async fn primary_conn(&self) -> Result<PooledConn> {
        match tokio::time::timeout(self.connect_timeout, self.primary.get_conn()).await {
            Ok(c) => Ok(c?),
            Err(_) if self.primary.saturated() => Err(Error::ShardBusy(self.index)),
            Err(_) => Err(Error::ShardTimeout(self.index)),
        }
    }

    /// `op` on a connection to the primary ([`Shard::primary_conn`]) under the shard's breaker
    /// ([`Shard::guard`]): how every request reaches a shard's primary. Refused at once with
    /// [`Error::ShardDown`] while the shard is known down.
    pub async fn on_primary<T>(
        &self,
        op: impl AsyncFnOnce(&mut PooledConn) -> Result<T>,
    ) -> Result<T> {
        self.guard(async {
            let mut c = self.primary_conn().await?;
            op(&mut c).await
        })
        .await
    }

    /// `op`, a read that tolerates replication lag, on the replica, else on the primary: how
    /// every request reads a replica. A connection to the replica is asked for first, within
    /// `connect_timeout` and outside the breaker (which says whether the *primary* answers:
    /// while it is down, the replica's reads go on); `op` then runs on it within `timeout` (no
    /// answer in time is [`Error::ShardTimeout`], retried). If the replica gives no connection in
    /// time, or the shard has none, `op` runs on the primary under the breaker
    /// ([`Shard::on_primary`]). A replica that is down thus costs each read a refused connect
    /// (or `connect_timeout`, for one that does not answer) and sends it to the primary.
    pub async fn on_replica<T>(
        &self,
        op: impl AsyncFnOnce(&mut PooledConn) -> Result<T>,
    ) -> Result<T> {
        if self.has_replica {
            match tokio::time::timeout(self.connect_timeout, self.replica.get_conn()).await {
                Ok(Ok(mut c)) => {
                    return tokio::time::timeout(self.timeout, op(&mut c))
                        .await
                        .unwrap_or(Err(Error::ShardTimeout(self.index)));
                }
                Ok(Err(e)) => {
                    tracing::debug!(shard = self.index, error = %runtime::telemetry::Chain(&e), "replica unreachable: reading from the primary")
                }
                Err(_) => {
                    tracing::debug!(
                        shard = self.index,
                        "no replica connection in time: reading from the primary"
                    )
                }
            }
        }
        self.on_primary(op).await
    }

    /// `Ok` unless the shard is known down ([`Error::ShardDown`], not tried): asked before the
    /// first write of a request that writes several shards, so that it does not start what a
    /// shard known down would leave half done.
    pub fn up(&self) -> Result<()> {
        if self.breaker.is_open() {
            Err(Error::ShardDown {
                shard: self.index,
                tried: false,
            })
        } else {
            Ok(())
        }
    }

    /// One probe of a shard whose breaker is open: `SELECT 1` on its primary within `timeout`;
    /// an answer closes the breaker.
    async fn probe(&self) {
        let answer = tokio::time::timeout(self.connect_timeout, async {
            let mut c = self.primary.get_conn().await?;
            c.query_drop("SELECT 1").await
        })
        .await;
        match answer {
            Ok(Ok(())) => self.breaker.success(),
            Ok(Err(e)) => {
                tracing::debug!(shard = self.index, error = %runtime::telemetry::Chain(&e), "shard still down")
            }
            Err(_) => tracing::debug!(shard = self.index, "shard still not answering"),
        }
    }
}

/// Where rows live.
#[derive(Clone)]
pub struct Shards {
    shards: Arc<Vec<Shard>>,
    map: Arc<Vec<usize>>,
    /// How often shards with an open breaker are probed.
    probe_every: Duration,
}

/// splitmix64: spreads time-ordered ids evenly over logical shards.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// FNV-1a of a string key (usernames, invite codes, pair keys).
pub fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The logical → physical map: explicit, or logical % physical.
pub fn build_map(logical: u32, physical: usize, explicit: Option<&[usize]>) -> Result<Vec<usize>> {
    if physical == 0 || logical == 0 {
        return Err(Error::Config(
            "at least one shard and one logical shard are needed".into(),
        ));
    }
    match explicit {
        Some(m) if m.len() != logical as usize => Err(Error::Config(format!(
            "logical_map has {} entries for {logical} logical shards",
            m.len()
        ))),
        Some(m) if m.iter().any(|&p| p >= physical) => Err(Error::Config(
            "logical_map names a shard that does not exist".into(),
        )),
        Some(m) => Ok(m.to_vec()),
        None => Ok((0..logical as usize).map(|l| l % physical).collect()),
    }
}

/// Physical shard index for a hash under `map`.
pub fn physical_of(map: &[usize], hash: u64) -> usize {
    map[(hash % map.len() as u64) as usize]
}

/// Prepared statements kept per connection.
const STMT_CACHE: usize = 512;

pub(crate) fn opts(s: &DatabaseSettings, addr: &str, db: Option<&str>) -> Result<Opts> {
    let (host, port) = addr
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
        .ok_or_else(|| Error::Config(format!("database address {addr:?} is not host:port")))?;
    let constraints = PoolConstraints::new(0, s.pool_max.max(1)).expect("0 <= max");
    Ok(OptsBuilder::default()
        .ip_or_hostname(host)
        .tcp_port(port)
        .user(Some(s.user.clone()))
        .pass(Some(s.password.expose_secret().to_string()))
        .db_name(db.map(str::to_string))
        .prefer_socket(false)
        // Batched statements differ by their number of rows (up to a batch's 256 sends, five
        // kinds): with the default cache of 32 per connection, about one execute in eight also
        // paid a PREPARE and a CLOSE (measured under load).
        .stmt_cache_size(STMT_CACHE)
        .pool_opts(
            PoolOpts::default()
                .with_constraints(constraints)
                // Keep returned connections (up to `pool_max`) for a minute: with the default TTL
                // of 0 the pool keeps `min` (0) idle connections, so every request paid a new
                // TCP connect and login (docs/benchmarks.md, finding 2).
                .with_inactive_connection_ttl(Duration::from_secs(60))
                // No handler changes session variables; an unfinished transaction is still
                // rolled back when a connection goes back to the pool.
                .with_reset_connection(false),
        )
        .into())
}

impl Shards {
    /// The shards' pools, their connections counted nowhere (tests, tools).
    pub fn connect(s: &DatabaseSettings) -> Result<Self> {
        Self::build(s, None)
    }

    /// The shards' pools, each counted in `metrics` (`sb_mariadb_connections_in_use` and `_max`
    /// per shard and pool; a shard without a replica has only its primary's).
    pub fn connect_counted(s: &DatabaseSettings, metrics: &Metrics) -> Result<Self> {
        Self::build(s, Some(metrics))
    }

    fn build(s: &DatabaseSettings, metrics: Option<&Metrics>) -> Result<Self> {
        let map = build_map(s.logical_shards, s.shards.len(), s.logical_map.as_deref())?;
        let max = s.pool_max.max(1);
        let gauge = |index: usize, pool: &'static str| {
            metrics.map_or_else(Gauge::default, |m| m.mariadb_pool(index, pool, max))
        };
        let shards = s
            .shards
            .iter()
            .enumerate()
            .map(|(index, sh)| {
                let (primary, replica) = match (&sh.replica, sh.failover) {
                    (Some(r), true) => {
                        let cluster =
                            Arc::new(Cluster::new(index, vec![sh.primary.clone(), r.clone()], s)?);
                        (
                            CountedPool::elected(
                                cluster.clone(),
                                Use::Write,
                                gauge(index, "primary"),
                                max,
                            ),
                            CountedPool::elected(cluster, Use::Read, gauge(index, "replica"), max),
                        )
                    }
                    (None, true) => {
                        return Err(Error::Config(format!(
                            "shard {index}: failover needs the cluster's other node as replica"
                        )))
                    }
                    (r, false) => {
                        let primary = CountedPool::new(
                            Pool::new(opts(s, &sh.primary, Some(&s.name))?),
                            gauge(index, "primary"),
                            max,
                        );
                        let replica = match r {
                            Some(r) => CountedPool::new(
                                Pool::new(opts(s, r, Some(&s.name))?),
                                gauge(index, "replica"),
                                max,
                            ),
                            None => primary.clone(),
                        };
                        (primary, replica)
                    }
                };
                Ok(Shard {
                    index,
                    primary,
                    replica,
                    has_replica: sh.replica.is_some(),
                    breaker: Arc::new(Breaker::new(s.breaker_failures)),
                    timeout: Duration::from_millis(s.shard_timeout_ms.max(1)),
                    connect_timeout: Duration::from_millis(s.shard_connect_timeout_ms.max(1)),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Shards {
            shards: Arc::new(shards),
            map: Arc::new(map),
            probe_every: Duration::from_millis(s.breaker_probe_ms.max(1)),
        })
    }

    /// Until `stop`: every `database.breaker_probe_ms`, probe the shards whose breaker is open,
    /// all at once ([`Shard::probe`]); requests never wait on a shard known down. Meanwhile
    /// each Galera shard's [`Cluster`] elects its writer ([`Cluster::watch`]).
    pub async fn probe(self, stop: tokio_util::sync::CancellationToken) {
        let clusters = self
            .shards
            .iter()
            .filter_map(|s| s.primary.cluster().cloned())
            .map(|c| c.watch(self.probe_every, stop.clone()));
        futures::future::join(
            self.clone().probe_breakers(stop.clone()),
            futures::future::join_all(clusters),
        )
        .await;
    }

    async fn probe_breakers(self, stop: tokio_util::sync::CancellationToken) {
        let mut every = tokio::time::interval(self.probe_every);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = every.tick() => {}
            }
            let open = self.shards.iter().filter(|s| s.breaker.is_open());
            futures::future::join_all(open.map(Shard::probe)).await;
        }
    }

    /// Readiness: every shard's primary answers `SELECT 1`.
    pub async fn reachable(&self) -> std::result::Result<(), String> {
        let answers = futures::future::join_all(self.shards.iter().map(|s| async move {
            let mut c = s.primary.get_conn().await?;
            c.query_drop("SELECT 1").await
        }))
        .await;
        let failed: Vec<String> = answers
            .into_iter()
            .enumerate()
            .filter_map(|(i, a)| a.err().map(|e| format!("shard {i}: {e}")))
            .collect();
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed.join("; "))
        }
    }

    pub fn all(&self) -> &[Shard] {
        &self.shards
    }

    /// What each scrape of a users worker asks ([`runtime::health::Probe`]): every replica's
    /// lag, into `sb_mariadb_replica_lag_seconds` and `sb_mariadb_replica_up` of its shard (the
    /// replicas asked together, each within [`REPLICA_STATUS_TIMEOUT`]). A shard without a
    /// replica has no series.
    pub fn replica_probe(&self, metrics: &Metrics) -> runtime::health::Probe {
        let gauges: Arc<Vec<_>> = Arc::new(
            self.shards
                .iter()
                .filter(|s| s.has_replica)
                .map(|s| (s.index, metrics.mariadb_replica(s.index)))
                .collect(),
        );
        let db = self.clone();
        Arc::new(move || {
            let (db, gauges) = (db.clone(), gauges.clone());
            Box::pin(async move {
                futures::future::join_all(gauges.iter().map(|(i, (lag, up))| {
                    let shard = &db.shards[*i];
                    async move {
                        match shard.replica_lag(REPLICA_STATUS_TIMEOUT).await {
                            Ok(seconds) => {
                                lag.set(seconds as f64);
                                up.set(1);
                            }
                            Err(why) => {
                                tracing::debug!(shard = i, %why, "replica status unknown");
                                lag.set(f64::NAN);
                                up.set(0);
                            }
                        }
                    }
                }))
                .await;
            })
        })
    }

    /// The shard of rows keyed by a user or conversation id.
    pub fn by_id(&self, id: topics::Id) -> &Shard {
        &self.shards[physical_of(&self.map, mix(id.0))]
    }

    /// The shard of rows keyed by a string (username, invite code, pair key).
    pub fn by_key(&self, key: &str) -> &Shard {
        &self.shards[physical_of(&self.map, fnv1a(key))]
    }

    /// A fresh id for a new row (an account, a conversation), from `draw`, whose shard is not
    /// known down: the place of a new row is free to choose, so a request does not start what a
    /// shard known down would leave half done. After [`DRAWS`] draws on shards known down the
    /// last one is taken (its writes are then refused as usual).
    pub fn live_id(&self, draw: impl FnMut() -> topics::Id) -> topics::Id {
        first_live(draw, |id| !self.by_id(*id).breaker.is_open())
    }

    /// A fresh string key for a new row (an invite code), from `draw`, whose shard is not known
    /// down; as [`Shards::live_id`].
    pub fn live_key(&self, draw: impl FnMut() -> String) -> String {
        first_live(draw, |key| !self.by_key(key).breaker.is_open())
    }

    pub async fn disconnect(self) {
        if let Ok(shards) = Arc::try_unwrap(self.shards) {
            for s in shards {
                let _ = s.primary.disconnect().await;
                let _ = s.replica.disconnect().await;
            }
        }
    }
}

/// How many draws [`Shards::live_id`] and [`Shards::live_key`] make at most.
pub const DRAWS: usize = 64;

/// The first of up to [`DRAWS`] values of `draw` that is `live`, else the last one drawn.
fn first_live<T>(mut draw: impl FnMut() -> T, live: impl Fn(&T) -> bool) -> T {
    let mut value = draw();
    for _ in 1..DRAWS {
        if live(&value) {
            break;
        }
        value = draw();
    }
    value
}

/// One statement on the primary of `shard`, under its breaker ([`Shard::on_primary`]), on a
/// connection that goes back to the pool right after, so a handler never holds one connection
/// while waiting for another of the same pool.
pub async fn exec_drop<P>(shard: &Shard, sql: &str, params: P) -> Result<()>
where
    P: Into<mysql_async::Params> + Send,
{
    shard
        .on_primary(async |c| Ok(c.exec_drop(sql, params).await?))
        .await
}

/// The rows of one query on the primary of `shard`, under its breaker, on a connection returned
/// right after.
pub async fn rows<T, P>(shard: &Shard, sql: &str, params: P) -> Result<Vec<T>>
where
    T: mysql_async::prelude::FromRow + Send + 'static,
    P: Into<mysql_async::Params> + Send,
{
    shard
        .on_primary(async |c| Ok(c.exec(sql, params).await?))
        .await
}

/// MariaDB's duplicate-key error.
pub fn is_duplicate(e: &mysql_async::Error) -> bool {
    matches!(e, mysql_async::Error::Server(s) if s.code == crate::mysql::ER_DUP_ENTRY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn maps_logical_to_physical() {
        assert_eq!(build_map(4, 2, None).unwrap(), vec![0, 1, 0, 1]);
        assert_eq!(build_map(2, 2, Some(&[1, 1])).unwrap(), vec![1, 1]);
        assert!(build_map(2, 2, Some(&[1])).is_err());
        assert!(build_map(2, 2, Some(&[0, 2])).is_err());
        assert!(build_map(0, 2, None).is_err());
        assert!(build_map(2, 0, None).is_err());
    }

    #[test]
    fn a_replica_lags_only_while_both_threads_run() {
        assert_eq!(replica_lag(Some("Yes"), Some("Yes"), Some(0)), Ok(0));
        assert_eq!(replica_lag(Some("Yes"), Some("Yes"), Some(42)), Ok(42));
        assert_eq!(
            replica_lag(Some("Yes"), Some("Yes"), None),
            Err("Seconds_Behind_Master is NULL".into())
        );
        assert_eq!(
            replica_lag(Some("Yes"), Some("No"), None),
            Err("replication threads: I/O Yes, SQL No".into())
        );
        assert_eq!(
            replica_lag(Some("Connecting"), Some("Yes"), Some(3)),
            Err("replication threads: I/O Connecting, SQL Yes".into())
        );
        assert_eq!(
            replica_lag(None, Some("Yes"), None),
            Err("replication threads: I/O NULL, SQL Yes".into())
        );
        assert!(replica_lag(None, None, None)
            .unwrap_err()
            .contains("not a replica"));
    }

    #[test]
    fn bad_addresses_are_config_errors() {
        let s = DatabaseSettings::default();
        assert!(opts(&s, "nohost", None).is_err());
        assert!(opts(&s, "h:notaport", None).is_err());
        assert!(opts(&s, "127.0.0.1:1", Some("x")).is_ok());
    }

    /// A shard on which nothing listens, its breaker opening after two failures.
    fn unreachable_shard(timeout_ms: u64) -> Shard {
        let s = DatabaseSettings {
            shards: vec![crate::settings::ShardSettings {
                primary: "127.0.0.1:1".into(),
                ..Default::default()
            }],
            shard_timeout_ms: timeout_ms,
            shard_connect_timeout_ms: timeout_ms,
            breaker_failures: 2,
            ..Default::default()
        };
        Shards::connect(&s).unwrap().all()[0].clone()
    }

    /// A pool of at most `max` connections to whatever listens on `listener`, counting in `in_use`.
    fn pool_of(listener: &tokio::net::TcpListener, in_use: Gauge, max: usize) -> CountedPool {
        let addr = listener.local_addr().unwrap().to_string();
        let pool = Pool::new(opts(&DatabaseSettings::default(), &addr, None).unwrap());
        CountedPool::new(pool, in_use, max)
    }

    fn io_error() -> Error {
        Error::Db(mysql_async::Error::Io(mysql_async::IoError::Io(
            std::io::ErrorKind::ConnectionRefused.into(),
        )))
    }

    #[tokio::test]
    async fn the_guard_opens_the_breaker_after_failures_in_a_row_and_then_refuses_at_once() {
        let shard = unreachable_shard(1_000);
        let r = shard.guard(async { Err::<(), _>(io_error()) }).await;
        assert!(matches!(r, Err(Error::Db(_))), "below the threshold: {r:?}");
        // a server's answer, even an error, closes it and resets the count
        let server = mysql_async::ServerError {
            code: 1062,
            message: "dup".into(),
            state: "23000".into(),
        };
        let r = shard
            .guard(async { Err::<(), _>(Error::Db(server.into())) })
            .await;
        assert!(matches!(r, Err(Error::Db(mysql_async::Error::Server(_)))));
        assert!(shard
            .guard(async { Err::<(), _>(io_error()) })
            .await
            .is_err());
        assert!(!shard.breaker.is_open(), "the count started again");
        let r = shard.guard(async { Err::<(), _>(io_error()) }).await;
        assert!(
            matches!(
                r,
                Err(Error::ShardDown {
                    shard: 0,
                    tried: true
                })
            ),
            "{r:?}"
        );
        let r = shard
            .guard(async { unreachable!("not tried while open") })
            .await;
        assert!(matches!(
            r,
            Err::<(), _>(Error::ShardDown { tried: false, .. })
        ));
        // the probe finds nothing listening: still open
        shard.probe().await;
        assert!(shard.breaker.is_open());
        shard.breaker.success();
        assert_eq!(shard.guard(async { Ok(7) }).await.unwrap(), 7);
        // nothing listens: refused, an error of the connection
        assert!(matches!(shard.primary_conn().await, Err(Error::Db(_))));
    }

    #[tokio::test(start_paused = true)]
    async fn an_operation_without_an_answer_counts_as_a_failure_at_the_timeout() {
        let shard = unreachable_shard(1_000);
        let hang = || shard.guard(futures::future::pending::<Result<()>>());
        let t0 = tokio::time::Instant::now();
        assert!(matches!(hang().await, Err(Error::ShardTimeout(0))));
        assert_eq!(t0.elapsed(), Duration::from_secs(1));
        assert!(matches!(
            hang().await,
            Err(Error::ShardDown { tried: true, .. })
        ));
        assert!(matches!(
            hang().await,
            Err(Error::ShardDown { tried: false, .. })
        ));
        assert_eq!(t0.elapsed(), Duration::from_secs(2), "refused at once");
    }

    #[tokio::test]
    async fn requests_reach_a_shard_only_through_its_breaker() {
        let shard = unreachable_shard(1_000);
        let select = async |c: &mut PooledConn| Ok(c.query_drop("SELECT 1").await?);
        // nothing listens: an error of the connection, counted
        assert!(matches!(shard.on_primary(select).await, Err(Error::Db(_))));
        assert!(matches!(
            exec_drop(&shard, "SELECT 1", ()).await,
            Err(Error::ShardDown { tried: true, .. })
        ));
        assert!(matches!(
            shard.up(),
            Err(Error::ShardDown { tried: false, .. })
        ));
        let r: Result<Vec<u64>> = rows(&shard, "SELECT 1", ()).await;
        assert!(matches!(r, Err(Error::ShardDown { tried: false, .. })));
        shard.breaker.success();
        assert!(shard.up().is_ok());
    }

    #[tokio::test]
    async fn a_replica_read_goes_to_the_primary_when_the_replica_gives_no_connection() {
        let mut shard = unreachable_shard(1_000);
        shard.has_replica = true;
        let select = async |c: &mut PooledConn| Ok(c.query_drop("SELECT 1").await?);
        // the replica refuses, then the primary (under the breaker) does too: counted once
        assert!(matches!(shard.on_replica(select).await, Err(Error::Db(_))));
        assert!(!shard.breaker.is_open());
        assert!(matches!(
            shard.on_replica(select).await,
            Err(Error::ShardDown { tried: true, .. })
        ));
        // the primary known down: the replica is still tried first, then refused at once
        assert!(matches!(
            shard.on_replica(select).await,
            Err(Error::ShardDown { tried: false, .. })
        ));
    }

    #[tokio::test]
    async fn a_replica_that_does_not_answer_costs_a_read_the_connect_timeout_at_most() {
        // a listener that accepts and never answers, as the shard's replica
        let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut shard = unreachable_shard(1_000);
        shard.replica = pool_of(&hung, Gauge::default(), 1);
        shard.has_replica = true;
        let t0 = std::time::Instant::now();
        let r = shard
            .on_replica(async |c: &mut PooledConn| Ok(c.query_drop("SELECT 1").await?))
            .await;
        assert!(
            matches!(r, Err(Error::Db(_))),
            "the primary's refusal: {r:?}"
        );
        let took = t0.elapsed();
        assert!(
            (Duration::from_secs(1)..Duration::from_millis(1_900)).contains(&took),
            "one connect timeout: {took:?}"
        );
    }

    #[tokio::test]
    async fn waiting_for_a_connection_while_every_one_is_held_is_not_a_failure_of_the_shard() {
        // a primary that accepts and never answers: no connection comes, whatever the count says
        let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut shard = unreachable_shard(2_000);
        shard.connect_timeout = Duration::from_millis(200);
        let in_use = Gauge::default();
        shard.primary = pool_of(&hung, in_use.clone(), 2);
        let select = async |c: &mut PooledConn| Ok(c.query_drop("SELECT 1").await?);
        // every connection held by other requests: busy, however often, and the breaker stays shut
        in_use.set(2);
        for _ in 0..3 {
            let r = shard.on_primary(select).await;
            assert!(matches!(r, Err(Error::ShardBusy(0))), "{r:?}");
        }
        assert!(!shard.breaker.is_open());
        assert!(matches!(
            crate::dispatch::classify(Error::ShardBusy(0)),
            runtime::consume::Failure::Transient(_)
        ));
        // with a connection free, the same wait says the server does not answer: two open it
        in_use.set(1);
        let r = shard.on_primary(select).await;
        assert!(matches!(r, Err(Error::ShardTimeout(0))), "{r:?}");
        let r = shard.on_primary(select).await;
        assert!(
            matches!(r, Err(Error::ShardDown { tried: true, .. })),
            "{r:?}"
        );
    }

    #[test]
    fn new_rows_are_placed_on_shards_not_known_down() {
        let s = DatabaseSettings {
            shards: vec![
                crate::settings::ShardSettings {
                    primary: "127.0.0.1:1".into(),
                    ..Default::default()
                },
                crate::settings::ShardSettings {
                    primary: "127.0.0.1:2".into(),
                    ..Default::default()
                },
            ],
            breaker_failures: 1,
            ..Default::default()
        };
        let db = Shards::connect(&s).unwrap();
        db.all()[1].breaker.failure();
        let mut next = 0u64;
        for _ in 0..50 {
            let id = db.live_id(|| {
                next += 1;
                topics::Id(next)
            });
            assert_eq!(db.by_id(id).index, 0);
            let mut n = 0;
            let key = db.live_key(|| {
                n += 1;
                format!("code{next}-{n}")
            });
            assert_eq!(db.by_key(&key).index, 0);
        }
        // every shard down: the last draw is taken
        db.all()[0].breaker.failure();
        let mut draws = 0;
        let id = db.live_id(|| {
            draws += 1;
            topics::Id(draws)
        });
        assert_eq!((draws, id), (DRAWS as u64, topics::Id(DRAWS as u64)));
    }

    #[test]
    fn only_a_ready_and_synced_galera_node_serves() {
        assert!(serves(Some("ON"), Some("4")));
        assert!(
            !serves(Some("OFF"), Some("4")),
            "outside the primary component"
        );
        assert!(!serves(Some("ON"), Some("2")), "a donor or joiner");
        assert!(!serves(None, None), "no Galera");
        assert!(donor(Some("ON"), Some("2")));
        assert!(!donor(Some("ON"), Some("4")), "Synced");
        assert!(!donor(Some("ON"), Some("1")), "a joiner");
        assert!(!donor(Some("OFF"), Some("2")));
    }

    #[test]
    fn the_first_synced_node_writes_else_a_donor_and_another_synced_one_reads() {
        let (s, d, x) = (
            NodeState {
                synced: true,
                donor: false,
            },
            NodeState {
                synced: false,
                donor: true,
            },
            NodeState::default(),
        );
        assert_eq!(elect_writer(&[s, s]), Some(0));
        assert_eq!(elect_writer(&[x, s]), Some(1));
        assert_eq!(elect_writer(&[x, x]), None);
        // a node rejoining by a full state transfer (x) and its donor (d): the donor writes
        assert_eq!(elect_writer(&[x, d]), Some(1));
        // a Synced node before any donor, wherever it is
        assert_eq!(elect_writer(&[d, s]), Some(1));
        assert_eq!(elect_reader(&[s, s], 0), 1);
        assert_eq!(elect_reader(&[s, s], 1), 0);
        assert_eq!(elect_reader(&[x, s], 1), 1, "the writer alone");
        assert_eq!(
            elect_reader(&[d, d], 1),
            1,
            "a donor reads only as the writer"
        );
        assert_eq!(elect_reader(&[s, x, s], 0), 2);
    }

    fn cluster_settings(failover: bool, replica: Option<&str>) -> DatabaseSettings {
        DatabaseSettings {
            shards: vec![crate::settings::ShardSettings {
                primary: "127.0.0.1:1".into(),
                replica: replica.map(String::from),
                failover,
            }],
            shard_connect_timeout_ms: 200,
            ..Default::default()
        }
    }

    #[test]
    fn failover_needs_the_other_node() {
        let refused = Shards::connect(&cluster_settings(true, None)).err();
        assert!(
            matches!(&refused, Some(Error::Config(e)) if e.contains("failover")),
            "{refused:?}"
        );
    }

    #[tokio::test]
    async fn a_cluster_whose_nodes_do_not_answer_keeps_its_writer_and_says_why() {
        let db = Shards::connect(&cluster_settings(true, Some("127.0.0.1:2"))).unwrap();
        let shard = &db.all()[0];
        let cluster = shard.primary.cluster().unwrap().clone();
        assert!(shard.replica.cluster().is_some());
        assert_eq!((cluster.node(Use::Write), cluster.node(Use::Read)), (0, 1));
        assert_eq!(cluster.addr(1), "127.0.0.1:2");
        cluster.elect().await;
        assert_eq!(
            cluster.node(Use::Write),
            0,
            "nobody serves: the writer stays"
        );
        assert_eq!(cluster.node(Use::Read), 0, "and reads go to it");
        let lag = shard.replica_lag(REPLICA_STATUS_TIMEOUT).await.unwrap_err();
        assert!(lag.contains("only 127.0.0.1:1"), "{lag}");
        // a failed connection asks for an election at once
        assert!(shard.primary.get_conn().await.is_err());
        tokio::time::timeout(Duration::from_secs(1), cluster.wake.notified())
            .await
            .expect("woken");
        cluster.reader.store(1, Ordering::Release);
        let lag = cluster
            .reader_lag(REPLICA_STATUS_TIMEOUT)
            .await
            .unwrap_err();
        assert!(lag.contains("not a Synced node"), "{lag}");
        assert!(!cluster.catch_up(1).await);
        // the guard counts an unreachable writer against the breaker and wakes the election
        let r = shard.guard(async { Err::<(), _>(io_error()) }).await;
        assert!(r.is_err());
        let stop = tokio_util::sync::CancellationToken::new();
        stop.cancel();
        db.clone().probe(stop).await;
        db.disconnect().await;
    }

    #[test]
    fn a_node_that_is_not_ready_is_unreachable_and_other_answers_are_not() {
        let server = |code| {
            mysql_async::Error::Server(mysql_async::ServerError {
                code,
                message: String::new(),
                state: String::new(),
            })
        };
        assert!(unreachable(&server(1047)));
        assert!(!unreachable(&server(1062)));
        assert!(unreachable(&mysql_async::Error::Io(
            mysql_async::IoError::Io(std::io::ErrorKind::ConnectionRefused.into())
        )));
    }

    proptest! {
        #[test]
        fn sequential_ids_spread_over_shards(start in any::<u64>()) {
            let map = build_map(64, 2, None).unwrap();
            let on0 = (0..1000u64).filter(|i| physical_of(&map, mix(start.wrapping_add(*i))) == 0).count();
            prop_assert!((350..650).contains(&on0), "{on0}");
        }

        #[test]
        fn moving_a_logical_shard_moves_only_its_keys(keys in proptest::collection::vec(any::<u64>(), 1..200)) {
            let before = build_map(64, 2, None).unwrap();
            let mut after = before.clone();
            after[3] = 1 - after[3];
            for k in keys {
                let h = mix(k);
                if (h % 64) != 3 {
                    prop_assert_eq!(physical_of(&before, h), physical_of(&after, h));
                }
            }
        }
    }
}
