//! 64-bit, time-ordered ids unique across every worker process: 41 bits of milliseconds since
//! 2025-01-01, 10 bits of node id, 12 bits of sequence. Node ids are leased in Redis, so scaling
//! out needs no configuration.

use std::sync::Mutex;
use topics::Id;

pub const EPOCH_MS: u64 = 1_735_689_600_000;
pub const NODE_BITS: u32 = 10;
pub const SEQ_BITS: u32 = 12;
pub const MAX_NODES: u64 = 1 << NODE_BITS;

pub struct IdGen {
    node: u64,
    state: Mutex<(u64, u64)>,
}

impl IdGen {
    pub fn new(node: u64) -> Self {
        IdGen {
            node: node % MAX_NODES,
            state: Mutex::new((0, 0)),
        }
    }

    pub fn node(&self) -> u64 {
        self.node
    }

    /// The next id at `now_ms` (a clock that steps back keeps using the last millisecond).
    pub fn next_at(&self, now_ms: u64) -> Id {
        let mut st = self.state.lock().expect("idgen");
        let (mut last, mut seq) = *st;
        let now = now_ms.max(last);
        if now == last {
            seq += 1;
            if seq >= 1 << SEQ_BITS {
                // Sequence exhausted in this millisecond: borrow the next one.
                last += 1;
                seq = 0;
            }
        } else {
            last = now;
            seq = 0;
        }
        *st = (last, seq);
        Id(((last.saturating_sub(EPOCH_MS)) << (NODE_BITS + SEQ_BITS))
            | (self.node << SEQ_BITS)
            | seq)
    }

    pub fn next(&self) -> Id {
        self.next_at(runtime::now_ms())
    }
}

/// Lease a node id in Redis: the first free one from a random start. Leases last 60 s and are
/// renewed every 20 s by [`renew_node`].
pub async fn lease_node(
    redis: &runtime::redis::Cluster,
    keys: &runtime::redis::Keys,
) -> crate::Result<u64> {
    use rand::Rng;
    let mut con = redis.get().await?;
    let start = rand::rng().random_range(0..MAX_NODES);
    for i in 0..MAX_NODES {
        let n = (start + i) % MAX_NODES;
        let ok: Option<String> = runtime::redis::redis::cmd("SET")
            .arg(keys.key(format!("node:{n}")))
            .arg(std::process::id())
            .arg("NX")
            .arg("PX")
            .arg(60_000)
            .query_async(&mut con)
            .await?;
        if ok.is_some() {
            return Ok(n);
        }
    }
    Err(crate::Error::Config(
        "no free id node (1024 workers hold one)".into(),
    ))
}

/// Keep the node lease alive until `stop`, then release it.
pub async fn renew_node(
    redis: runtime::redis::Cluster,
    keys: runtime::redis::Keys,
    node: u64,
    stop: tokio_util::sync::CancellationToken,
) {
    let key = keys.key(format!("node:{node}"));
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(std::time::Duration::from_secs(20)) => {}
        }
        let renewed: crate::Result<()> = async {
            let mut con = redis.get().await?;
            runtime::redis::redis::cmd("PEXPIRE")
                .arg(&key)
                .arg(60_000)
                .query_async::<()>(&mut con)
                .await?;
            Ok(())
        }
        .await;
        if let Err(e) = renewed {
            tracing::warn!(error = %runtime::telemetry::Chain(&e), node, "id node lease not renewed");
        }
    }
    if let Ok(mut con) = redis.get().await {
        let _: std::result::Result<(), _> = runtime::redis::redis::cmd("DEL")
            .arg(&key)
            .query_async(&mut con)
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ids_increase_and_carry_the_node() {
        let g = IdGen::new(5);
        let t = EPOCH_MS + 1000;
        let a = g.next_at(t);
        let b = g.next_at(t);
        let c = g.next_at(t - 10);
        assert!(a < b && b < c);
        assert_eq!((a.0 >> SEQ_BITS) & (MAX_NODES - 1), 5);
        assert_eq!(g.node(), 5);
        for _ in 0..5000 {
            g.next_at(t);
        }
        assert!(g.next_at(t) > c);
    }

    proptest! {
        #[test]
        fn different_nodes_never_collide(n1 in 0u64..1024, n2 in 0u64..1024, t in EPOCH_MS..EPOCH_MS + (1 << 40)) {
            prop_assume!(n1 != n2);
            prop_assert_ne!(IdGen::new(n1).next_at(t), IdGen::new(n2).next_at(t));
        }
    }
}
