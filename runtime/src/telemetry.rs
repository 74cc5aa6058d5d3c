//! Logs as structured lines on stderr, filtered by `RUST_LOG` (default `info`), and W3C trace
//! context that travels in Kafka headers so one request can be followed across processes.

use rand::RngCore;
use tracing_subscriber::EnvFilter;

/// Install the global subscriber. Safe to call more than once (later calls do nothing).
pub fn init(service: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .try_init();
    tracing::info!(service, "telemetry started");
}

/// For tests: logs go through the test harness's capture (shown only for failing tests).
pub fn init_for_tests() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// An error and every cause below it, for logs: `error = %Chain(&e)` writes
/// `outer: cause: root cause`. A cause whose text its parent already shows (errors that format
/// their source into their own message) is not repeated.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut shown = self.0.to_string();
        let mut next = self.0.source();
        while let Some(cause) = next {
            let text = cause.to_string();
            if !shown.contains(&text) {
                shown.push_str(": ");
                shown.push_str(&text);
            }
            next = cause.source();
        }
        f.write_str(&shown)
    }
}

/// Kafka header that carries the trace context.
pub const TRACEPARENT: &str = "traceparent";

/// A fresh W3C `traceparent` (version 00, sampled).
pub fn new_traceparent() -> String {
    let mut rng = rand::rng();
    let mut trace = [0u8; 16];
    let mut span = [0u8; 8];
    rng.fill_bytes(&mut trace);
    rng.fill_bytes(&mut span);
    format!("00-{}-{}-01", hex::encode(trace), hex::encode(span))
}

/// The trace id of a valid `traceparent`, for log fields.
pub fn trace_id(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (parts.next().is_none()
        && hex(version, 2)
        && hex(trace, 32)
        && hex(span, 16)
        && hex(flags, 2)
        && trace != "0".repeat(32))
    .then_some(trace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        /// Shows its cause in its own message.
        #[error("database: {0}")]
        Shows(#[from] std::io::Error),
        /// Hides its cause: only the chain shows it.
        #[error("publish failed")]
        Hides(#[source] Inner),
    }

    #[derive(Debug, thiserror::Error)]
    #[error("broker down")]
    struct Inner(#[source] std::io::Error);

    #[test]
    fn a_chain_shows_every_cause_once() {
        let io = || std::io::Error::other("connection refused");
        assert_eq!(
            Chain(&Outer::Hides(Inner(io()))).to_string(),
            "publish failed: broker down: connection refused"
        );
        assert_eq!(
            Chain(&Outer::Shows(io())).to_string(),
            "database: connection refused"
        );
        assert_eq!(Chain(&io()).to_string(), "connection refused");
    }

    #[test]
    fn traceparents_are_valid_and_unique() {
        let a = new_traceparent();
        let b = new_traceparent();
        assert_ne!(a, b);
        assert_eq!(trace_id(&a).unwrap().len(), 32);
        assert_eq!(trace_id("00-abc-def-01"), None);
        assert_eq!(
            trace_id(&format!("00-{}-{}-01", "0".repeat(32), "1".repeat(16))),
            None
        );
        assert_eq!(trace_id(&format!("{a}-extra")), None);
        init_for_tests();
        init("test");
    }
}
