//! CPU time and resident memory of the platform's processes from /proc, so a report can say
//! which one saturates first. A component's figures include its child processes (nginx's
//! workers under the master `./sb` recorded). A JVM's (Kafka's) share spent in its JIT compiler
//! threads is reported apart: a broker compiles its hot code for minutes after it starts, and
//! that one-time cost is not what a message costs it.

use crate::stack::Component;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

/// (ppid, utime + stime in clock ticks) from the text of `/proc/<pid>/stat`.
pub fn parse_stat(text: &str) -> Option<(u32, u64)> {
    // The command name is in parentheses and may hold spaces: fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ppid = f.get(1)?.parse().ok()?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

/// Whether a thread (its `comm`, which Linux cuts at 15 bytes) is one of HotSpot's JIT compilers:
/// "C1 CompilerThread0", "C2 CompilerThread1", ….
pub fn is_jit_thread(comm: &str) -> bool {
    let comm = comm.trim_end();
    comm.starts_with("C1 Compiler") || comm.starts_with("C2 Compiler")
}

/// CPU ticks of `pid`'s JIT compiler threads (0 for a process that has none).
fn jit_ticks(pid: u32) -> u64 {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    dir.flatten()
        .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| is_jit_thread(&c)))
        .filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok())
        .filter_map(|t| parse_stat(&t))
        .map(|(_, ticks)| ticks)
        .sum()
}

/// `VmRSS` in KiB from the text of `/proc/<pid>/status`.
pub fn parse_rss_kib(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

pub fn rss_kib(pid: u32) -> Option<u64> {
    parse_rss_kib(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

fn ticks_per_second() -> f64 {
    rustix::param::clock_ticks_per_second() as f64
}

/// Every live process: pid → (ppid, cpu ticks).
fn all_processes() -> HashMap<u32, (u32, u64)> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Some(st) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|t| parse_stat(&t))
        {
            out.insert(pid, st);
        }
    }
    out
}

/// `root` and its descendants.
fn tree(root: u32, all: &HashMap<u32, (u32, u64)>) -> Vec<u32> {
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        out.extend(all.iter().filter(|(_, (pp, _))| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    out
}

/// What one component used at one moment.
#[derive(Clone, Debug)]
struct Reading {
    kind: String,
    ticks: u64,
    /// Of `ticks`, those of JIT compiler threads.
    jit_ticks: u64,
    rss_kib: u64,
}

#[derive(Clone, Debug)]
pub struct Sample {
    at: Instant,
    per: BTreeMap<String, Reading>,
    /// Busy clock ticks of the whole machine (every process, every core), from /proc/stat.
    machine_busy: Option<u64>,
}

/// Busy ticks (all but idle and iowait) summed over cores, from the text of `/proc/stat`.
pub fn parse_machine_busy(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    Some(total - v.get(3)? - v.get(4).copied().unwrap_or(0))
}

/// A component's CPU (percent of one core) between two samples and its memory at the second.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub name: String,
    pub kind: String,
    pub cpu_pct: f64,
    pub rss_mib: f64,
    /// Of `cpu_pct`, what JIT compiler threads used (a JVM only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jit_pct: Option<f64>,
}

/// Read every component (and this load generator, as `loadtest`).
pub fn sample(components: &[Component]) -> Sample {
    let all = all_processes();
    let mut per = BTreeMap::new();
    let me = Component {
        name: "loadtest".into(),
        kind: "loadtest".into(),
        pid: std::process::id(),
        addr: None,
        metrics_addr: None,
    };
    for c in components.iter().chain(std::iter::once(&me)) {
        if !all.contains_key(&c.pid) {
            continue;
        }
        let pids = tree(c.pid, &all);
        let ticks = pids
            .iter()
            .filter_map(|p| all.get(p))
            .map(|(_, t)| *t)
            .sum();
        let rss_kib = pids.iter().filter_map(|p| rss_kib(*p)).sum();
        let jit_ticks = pids.iter().map(|p| jit_ticks(*p)).sum();
        per.insert(
            c.name.clone(),
            Reading {
                kind: c.kind.clone(),
                ticks,
                jit_ticks,
                rss_kib,
            },
        );
    }
    let machine_busy = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|t| parse_machine_busy(&t));
    Sample {
        at: Instant::now(),
        per,
        machine_busy,
    }
}

