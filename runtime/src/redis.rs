//! The Redis Cluster connection and key naming. Every key starts with the configured prefix, so
//! tests share one cluster without touching each other's keys.

use crate::{RedisSettings, Result};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use std::sync::Arc;
use tokio::sync::OnceCell;

pub use redis;

/// The one cluster connection of a process, shared by every task: redis-rs multiplexes it (one
/// socket per node, requests of concurrent tasks in flight together and answered in order) and
/// reconnects to a node it lost by itself. A checkout is a clone: no round trip. (A pool of 64
/// connections, as before, sent a `PING` with every checkout and spread concurrent commands over
/// up to 64 sockets per node.)
#[derive(Clone)]
pub struct Cluster {
    client: ClusterClient,
    conn: Arc<OnceCell<ClusterConnection>>,
}

impl Cluster {
    /// The shared connection, made on first use (a failed attempt is tried again by the next
    /// caller).
    pub async fn get(&self) -> Result<ClusterConnection, redis::RedisError> {
        self.conn
            .get_or_try_init(|| self.client.get_async_connection())
            .await
            .cloned()
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
