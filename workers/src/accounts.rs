//! "Does this account still exist?", asked many times at once and answered with one query per
//! shard. Every bearer token (each WebSocket handshake, each HTTP call) needs the answer from the
//! primary, so a burst of handshakes used to cost one query each. Here the checks of one shard
//! queue up while that shard's query runs, and the next query answers every one of them
//! (`WHERE id IN (…)`): group commit, for reads. Alone, a check costs one query and waits for
//! nothing; under load the queries grow in size, not in number.

use crate::db::{Shard, Shards};
use crate::{Error, Result};
use mysql_async::prelude::*;
use runtime::metrics::{Counter, Metrics};
use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;
use topics::Id;

/// At most this many ids in one query; more waiting checks take several rounds.
pub const MAX_IDS_PER_QUERY: usize = 512;

/// The checks of every shard.
pub struct AccountChecks {
    db: Shards,
    shards: Vec<Arc<Queue>>,
    checks: Counter,
    queries: Counter,
}

/// One shard's waiting checks.
struct Queue {
    shard: Shard,
    state: Mutex<State>,
    queries: Counter,
}

/// Why a round of checks failed, for each check it answered.
#[derive(Clone, Debug)]
enum Failed {
    /// The shard is known down ([`Error::ShardDown`]): the requests are answered `unavailable`.
    Down { shard: usize, tried: bool },
    /// Anything else: retried with their records.
    Other(String),
}

impl From<Error> for Failed {
    fn from(e: Error) -> Self {
        match e {
            Error::ShardDown { shard, tried } => Failed::Down { shard, tried },
            e => Failed::Other(runtime::telemetry::Chain(&e).to_string()),
        }
    }
}

impl From<Failed> for Error {
    fn from(f: Failed) -> Self {
        match f {
            Failed::Down { shard, tried } => Error::ShardDown { shard, tried },
            Failed::Other(why) => Error::AccountCheck(why),
        }
    }
}

#[derive(Default)]
struct State {
    /// A task is answering this queue; a new check just waits for it.
    running: bool,
    waiting: Vec<(u64, oneshot::Sender<Result<bool, Failed>>)>,
}

impl AccountChecks {
    /// Counted in `metrics` as `sb_account_checks_total` and `sb_account_check_queries_total`.
    pub fn new(db: &Shards, metrics: &Metrics) -> Self {
        let queries = metrics.account_check_queries.clone();
        AccountChecks {
            db: db.clone(),
            shards: db
                .all()
                .iter()
                .map(|s| {
                    Arc::new(Queue {
                        shard: s.clone(),
                        state: Mutex::default(),
                        queries: queries.clone(),
                    })
                })
                .collect(),
            checks: metrics.account_checks.clone(),
            queries,
        }
    }

    /// Is `user` an account that is not deleted? Read from the primary of its shard, under its
    /// breaker ([`Shard::on_primary`]). A failed query fails every check it was answering:
    /// [`Error::ShardDown`] when the shard is known down (answered `unavailable`), otherwise
    /// [`Error::AccountCheck`] (transient: retried with their records).
    pub async fn exists(&self, user: Id) -> Result<bool> {
        let queue = &self.shards[self.db.by_id(user).index];
        self.checks.inc();
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut s = queue.lock();
            s.waiting.push((user.0, tx));
            !std::mem::replace(&mut s.running, true)
        };
        if start {
            // Not tracked in a `JoinSet` (the house style's default): the task owns nothing but
            // this queue's turn, ends as soon as no check waits, and hands its results to the
            // waiting checks themselves; at shutdown it is dropped with them.
            tokio::spawn(queue.clone().answer());
        }
        match rx.await {
            Ok(answer) => answer.map_err(Error::from),
            Err(_) => Err(Error::AccountCheck("the check was dropped".into())),
        }
    }

    /// Queries run so far, over every shard.
    pub fn queries(&self) -> i64 {
        self.queries.get() as i64
    }
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Answer waiting checks, a query at a time, until none waits.
    async fn answer(self: Arc<Self>) {
        let _guard = Running(&self);
        loop {
            let round: Vec<_> = {
                let mut s = self.lock();
                if s.waiting.is_empty() {
                    s.running = false;
                    return;
                }
                let n = s.waiting.len().min(MAX_IDS_PER_QUERY);
                s.waiting.drain(..n).collect()
            };
            let ids: BTreeSet<u64> = round.iter().map(|(id, _)| *id).collect();
            self.queries.inc();
            let live = self.live(&ids).await.map_err(Failed::from);
            for (id, tx) in round {
                // A caller that went away no longer needs its answer.
                let _ = tx.send(live.as_ref().map(|l| l.contains(&id)).map_err(Clone::clone));
            }
        }
    }

    /// Which of `ids` are accounts that are not deleted. The ids are integers written into the
    /// statement (text protocol): a prepared statement per list length would churn the
    /// statement cache.
    async fn live(&self, ids: &BTreeSet<u64>) -> Result<HashSet<u64>> {
        let list = ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
        let sql = format!("SELECT id FROM users WHERE id IN ({list}) AND deleted_at_ms IS NULL");
        let found: Vec<u64> = self
            .shard
            .on_primary(async |c| Ok(c.query(sql).await?))
            .await?;
        Ok(found.into_iter().collect())
    }
}

/// If answering panics, the queue must not stay "running" with nobody answering: its waiting
/// checks fail (their senders are dropped) and the next check starts a new task.
struct Running<'a>(&'a Queue);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut s = self.0.lock();
            s.running = false;
            s.waiting.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_on_a_shard_known_down_fails_each_of_its_checks_as_shard_down() {
        let down = Failed::from(Error::ShardDown {
            shard: 1,
            tried: true,
        });
        for _ in 0..2 {
            assert!(matches!(
                Error::from(down.clone()),
                Error::ShardDown {
                    shard: 1,
                    tried: true
                }
            ));
        }
        // anything else is an account check failure, retried
        let other = Failed::from(Error::ShardTimeout(0));
        assert!(
            matches!(Error::from(other), Error::AccountCheck(ref why) if why.contains("shard 0")),
        );
    }

    /// A task that panics while answering (a bug) must not leave its queue "running" with
    /// nobody answering: the checks it held fail with a typed error instead of waiting forever,
    /// and the queue is free for the next check to start a new task.
    #[tokio::test]
    async fn a_panicking_answer_fails_its_waiting_checks_and_frees_the_queue() {
        let s = crate::DatabaseSettings {
            shards: vec![crate::settings::ShardSettings {
                primary: "127.0.0.1:1".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let db = Shards::connect(&s).unwrap();
        let metrics = Metrics::new(runtime::metrics::Role::Worker(crate::Role::Auth));
        let checks = AccountChecks::new(&db, &metrics);
        let queue = checks.shards[0].clone();
        // a task is (said to be) answering: a new check only queues
        queue.lock().running = true;
        let check = tokio::spawn(async move { checks.exists(Id(7)).await });
        while queue.lock().waiting.is_empty() {
            tokio::task::yield_now().await;
        }
        let answered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _guard = Running(&queue);
            panic!("answering failed");
        }));
        assert!(answered.is_err());
        // without the guard the check would wait for good
        let waited = tokio::time::timeout(std::time::Duration::from_secs(5), check).await;
        let e = waited
            .expect("the check was answered")
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(&e, Error::AccountCheck(why) if why.contains("dropped")),
            "{e}"
        );
        let s = queue.lock();
        assert!(!s.running && s.waiting.is_empty());
    }
}
