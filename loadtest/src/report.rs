//! The result of a run: JSON (`--out x.json`) and a Markdown table (printed, and `x.md`).

use crate::accounts::AccountStats;
use crate::procs::{Sample, Usage};
use crate::stack::Component;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

/// A scenario's figures as (metric, value) rows for the Markdown table.
pub trait Rows {
    fn rows(&self) -> Vec<(String, String)>;
}

/// Resident memory of one platform process before and after the sockets were opened.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    pub name: String,
    pub kind: String,
    /// Sockets it held (edges: from `x-switchboard-edge`; nginx: every socket of the run).
    pub connections: u64,
    pub rss_before_mib: f64,
    pub rss_after_mib: f64,
    pub kib_per_connection: Option<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report<T> {
    pub scenario: String,
    /// The command line, as run.
    pub command: String,
    pub started_at_unix_s: u64,
    /// `nginx` or `direct`.
    pub via: String,
    pub accounts: AccountStats,
    pub result: T,
    /// Edge (and nginx) memory per connection, when the run opened sockets.
    pub memory: Vec<Memory>,
    /// CPU per process (percent of one core) during each phase.
    pub cpu: BTreeMap<String, Vec<Usage>>,
    /// Load averages (1, 5, 15 min) at the start and the end of the run.
    pub load_average: [String; 2],
    /// Largest Kafka backlog (records published − consumed, per topic kind) seen during the run.
    pub kafka_backlog_peak: BTreeMap<String, u64>,
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Memory rows for every edge and nginx: RSS after − before, per connection it held.
pub fn memory(
    components: &[Component],
    before: &Sample,
    after: &Sample,
    per_edge: &BTreeMap<String, u64>,
    total: u64,
    targets: &[String],
) -> Vec<Memory> {
    let mut out = Vec::new();
    for c in components
        .iter()
        .filter(|c| c.kind == "edge" || c.kind == "nginx")
    {
        // Socket i went to targets[i % n]: each nginx proxied its round-robin share.
        let nginx_share = c
            .addr
            .as_ref()
            .and_then(|a| targets.iter().position(|t| t == a))
            .map(|i| {
                let n = targets.len() as u64;
                total / n + u64::from((i as u64) < total % n)
            });
        if c.kind == "nginx" && nginx_share.is_none() {
            continue;
        }
        let (Some(b), Some(a)) = (before.rss_kib(&c.name), after.rss_kib(&c.name)) else {
            continue;
        };
        let conns = if c.kind == "edge" {
            per_edge.get(&c.name).copied().unwrap_or(0)
        } else {
            nginx_share.unwrap_or(0)
        };
        out.push(Memory {
            name: c.name.clone(),
            kind: c.kind.clone(),
            connections: conns,
            rss_before_mib: round1(b as f64 / 1024.0),
            rss_after_mib: round1(a as f64 / 1024.0),
            kib_per_connection: (conns > 0).then(|| round1((a as f64 - b as f64) / conns as f64)),
        });
    }
    out
}

/// `YYYY-MM-DD HH:MM UTC` of a Unix time.
pub fn utc(secs: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute] UTC"
            ))
            .ok()
        })
        .expect("a time in u64 seconds formats")
}

impl<T: Rows + Serialize> Report<T> {
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "### loadtest {} via {} — {}\n",
            self.scenario,
            self.via,
            utc(self.started_at_unix_s)
        );
        let _ = writeln!(s, "`{}`\n", self.command);
        let _ = writeln!(
            s,
            "load average {} at the start, {} at the end\n",
            self.load_average[0], self.load_average[1]
        );
        let _ = writeln!(s, "| metric | value |\n|---|---|");
        let a = &self.accounts;
        let _ = writeln!(
            s,
            "| accounts | {} ({} sessions reused, {} signed up, {} logged in) |",
            a.users, a.reused_sessions, a.signed_up, a.logged_in
        );
        let _ = writeln!(
            s,
            "| peak Kafka backlog (published − consumed) | {} |",
            crate::backlog::Peak::summary(&self.kafka_backlog_peak)
        );
        for (k, v) in self.result.rows() {
            let _ = writeln!(s, "| {k} | {v} |");
        }
        if !self.memory.is_empty() {
            let _ = writeln!(s, "\n| process | sockets | RSS before MiB | RSS after MiB | KiB per socket |\n|---|---:|---:|---:|---:|");
            for m in &self.memory {
                let per = m
                    .kib_per_connection
                    .map_or("–".into(), |k| format!("{k:.1}"));
                let _ = writeln!(
                    s,
                    "| {} | {} | {:.1} | {:.1} | {per} |",
                    m.name, m.connections, m.rss_before_mib, m.rss_after_mib
                );
            }
        }
        for (phase, usage) in &self.cpu {
            let _ = writeln!(
                s,
                "\n| CPU during {phase} | kind | % of one core | RSS MiB | of which JIT compiler |\n|---|---|---:|---:|---:|"
            );
            for u in usage {
                let jit = u.jit_pct.map_or("–".into(), |j| format!("{j:.1}"));
                let _ = writeln!(
                    s,
                    "| {} | {} | {:.1} | {:.1} | {jit} |",
                    u.name, u.kind, u.cpu_pct, u.rss_mib
                );
            }
        }
        s
    }

    /// Print the table; write `out` (JSON) and the Markdown beside it.
    pub fn emit(&self, out: Option<&Path>) -> crate::Result<()> {
        println!("\n{}", self.markdown());
        if let Some(p) = out {
            let json = serde_json::to_string_pretty(self).expect("report serialises");
            std::fs::write(p, json + "\n")
                .map_err(|e| crate::Error::Setup(format!("writing {}: {e}", p.display())))?;
            std::fs::write(p.with_extension("md"), self.markdown()).map_err(|e| {
                crate::Error::Setup(format!("writing {}: {e}", p.with_extension("md").display()))
            })?;
        }
        Ok(())
    }
}

