//! A circuit breaker per MariaDB shard. Closed, every statement is tried; after
//! `database.breaker_failures` failures in a row that say the shard cannot be reached (a connect
//! or statement error of the connection, or no answer within `database.shard_timeout_ms`) it
//! opens: requests that need the shard are answered `unavailable` at once instead of each waiting
//! for the shard, and a probe ([`crate::db::Shards::probe`], every `database.breaker_probe_ms`)
//! closes it again once the shard answers. A success closes it and resets the count.
//!
//! Requests are never the probe: the worker's lanes do not wait on a shard known down.

use prometheus_client::metrics::gauge::Gauge;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::OnceLock;

#[derive(Debug, Default)]
pub struct Breaker {
    /// Failures in a row while closed.
    failures: AtomicU32,
    open: AtomicBool,
    /// Failures in a row that open it (at least 1).
    threshold: u32,
    /// `sb_shard_breaker_open{shard}`, once the worker's metrics are known.
    gauge: OnceLock<Gauge>,
}

impl Breaker {
    pub fn new(threshold: u32) -> Self {
        Breaker {
            threshold: threshold.max(1),
            ..Default::default()
        }
    }

    /// Report the state to `gauge` (1 open, 0 closed) from now on.
    pub fn report_to(&self, gauge: Gauge) {
        gauge.set(i64::from(self.is_open()));
        let _ = self.gauge.set(gauge);
    }

    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// The shard answered: closed, count reset.
    pub fn success(&self) {
        self.failures.store(0, Ordering::Relaxed);
        if self.open.swap(false, Ordering::AcqRel) {
            tracing::info!("shard answers again: breaker closed");
            self.show(false);
        }
    }

    /// The shard could not be reached; true if the breaker is open now.
    pub fn failure(&self) -> bool {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= self.threshold && !self.open.swap(true, Ordering::AcqRel) {
            tracing::warn!(failures = n, "shard unreachable: breaker open");
            self.show(true);
        }
        self.is_open()
    }

    fn show(&self, open: bool) {
        if let Some(g) = self.gauge.get() {
            g.set(i64::from(open));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_failures_in_a_row_and_closes_on_a_success() {
        let b = Breaker::new(2);
        let gauge = Gauge::default();
        b.report_to(gauge.clone());
        assert!(!b.is_open());
        assert!(!b.failure(), "one failure is not enough");
        b.success();
        assert!(!b.failure(), "the count starts again after a success");
        assert!(b.failure(), "two in a row open it");
        assert!(b.is_open());
        assert_eq!(gauge.get(), 1);
        assert!(b.failure(), "stays open");
        b.success();
        assert!(!b.is_open());
        assert_eq!(gauge.get(), 0);
        assert!(!b.failure(), "closed with a fresh count");
    }

    #[test]
    fn a_threshold_of_zero_counts_as_one() {
        let b = Breaker::new(0);
        assert!(b.failure());
        let gauge = Gauge::default();
        b.report_to(gauge.clone());
        assert_eq!(gauge.get(), 1, "the current state is shown at once");
    }
}