impl Sample {
    pub fn rss_kib(&self, name: &str) -> Option<u64> {
        self.per.get(name).map(|r| r.rss_kib)
    }
}

/// CPU used between `a` and `b`, busiest first.
pub fn usage(a: &Sample, b: &Sample) -> Vec<Usage> {
    let secs = b.at.duration_since(a.at).as_secs_f64().max(1e-3);
    let hz = ticks_per_second();
    let mut out: Vec<Usage> = b
        .per
        .iter()
        .map(|(name, r)| {
            let pct = |now: u64, before: u64| {
                let cpu = now.saturating_sub(before) as f64 / hz / secs * 100.0;
                (cpu * 10.0).round() / 10.0
            };
            let (before, jit_before) = a
                .per
                .get(name)
                .map_or((r.ticks, r.jit_ticks), |x| (x.ticks, x.jit_ticks));
            Usage {
                name: name.clone(),
                kind: r.kind.clone(),
                cpu_pct: pct(r.ticks, before),
                rss_mib: (r.rss_kib as f64 / 1024.0 * 10.0).round() / 10.0,
                jit_pct: (r.jit_ticks > 0).then(|| pct(r.jit_ticks, jit_before)),
            }
        })
        .collect();
    out.sort_by(|x, y| y.cpu_pct.total_cmp(&x.cpu_pct).then(x.name.cmp(&y.name)));
    if let (Some(x), Some(y)) = (a.machine_busy, b.machine_busy) {
        // Everything that ran, other tenants of the machine included (200 = two cores busy).
        let cpu = y.saturating_sub(x) as f64 / hz / secs * 100.0;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        out.insert(
            0,
            Usage {
                name: format!("whole machine ({cores} cores)"),
                kind: "machine".into(),
                cpu_pct: (cpu * 10.0).round() / 10.0,
                rss_mib: 0.0,
                jit_pct: None,
            },
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let stat = "1234 (tokio (rt) x) S 77 1 1 0 -1 4194560 1 0 0 0 150 25 0 0 20 0 4 0 1 2 3";
        assert_eq!(parse_stat(stat), Some((77, 175)));
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_rss_kib("Name:\tx\nVmRSS:\t  12345 kB\n"), Some(12345));
        assert_eq!(parse_rss_kib("Name:\tx\n"), None);
        assert_eq!(
            parse_machine_busy("cpu  10 1 5 100 7 1 1 0 0 0\ncpu0 1 1 1 1 1 1 1 1\n"),
            Some(18)
        );
        assert_eq!(parse_machine_busy("intr 5\n"), None);
    }

    #[test]
    fn knows_hotspots_compiler_threads_by_name() {
        assert!(is_jit_thread("C2 CompilerThre\n"));
        assert!(is_jit_thread("C1 CompilerThre"));
        assert!(!is_jit_thread("data-plane-kafk"));
        assert!(!is_jit_thread("GC Thread#0"));
        assert!(!is_jit_thread("tokio-rt-worker"));
        // this test's process runs no JVM
        assert_eq!(jit_ticks(std::process::id()), 0);
    }

    #[test]
    fn samples_this_process_and_its_children() {
        let me = std::process::id();
        let c = vec![Component {
            name: "self".into(),
            kind: "test".into(),
            pid: me,
            addr: None,
            metrics_addr: None,
        }];
        let a = sample(&c);
        let mut x = 0u64;
        for i in 0..3_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        let b = sample(&c);
        assert!(b.rss_kib("self").unwrap() > 0);
        let u = usage(&a, &b);
        assert!(u.iter().any(|u| u.name == "self" && u.rss_mib > 0.0));
        assert!(u.iter().any(|u| u.name == "loadtest"));
        assert_eq!(u[0].kind, "machine");
        assert!(u.iter().all(|u| u.jit_pct.is_none()), "no JVM here: {u:?}");
        assert!(sample(&[Component {
            name: "gone".into(),
            kind: "x".into(),
            pid: u32::MAX,
            addr: None,
            metrics_addr: None,
        }])
        .rss_kib("gone")
        .is_none());
    }
}
