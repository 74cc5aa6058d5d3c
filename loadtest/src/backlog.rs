//! Kafka backlog per topic kind, from the platform's own counters: every edge, worker and the
//! router serve `/metrics` with `sb_records_published_total{topic_kind}` and
//! `sb_records_consumed_total{topic_kind}`. Records published minus records consumed since the
//! start of the run (the platform idle then) is what waits in Kafka or in a consumer's lanes:
//! the consumer lag, summed over partitions, without a Kafka admin client.

use crate::stack::Component;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// topic kind → (published, consumed), summed over processes; and the kinds some process
/// counts consumption of (edges do not count what they read from their own topic).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts(
    BTreeMap<String, (u64, u64)>,
    std::collections::BTreeSet<String>,
);

/// Add the counters of one `/metrics` text to `into`.
pub fn parse_into(text: &str, into: &mut Counts) {
    for line in text.lines() {
        let (name, rest) = match line.split_once('{') {
            Some(x) => x,
            None => continue,
        };
        let published = match name {
            "sb_records_published_total" => true,
            "sb_records_consumed_total" => false,
            _ => continue,
        };
        let Some((labels, value)) = rest.split_once('}') else {
            continue;
        };
        let Some(kind) = labels
            .split(',')
            .find_map(|l| l.trim().strip_prefix("topic_kind=\""))
            .and_then(|v| v.strip_suffix('"'))
        else {
            continue;
        };
        let Ok(v) = value.trim().parse::<u64>() else {
            continue;
        };
        let e = into.0.entry(kind.to_string()).or_default();
        if published {
            e.0 += v;
        } else {
            e.1 += v;
            into.1.insert(kind.to_string());
        }
    }
}

/// Scrapes the platform's processes.
pub struct Scraper {
    client: reqwest::Client,
    addrs: Vec<String>,
}

impl Scraper {
    pub fn new(components: &[Component]) -> Scraper {
        let addrs = components
            .iter()
            .filter(|c| matches!(c.kind.as_str(), "edge" | "worker" | "router"))
            .filter_map(|c| c.metrics())
            .collect();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("http client");
        Scraper { client, addrs }
    }

    pub async fn counts(&self) -> Counts {
        let texts = futures::future::join_all(self.addrs.iter().map(|a| async move {
            let r = self
                .client
                .get(format!("http://{a}/metrics"))
                .send()
                .await
                .ok()?;
            r.text().await.ok()
        }))
        .await;
        let mut c = Counts::default();
        for t in texts.into_iter().flatten() {
            parse_into(&t, &mut c);
        }
        c
    }
}

/// Backlog per topic kind between a baseline and now (never below zero), for the kinds whose
/// consumers count.
pub fn backlog(base: &Counts, now: &Counts) -> BTreeMap<String, u64> {
    now.0
        .iter()
        .filter(|(k, _)| now.1.contains(*k))
        .map(|(k, &(p, c))| {
            let (p0, c0) = base.0.get(k).copied().unwrap_or((0, 0));
            (
                k.clone(),
                p.saturating_sub(p0).saturating_sub(c.saturating_sub(c0)),
            )
        })
        .collect()
}

/// The largest backlog seen per topic kind over a run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peak(pub BTreeMap<String, u64>);

impl Peak {
    pub fn update(&mut self, b: &BTreeMap<String, u64>) {
        for (k, v) in b {
            let e = self.0.entry(k.clone()).or_default();
            *e = (*e).max(*v);
        }
    }

    /// `dms 120, deliver 4` — the non-zero ones, largest first.
    pub fn summary(b: &BTreeMap<String, u64>) -> String {
        let mut v: Vec<_> = b.iter().filter(|(_, n)| **n > 0).collect();
        v.sort_by(|a, b| b.1.cmp(a.1));
        if v.is_empty() {
            return "0".into();
        }
        v.iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn computes_backlog_from_counters() {
        let mut a = Counts::default();
        parse_into(
            "sb_records_published_total{topic_kind=\"dms\"} 10\nsb_records_consumed_total{topic_kind=\"dms\"} 9\n# x\nsb_ws_connections 4\nbad{x} y\n",
            &mut a,
        );
        let mut b = Counts::default();
        parse_into(
            "sb_records_published_total{topic_kind=\"dms\"} 30\n",
            &mut b,
        );
        parse_into(
            "sb_records_consumed_total{topic_kind=\"dms\",other=\"x\"} 14\nsb_records_published_total{topic_kind=\"edge\"} 3\n",
            &mut b,
        );
        let bl = backlog(&a, &b);
        assert_eq!(bl["dms"], 15);
        assert!(!bl.contains_key("edge"), "nobody counts what edges consume");
        let bl: BTreeMap<String, u64> = [("dms".to_string(), 15), ("edge".to_string(), 3)].into();
        let mut p = Peak::default();
        p.update(&bl);
        p.update(&[("dms".to_string(), 2)].into());
        assert_eq!(p.0["dms"], 15);
        assert_eq!(Peak::summary(&p.0), "dms 15, edge 3");
        assert_eq!(Peak::summary(&BTreeMap::new()), "0");
    }
}
