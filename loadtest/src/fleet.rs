//! Holders of sockets: a task in this process, or — past what one process may hold (20,000
//! open files here) — child processes running this binary's hidden `child` subcommand.
//!
//! Parent → child (stdin): one JSON line with the [`HoldPlan`], then `stop`. EOF also stops the
//! child, so a killed parent never leaves children behind.
//! Child → parent (stdout): `{"snapshot":…}` lines four times a second, then `{"outcome":…}`.

use crate::conns::{hold, merge, HoldOutcome, HoldPlan, Live, Snapshot};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::ops::Range;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ChildLine {
    Snapshot(Snapshot),
    Outcome(Box<HoldOutcome>),
}

pub enum Holder {
    Local {
        live: Arc<Live>,
        stop: CancellationToken,
        task: JoinHandle<HoldOutcome>,
    },
    Child(Box<ChildProc>),
}

pub struct ChildProc {
    snap: Arc<Mutex<Snapshot>>,
    stdin: Option<ChildStdin>,
    child: Child,
    reader: JoinHandle<Option<HoldOutcome>>,
}

/// `range` cut into `n` contiguous parts, as even as possible.
pub fn split(range: Range<usize>, n: usize) -> Vec<Range<usize>> {
    let n = n.max(1);
    let len = range.len();
    (0..n)
        .map(|k| range.start + len * k / n..range.start + len * (k + 1) / n)
        .filter(|r| !r.is_empty() || n == 1)
        .collect()
}

/// The part of `plan` for sockets `part`: its range, its users' tokens, its share of the rate
/// and of the handshakes in flight.
fn sub_plan(plan: &HoldPlan, part: Range<usize>, parts: usize) -> HoldPlan {
    let per_user = plan.per_user.max(1);
    let first_user = part.start / per_user;
    let last_user = part.end.saturating_sub(1) / per_user;
    let lo = first_user - plan.user_base;
    let hi = (last_user - plan.user_base + 1).min(plan.tokens.len());
    HoldPlan {
        range: part,
        user_base: first_user,
        tokens: plan.tokens[lo..hi.max(lo)].to_vec(),
        connect_rate: plan.connect_rate / parts as f64,
        concurrency: plan.concurrency.div_ceil(parts).max(1),
        ..plan.clone()
    }
}

/// Start `processes` holders for `plan` (one local task when `processes` is 1).
pub async fn start(plan: &HoldPlan, processes: usize, exe: Option<PathBuf>) -> Result<Vec<Holder>> {
    if processes <= 1 {
        let live = Arc::new(Live::default());
        let stop = CancellationToken::new();
        let task = tokio::spawn(hold(plan.clone(), live.clone(), stop.clone()));
        return Ok(vec![Holder::Local { live, stop, task }]);
    }
    let exe = match exe {
        Some(e) => e,
        None => {
            std::env::current_exe().map_err(|e| Error::Setup(format!("own executable: {e}")))?
        }
    };
    let parts = split(plan.range.clone(), processes);
    let n = parts.len();
    let mut out = Vec::new();
    for part in parts {
        let sub = sub_plan(plan, part, n);
        let mut child = Command::new(&exe)
            .arg("child")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Error::Setup(format!("starting {}: {e}", exe.display())))?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        let line = serde_json::to_string(&sub).expect("plan serialises") + "\n";
        stdin
            .write_all(line.as_bytes())
            .await
            .map_err(|e| Error::Setup(format!("child stdin: {e}")))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let snap = Arc::new(Mutex::new(Snapshot::default()));
        let s2 = snap.clone();
        let reader = tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                match serde_json::from_str::<ChildLine>(&l) {
                    Ok(ChildLine::Snapshot(s)) => *s2.lock().expect("not poisoned") = s,
                    Ok(ChildLine::Outcome(o)) => return Some(*o),
                    Err(_) => eprintln!("child: {l}"),
                }
            }
            None
        });
        out.push(Holder::Child(Box::new(ChildProc {
            snap,
            stdin: Some(stdin),
            child,
            reader,
        })));
    }
    Ok(out)
}

impl Holder {
    pub fn snapshot(&self) -> Snapshot {
        match self {
            Holder::Local { live, .. } => live.snapshot(),
            Holder::Child(c) => c.snap.lock().expect("not poisoned").clone(),
        }
    }

