//! What every Switchboard process shares: settings, Kafka clients and the at-least-once consumer
//! loop, the Redis Cluster pool, health and metrics endpoints, telemetry and shutdown.

pub mod consume;
pub mod health;
pub mod kafka;
pub mod metrics;
pub mod redis;
pub mod registry;
pub mod settings;
pub mod shutdown;
pub mod telemetry;
pub mod trace;

pub use settings::{
    KafkaSettings, LogFormat, LogSettings, RedisSettings, ServiceSettings, TraceSettings,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("configuration: {0}")]
    Config(String),
    #[error("contract: {0}")]
    Topics(#[from] topics::Error),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
