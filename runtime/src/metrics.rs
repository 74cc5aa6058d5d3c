//! Counters and gauges every process exposes on `/metrics` in the Prometheus text format. All
//! names live here: snake_case, base units, counters end in `_total`, no user ids as labels.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub const RECORDS_CONSUMED_TOTAL: &str = "sb_records_consumed_total";
pub const RECORDS_DEAD_LETTERED_TOTAL: &str = "sb_records_dead_lettered_total";
pub const RECORDS_RETRIED_TOTAL: &str = "sb_records_retried_total";
/// Batches the consumer loop handed to its handler, by what closed them (`bound`); with
/// `sb_records_consumed_total` it gives the mean batch size.
pub const CONSUMER_BATCHES_TOTAL: &str = "sb_consumer_batches_total";
pub const RECORDS_PUBLISHED_TOTAL: &str = "sb_records_published_total";
pub const PUBLISH_FAILURES_TOTAL: &str = "sb_publish_failures_total";
pub const WS_CONNECTIONS: &str = "sb_ws_connections";
pub const WS_CONNECTIONS_OPENED_TOTAL: &str = "sb_ws_connections_opened_total";
pub const WS_HANDSHAKES_REFUSED_TOTAL: &str = "sb_ws_handshakes_refused_total";
pub const WS_FRAMES_IN_TOTAL: &str = "sb_ws_frames_in_total";
pub const WS_FRAMES_OUT_TOTAL: &str = "sb_ws_frames_out_total";
pub const WS_FRAMES_REJECTED_TOTAL: &str = "sb_ws_frames_rejected_total";
pub const WS_SLOW_CLIENTS_DISCONNECTED_TOTAL: &str = "sb_ws_slow_clients_disconnected_total";
pub const HTTP_REQUESTS_TOTAL: &str = "sb_http_requests_total";
pub const HTTP_CONNECTIONS_CLOSED_TOTAL: &str = "sb_http_connections_closed_total";
pub const REQUESTS_HANDLED_TOTAL: &str = "sb_requests_handled_total";
pub const REQUEST_ERRORS_TOTAL: &str = "sb_request_errors_total";
pub const DELIVERIES_ROUTED_TOTAL: &str = "sb_deliveries_routed_total";
pub const MESSAGES_PERSISTED_TOTAL: &str = "sb_messages_persisted_total";
/// Account checks of bearer tokens, and the queries that answered them (workers): the ratio is
/// how many checks one query answers.
pub const ACCOUNT_CHECKS_TOTAL: &str = "sb_account_checks_total";
pub const ACCOUNT_CHECK_QUERIES_TOTAL: &str = "sb_account_check_queries_total";

/// A process's metrics. Cloning shares the same values.
#[derive(Clone, Default)]
pub struct Metrics {
    inner: Arc<Mutex<BTreeMap<String, Arc<Metric>>>>,
}

#[derive(Default)]
pub struct Metric {
    counter: AtomicU64,
    gauge: AtomicI64,
    is_gauge: std::sync::atomic::AtomicBool,
}

impl Metric {
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.counter.fetch_add(n, Ordering::Relaxed);
    }
    pub fn set(&self, v: i64) {
        self.is_gauge.store(true, Ordering::Relaxed);
        self.gauge.store(v, Ordering::Relaxed);
    }
    pub fn gauge_add(&self, d: i64) {
        self.is_gauge.store(true, Ordering::Relaxed);
        self.gauge.fetch_add(d, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        if self.is_gauge.load(Ordering::Relaxed) {
            self.gauge.load(Ordering::Relaxed)
        } else {
            self.counter.load(Ordering::Relaxed) as i64
        }
    }
}

impl Metrics {
    /// The metric `name` with optional `label="value"` pairs, created on first use.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Arc<Metric> {
        let mut key = name.to_string();
        if !labels.is_empty() {
            key.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    key.push(',');
                }
                let _ = write!(key, "{k}=\"{}\"", v.replace(['"', '\\', '\n'], "_"));
            }
            key.push('}');
        }
        let mut map = self.inner.lock().expect("metrics lock");
        map.entry(key).or_default().clone()
    }

    pub fn inc(&self, name: &str, labels: &[(&str, &str)]) {
        self.get(name, labels).inc();
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let map = self.inner.lock().expect("metrics lock");
        let mut out = String::new();
        for (key, m) in map.iter() {
            let _ = writeln!(out, "{key} {}", m.get());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_gauges() {
        let m = Metrics::default();
        m.inc(RECORDS_CONSUMED_TOTAL, &[("topic", "a\"b")]);
        m.get(RECORDS_CONSUMED_TOTAL, &[("topic", "a\"b")]).add(2);
        m.get(WS_CONNECTIONS, &[]).gauge_add(5);
        m.get(WS_CONNECTIONS, &[]).gauge_add(-2);
        m.get("x", &[("a", "1"), ("b", "2")]).set(7);
        let text = m.render();
        assert!(
            text.contains("sb_records_consumed_total{topic=\"a_b\"} 3"),
            "{text}"
        );
        assert!(text.contains("sb_ws_connections 3"));
        assert!(text.contains("x{a=\"1\",b=\"2\"} 7"));
    }
}