    /// Close every socket and wait for the report.
    pub async fn finish(self) -> HoldOutcome {
        match self {
            Holder::Local { stop, task, live } => {
                stop.cancel();
                task.await.unwrap_or_else(|_| HoldOutcome {
                    snapshot: live.snapshot(),
                    ..Default::default()
                })
            }
            Holder::Child(c) => {
                let ChildProc {
                    snap,
                    mut stdin,
                    mut child,
                    reader,
                } = *c;
                if let Some(mut s) = stdin.take() {
                    let _ = s.write_all(b"stop\n").await;
                    drop(s);
                }
                let outcome = tokio::time::timeout(Duration::from_secs(60), reader).await;
                let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                let _ = child.start_kill();
                match outcome {
                    Ok(Ok(Some(o))) => o,
                    _ => {
                        let mut o = HoldOutcome {
                            snapshot: snap.lock().expect("not poisoned").clone(),
                            ..Default::default()
                        };
                        o.failures.insert("child_process_lost".into(), 1);
                        o
                    }
                }
            }
        }
    }
}

/// All holders' counters summed.
pub fn total(holders: &[Holder]) -> Snapshot {
    let outs: Vec<HoldOutcome> = holders
        .iter()
        .map(|h| HoldOutcome {
            snapshot: h.snapshot(),
            ..Default::default()
        })
        .collect();
    merge(&outs).snapshot
}

pub async fn finish_all(holders: Vec<Holder>) -> HoldOutcome {
    let outs = futures::future::join_all(holders.into_iter().map(Holder::finish)).await;
    merge(&outs)
}

/// The hidden `child` subcommand: read the plan, hold the sockets, report on stdout.
pub async fn run_child() -> Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let first = lines
        .next_line()
        .await
        .map_err(|e| Error::Setup(format!("reading the plan: {e}")))?
        .ok_or_else(|| Error::Setup("no plan on stdin".into()))?;
    let plan: HoldPlan =
        serde_json::from_str(&first).map_err(|e| Error::Setup(format!("bad plan: {e}")))?;
    let live = Arc::new(Live::default());
    let stop = CancellationToken::new();
    let task = tokio::spawn(hold(plan, live.clone(), stop.clone()));
    let s2 = stop.clone();
    tokio::spawn(async move {
        // `stop` or EOF (the parent went away) ends the run.
        loop {
            match lines.next_line().await {
                Ok(Some(l)) if l.trim() != "stop" => continue,
                _ => break,
            }
        }
        s2.cancel();
    });
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let print = |l: &ChildLine| println!("{}", serde_json::to_string(l).expect("line serialises"));
    tokio::pin!(task);
    let outcome = loop {
        tokio::select! {
            _ = tick.tick() => print(&ChildLine::Snapshot(live.snapshot())),
            o = &mut task => break o.map_err(|e| Error::Setup(format!("holder failed: {e}")))?,
        }
    };
    print(&ChildLine::Outcome(Box::new(outcome)));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_evenly() {
        assert_eq!(split(0..10, 3), vec![0..3, 3..6, 6..10]);
        assert_eq!(split(5..7, 4), vec![5..6, 6..7]);
        assert_eq!(split(0..0, 1), vec![0..0]);
    }

    #[test]
    fn sub_plans_carry_their_users_tokens() {
        let plan = HoldPlan {
            targets: vec!["x".into()],
            range: 0..10,
            per_user: 3,
            user_base: 0,
            tokens: (0..4).map(|i| format!("t{i}")).collect(),
            source_addrs: 0,
            concurrency: 1,
            connect_rate: 10.0,
            connect_timeout_ms: 1,
            broadcast_run: None,
        };
        let s = sub_plan(&plan, 4..8, 2);
        assert_eq!(
            (s.user_base, s.tokens.clone()),
            (1, vec!["t1".to_string(), "t2".to_string()])
        );
        assert_eq!((s.connect_rate, s.concurrency), (5.0, 1));
        for i in s.range.clone() {
            assert_eq!(s.tokens[i / 3 - s.user_base], plan.tokens[i / 3]);
        }
    }
}
