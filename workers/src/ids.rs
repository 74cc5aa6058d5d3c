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

/// A node id leased in Redis, and the token that shows this process holds it: only the holder
/// renews or releases it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub node: u64,
    pub token: String,
}

/// How long a lease lasts unless renewed (every [`RENEW_EVERY`]).
const LEASE_MS: u64 = 60_000;
pub const RENEW_EVERY: std::time::Duration = std::time::Duration::from_secs(20);

/// Extend the lease if its key still holds this process's token; 1 when it did, 0 when not.
const RENEW_SCRIPT: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
    return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end";
/// Delete the lease if its key still holds this process's token.
const RELEASE_SCRIPT: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
    return redis.call('DEL', KEYS[1]) else return 0 end";

/// Lease a node id in Redis: the first free one from a random start. Leases last 60 s and are
/// renewed every [`RENEW_EVERY`] by [`renew_node`].
pub async fn lease_node(
    redis: &runtime::redis::Cluster,
    keys: &runtime::redis::Keys,
) -> crate::Result<Lease> {
    use rand::Rng;
    let mut con = redis.get().await?;
    let start = rand::rng().random_range(0..MAX_NODES);
    let token = format!(
        "{}:{:016x}",
        std::process::id(),
        rand::rng().random::<u64>()
    );
    for i in 0..MAX_NODES {
        let n = (start + i) % MAX_NODES;
        let ok: Option<String> = runtime::redis::redis::cmd("SET")
            .arg(keys.key(format!("node:{n}")))
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(LEASE_MS)
            .query_async(&mut con)
            .await?;
        if ok.is_some() {
            return Ok(Lease { node: n, token });
        }
    }
    Err(crate::Error::Config(
        "no free id node (1024 workers hold one)".into(),
    ))
}

/// Run one of the lease scripts on `lease`'s key: did the key still hold its token?
async fn on_lease(
    redis: &runtime::redis::Cluster,
    keys: &runtime::redis::Keys,
    lease: &Lease,
    script: &str,
) -> crate::Result<bool> {
    let mut con = redis.get().await?;
    let done: i64 = runtime::redis::redis::Script::new(script)
        .key(keys.key(format!("node:{}", lease.node)))
        .arg(&lease.token)
        .arg(LEASE_MS)
        .invoke_async(&mut con)
        .await?;
    Ok(done == 1)
}

/// Extend `lease` by 60 s; false when its key no longer holds this process's token (the lease
/// ran out and another process may have taken the node).
pub async fn renew(
    redis: &runtime::redis::Cluster,
    keys: &runtime::redis::Keys,
    lease: &Lease,
) -> crate::Result<bool> {
    on_lease(redis, keys, lease, RENEW_SCRIPT).await
}

/// Give `lease` back; false when its key no longer held this process's token (nothing deleted).
pub async fn release(
    redis: &runtime::redis::Cluster,
    keys: &runtime::redis::Keys,
    lease: &Lease,
) -> crate::Result<bool> {
    on_lease(redis, keys, lease, RELEASE_SCRIPT).await
}

/// Keep the node lease alive until `stop`, then release it. A lease found no longer held (this
/// process stalled past its 60 s and another may have taken the node) ends the worker: `stop` is
/// cancelled and the error returned, so that it stops minting ids on a node that may be another's
/// and starts again with a node of its own.
pub async fn renew_node(
    redis: runtime::redis::Cluster,
    keys: runtime::redis::Keys,
    lease: Lease,
    stop: tokio_util::sync::CancellationToken,
    every: std::time::Duration,
) -> crate::Result<()> {
    let node = lease.node;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
        match renew(&redis, &keys, &lease).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::error!(
                    node,
                    "id node lease lost (held by another process or expired); stopping"
                );
                stop.cancel();
                return Err(crate::Error::LeaseLost(node));
            }
            Err(e) => {
                tracing::warn!(error = %runtime::telemetry::Chain(&e), node, "id node lease not renewed")
            }
        }
    }
    let _ = release(&redis, &keys, &lease).await;
    Ok(())
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
