//! The Redis Cluster pool and key naming. Every key starts with the configured prefix, so tests
//! share one cluster without touching each other's keys.

use crate::{RedisSettings, Result};
use deadpool_redis::cluster::{Config, Runtime};

pub use deadpool_redis::cluster::Pool;
pub use deadpool_redis::redis;
pub use deadpool_redis::PoolError;

pub fn pool(s: &RedisSettings) -> Result<Pool> {
    let mut cfg = Config::from_urls(s.nodes.clone());
    cfg.pool = Some(deadpool_redis::PoolConfig::new(64));
    cfg.create_pool(Some(Runtime::Tokio1))
        .map_err(|e| crate::Error::Config(format!("redis pool: {e}")))
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
