//! Latency histograms (HDR, microseconds, 3 significant digits) that cross process boundaries as
//! a list of (value, count) pairs and merge exactly.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest value recorded: one hour in microseconds (larger values are clamped).
const HIGH_US: u64 = 3_600_000_000;

#[derive(Clone, Debug)]
pub struct Hist(Histogram<u64>);

impl Default for Hist {
    fn default() -> Self {
        Hist(Histogram::new_with_bounds(1, HIGH_US, 3).expect("valid histogram bounds"))
    }
}

/// Percentiles of a histogram, in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

/// A histogram's non-empty buckets, for JSON.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistData(pub Vec<(u64, u64)>);

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

impl Hist {
    pub fn record_us(&mut self, us: u64) {
        self.0.saturating_record(us.clamp(1, HIGH_US));
    }

    pub fn record(&mut self, d: std::time::Duration) {
        self.record_us(d.as_micros().min(u128::from(HIGH_US)) as u64);
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    pub fn merge(&mut self, other: &Hist) {
        self.0.add(&other.0).expect("histograms share bounds");
    }

    pub fn data(&self) -> HistData {
        HistData(
            self.0
                .iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
        )
    }

    pub fn from_data(d: &HistData) -> Hist {
        let mut h = Hist::default();
        for &(v, n) in &d.0 {
            h.0.saturating_record_n(v.clamp(1, HIGH_US), n);
        }
        h
    }

    pub fn percentiles(&self) -> Percentiles {
        let h = &self.0;
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: h.mean().round() / 1000.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_across_the_wire_exactly() {
        let mut a = Hist::default();
        let mut b = Hist::default();
        for us in 1..=1000 {
            a.record_us(us * 1000);
        }
        b.record_us(5_000_000);
        b.record_us(0); // clamped to 1 µs
        let back = Hist::from_data(
            &serde_json::from_str(&serde_json::to_string(&b.data()).unwrap()).unwrap(),
        );
        a.merge(&back);
        let p = a.percentiles();
        assert_eq!(p.count, 1002);
        assert!((p.p50_ms - 500.0).abs() < 1.0, "{p:?}");
        assert!((p.p99_ms - 990.0).abs() < 2.0, "{p:?}");
        assert!((p.max_ms - 5000.0).abs() < 5.0, "{p:?}");
        assert_eq!(Hist::default().percentiles(), Percentiles::default());
        let mut c = Hist::default();
        c.record(std::time::Duration::from_secs(100_000));
        assert!(c.percentiles().max_ms >= 3_599_000.0);
    }
}
