//! The Redis Cluster connection and key naming. Every key starts with the configured prefix, so
//! tests share one cluster without touching each other's keys.

use crate::metrics::{Gauge, InUse};
use crate::{RedisSettings, Result};
use redis::aio::ConnectionLike;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};
use std::sync::Arc;
use tokio::sync::OnceCell;

pub use redis;

/// The one cluster connection of a process, shared by every task: redis-rs multiplexes it (one
/// socket per node, requests of concurrent tasks in flight together and answered in order) and
/// reconnects to a node it lost by itself. A checkout is a clone: no round trip. (A pool of 64
/// connections, as before, sent a `PING` with every checkout and spread concurrent commands over
/// up to 64 sockets per node.)
///
/// Being one connection, it has no pool to measure: what it counts instead is its requests in
/// flight ([`Cluster::counted`]), a command or a pipeline sent and not answered yet, which grows
/// when Redis (or the way to it) is slower than the traffic.
#[derive(Clone)]
pub struct Cluster {
    client: ClusterClient,
    conn: Arc<OnceCell<ClusterConnection>>,
    in_flight: Gauge,
}

/// A handle on the cluster connection ([`Cluster::get`]): each request sent on it counts in the
/// cluster's in-flight gauge until its answer (or failure) comes back, or its caller gives up.
#[derive(Clone)]
pub struct Connection {
    inner: ClusterConnection,
    in_flight: Gauge,
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let counted = InUse::new(&self.in_flight);
        let answer = self.inner.req_packed_command(cmd);
        Box::pin(async move {
            let _counted = counted;
            answer.await
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let counted = InUse::new(&self.in_flight);
        let answers = self.inner.req_packed_commands(pipeline, offset, count);
        Box::pin(async move {
            let _counted = counted;
            answers.await
        })
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}

impl Cluster {
    /// The shared connection, made on first use (a failed attempt is tried again by the next
    /// caller).
    pub async fn get(&self) -> Result<Connection, redis::RedisError> {
        let inner = self
            .conn
            .get_or_try_init(|| self.client.get_async_connection())
            .await?
            .clone();
        Ok(Connection {
            inner,
            in_flight: self.in_flight.clone(),
        })
    }

    /// Count this handle's requests in flight in `gauge` (`sb_redis_requests_in_flight`).
    pub fn counted(mut self, gauge: &Gauge) -> Self {
        self.in_flight = gauge.clone();
        self
    }

    /// Readiness: the cluster answers a `PING`.
    pub async fn reachable(&self) -> Result<(), String> {
        let mut c = self.get().await.map_err(|e| e.to_string())?;
        redis::cmd("PING")
            .query_async::<String>(&mut c)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

/// The process' cluster handle; nothing connects until the first [`Cluster::get`].
pub fn cluster(s: &RedisSettings) -> Result<Cluster> {
    let client = ClusterClient::new(s.nodes.clone())
        .map_err(|e| crate::Error::Config(format!("redis nodes: {e}")))?;
    Ok(Cluster {
        client,
        conn: Arc::default(),
        in_flight: Gauge::default(),
    })
}

/// Builds prefixed keys.
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: impl Into<String>) -> Self {
        Keys {
            prefix: prefix.into(),
        }
    }

    /// `<prefix>:<name>`.
    pub fn key(&self, name: impl std::fmt::Display) -> String {
        format!("{}:{}", self.prefix, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_prefixed() {
        assert_eq!(Keys::new("t1").key("sess:{abc}"), "t1:sess:{abc}");
    }
}