/// `a=1 b=2` style map for table cells.
pub fn kv<V: std::fmt::Display>(m: &BTreeMap<String, V>) -> String {
    if m.is_empty() {
        return "none".into();
    }
    m.iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `p50 / p90 / p99 / p99.9 / max` in ms.
pub fn pct(p: &crate::hist::Percentiles) -> String {
    if p.count == 0 {
        return "–".into();
    }
    format!(
        "{:.1} / {:.1} / {:.1} / {:.1} / {:.1} ms (n={})",
        p.p50_ms, p.p90_ms, p.p99_ms, p.p999_ms, p.max_ms, p.count
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    struct R;
    impl Rows for R {
        fn rows(&self) -> Vec<(String, String)> {
            vec![("held".into(), "5".into())]
        }
    }
    impl Serialize for R {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_u8(5)
        }
    }

    #[test]
    fn nginx_memory_counts_its_round_robin_share() {
        let me = std::process::id();
        let comp = |name: &str, kind: &str, addr: &str| Component {
            name: name.into(),
            kind: kind.into(),
            pid: me,
            addr: Some(addr.into()),
            metrics_addr: None,
        };
        let comps = vec![
            comp("nginx-0", "nginx", "a:1"),
            comp("nginx-1", "nginx", "a:2"),
            comp("edge-0", "edge", "e:1"),
        ];
        let s = crate::procs::sample(&comps);
        let targets = vec!["a:1".to_string(), "a:2".to_string()];
        let per_edge: BTreeMap<String, u64> = [("edge-0".to_string(), 5)].into();
        let m = memory(&comps, &s, &s, &per_edge, 5, &targets);
        let conns: Vec<(String, u64)> = m.iter().map(|m| (m.name.clone(), m.connections)).collect();
        assert_eq!(
            conns,
            vec![
                ("nginx-0".into(), 3),
                ("nginx-1".into(), 2),
                ("edge-0".into(), 5)
            ]
        );
        assert_eq!(m[0].kib_per_connection, Some(0.0));
        // Direct to the edges: nginx carried nothing and is left out.
        let m = memory(&comps, &s, &s, &per_edge, 5, &["e:1".to_string()]);
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn dates_and_tables() {
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc(1_700_000_000), "2023-11-14 22:13 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00 UTC");
        let r = Report {
            scenario: "x".into(),
            command: "loadtest x".into(),
            started_at_unix_s: 0,
            via: "nginx".into(),
            accounts: AccountStats::default(),
            result: R,
            memory: vec![Memory {
                name: "edge-0".into(),
                kind: "edge".into(),
                connections: 2,
                kib_per_connection: Some(7.5),
                ..Default::default()
            }],
            kafka_backlog_peak: BTreeMap::new(),
            load_average: ["1 1 1".into(), "2 2 2".into()],
            cpu: [(
                "run".to_string(),
                vec![
                    Usage {
                        name: "edge-0".into(),
                        kind: "edge".into(),
                        cpu_pct: 50.0,
                        rss_mib: 1.0,
                        jit_pct: None,
                    },
                    Usage {
                        name: "kafka-0".into(),
                        kind: "kafka".into(),
                        cpu_pct: 40.0,
                        rss_mib: 500.0,
                        jit_pct: Some(12.5),
                    },
                ],
            )]
            .into(),
        };
        let md = r.markdown();
        assert!(md.contains("| held | 5 |"), "{md}");
        assert!(md.contains("| edge-0 | 2 | 0.0 | 0.0 | 7.5 |"), "{md}");
        assert!(md.contains("| edge-0 | edge | 50.0 | 1.0 | – |"), "{md}");
        assert!(
            md.contains("| kafka-0 | kafka | 40.0 | 500.0 | 12.5 |"),
            "{md}"
        );
        let dir = std::env::temp_dir().join(format!("lt-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        r.emit(Some(&dir.join("r.json"))).unwrap();
        assert!(std::fs::read_to_string(dir.join("r.md"))
            .unwrap()
            .contains("held"));
        assert!(std::fs::read_to_string(dir.join("r.json"))
            .unwrap()
            .contains("\"result\": 5"));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(kv::<u64>(&BTreeMap::new()), "none");
        assert_eq!(kv(&[("a".to_string(), 1)].into()), "a: 1");
        assert_eq!(pct(&Default::default()), "–");
    }
}
