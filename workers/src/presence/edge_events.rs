//! Edge events (started, heartbeat, connected, disconnected, abandoned, present) written to the
//! connection registry, and [`register`], which the handshake check (`session.verify`,
//! worker-auth) calls so that a connection is in the registry before its edge answers the upgrade.

use crate::context::Deps;
use crate::Result;
use runtime::redis::redis::{self, AsyncCommands};
use runtime::registry::{conn_field, edge_value, parse_edge_value};
use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;
use topics::{EdgeEvent, Id};

/// How long the registry remembers a handshake its edge gave up on (`abandoned`): a verification
/// still in flight for it is refused registration for this long. A verification older than
/// [`VERIFY_MAX_AGE_MS`] is refused by its age instead, so the two cover every delay.
pub const ABANDONED_TTL_S: u64 = 600;

/// A handshake check that waited this long in Kafka is refused: its edge stopped waiting long ago
/// (the edge's `request_timeout_ms` is seconds), and an `abandoned` marker for it may have expired.
pub const VERIFY_MAX_AGE_MS: u64 = ABANDONED_TTL_S * 1000 / 2;

/// Count one connection of a user in (`ARGV[3]` = 1) or out (-1) of its edge process' member
/// hash, atomically on the edge's slot and idempotently: the connection is counted only when it
/// enters or leaves the member hash, so a redelivered event, or one retried after a failure half
/// way through its other writes, changes nothing twice. The user is in the online set (ids
/// zero-padded to `ARGV[5]` digits, [`runtime::registry::ID_WIDTH`]) while the count is positive.
///
/// `KEYS[4]` marks an abandoned handshake: a connection is never counted in while it is set, and
/// `ARGV[3]` = 0 (abandon) sets it for `ARGV[4]` seconds and counts the connection out if it was
/// in, whoever its user. Returns the user's new count, -1 when nothing changed, -2 when an
/// abandoned connection was refused; an abandon returns the user id it counted out, or "".
static COUNT_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local user = ARGV[2]
local delta = tonumber(ARGV[3])
local changed
if delta == 1 then
  if redis.call('EXISTS', KEYS[4]) == 1 then
    return -2
  end
  changed = redis.call('HSETNX', KEYS[1], ARGV[1], user)
elseif delta == 0 then
  redis.call('SET', KEYS[4], '1', 'EX', ARGV[4])
  user = redis.call('HGET', KEYS[1], ARGV[1])
  if not user then
    return ''
  end
  changed = redis.call('HDEL', KEYS[1], ARGV[1])
else
  changed = redis.call('HDEL', KEYS[1], ARGV[1])
end
if changed == 0 then
  return -1
end
local n = redis.call('HINCRBY', KEYS[2], user, delta == 1 and 1 or -1)
local padded = string.rep('0', tonumber(ARGV[5]) - string.len(user)) .. user
if n <= 0 then
  redis.call('HDEL', KEYS[2], user)
  redis.call('ZREM', KEYS[3], padded)
else
  redis.call('ZADD', KEYS[3], 0, padded)
end
if delta == 0 then
  return user
end
return n
",
    )
});

/// The count script for one connection: `delta` 1 (in), -1 (out) or 0 (abandoned, user unknown).
fn count_script(
    d: &Deps,
    edge: &str,
    conn: u64,
    user_id: Option<Id>,
    delta: i8,
) -> redis::ScriptInvocation<'static> {
    let r = &d.registry;
    let epoch = topics::bus::conn_epoch(conn);
    let mut s = COUNT_SCRIPT.prepare_invoke();
    s.key(r.members_key(edge, epoch))
        .key(r.count_key(edge, epoch))
        .key(r.online_key(edge, epoch))
        .key(r.abandoned_key(edge, conn))
        .arg(conn)
        .arg(user_id.map(|u| u.to_string()).unwrap_or_default())
        .arg(delta)
        .arg(ABANDONED_TTL_S)
        .arg(runtime::registry::ID_WIDTH);
    s
}

/// Put one connection in the registry: the user's connection list, the username, and the count
/// on its edge process. Idempotent. Returns false, with nothing left behind, when its edge has
/// abandoned the handshake.
///
/// The user's list is written before the count and taken back when the count refuses: an
/// `abandoned` event counts the connection out and then removes it from the list, so whichever
/// of the two runs first, no entry outlives both.
pub async fn register(
    d: &Deps,
    edge: &str,
    conn: u64,
    user_id: Id,
    username: &str,
    session_id: &str,
) -> Result<bool> {
    let r = &d.registry;
    let c = d.redis.get().await?;
    let (mut a, mut b, mut k) = (c.clone(), c.clone(), c);
    let field = conn_field(edge, conn);
    let uid = user_id.to_string();
    // Idempotent and independent: both at once on the multiplexed connection.
    let ((), ()) = futures::future::try_join(
        a.hset(r.conns_key(user_id), &field, session_id),
        b.hset(r.unames_key(), &uid, username),
    )
    .await?;
    let n: i64 = count_script(d, edge, conn, Some(user_id), 1)
        .invoke_async(&mut k)
        .await?;
    if n == -2 {
        let _: () = a.hdel(r.conns_key(user_id), &field).await?;
        return Ok(false);
    }
    Ok(true)
}

/// Take one connection out of the registry (idempotent).
async fn unregister(d: &Deps, edge: &str, conn: u64, user_id: Id) -> Result<()> {
    let r = &d.registry;
    let mut c = d.redis.get().await?;
    let _: i64 = count_script(d, edge, conn, Some(user_id), -1)
        .invoke_async(&mut c)
        .await?;
    let _: () = c.hdel(r.conns_key(user_id), conn_field(edge, conn)).await?;
    Ok(())
}

/// A handshake its edge gave up on before learning the user: mark it so that a verification
/// still in flight cannot register it, and take it out if one already did.
async fn abandon(d: &Deps, edge: &str, conn: u64) -> Result<()> {
    let r = &d.registry;
    let mut c = d.redis.get().await?;
    let user: String = count_script(d, edge, conn, None, 0)
        .invoke_async(&mut c)
        .await?;
    if let Ok(u) = user.parse::<u64>() {
        let _: () = c.hdel(r.conns_key(Id(u)), conn_field(edge, conn)).await?;
    }
    Ok(())
}

/// Apply one edge event to the registry.
pub async fn apply_edge_event(d: &Deps, ev: EdgeEvent) -> Result<()> {
    let r = &d.registry;
    match ev {
        EdgeEvent::Started { edge, epoch } => {
            let mut c = d.redis.get().await?;
            let prev: Option<String> = c.hget(r.edges_key(), &edge).await?;
            let prev_epoch = prev.as_deref().and_then(parse_edge_value).map(|(e, _)| e);
            if let Some(old) = prev_epoch.filter(|&e| e != epoch) {
                // A new process took this edge id: the old one's connections are gone. Only the
                // old epoch's sets: the new process' connections may already be registered.
                let _: () = c
                    .del(&[
                        r.online_key(&edge, old),
                        r.count_key(&edge, old),
                        r.members_key(&edge, old),
                    ])
                    .await?;
            }
            let _: () = c
                .hset(r.edges_key(), &edge, edge_value(epoch, runtime::now_ms()))
                .await?;
        }
        EdgeEvent::Heartbeat { edge, epoch, .. } => {
            let mut c = d.redis.get().await?;
            let _: () = c
                .hset(r.edges_key(), &edge, edge_value(epoch, runtime::now_ms()))
                .await?;
        }
        EdgeEvent::Connected {
            edge,
            conn,
            user_id,
            username,
            session_id,
        } => {
            // Sent by edges older than the handshake's own registration (a rolling upgrade).
            register(d, &edge, conn, user_id, &username, &session_id).await?;
        }
        EdgeEvent::Disconnected {
            edge,
            conn,
            user_id,
        } => unregister(d, &edge, conn, user_id).await?,
        EdgeEvent::Abandoned { edge, conn } => abandon(d, &edge, conn).await?,
        EdgeEvent::Present {
            edge,
            epoch,
            from,
            below,
            conns,
        } => {
            let gone = sweep(d, &edge, epoch, from..below, &conns).await?;
            if gone > 0 {
                tracing::info!(%edge, gone, "registry entries of closed connections removed");
            }
        }
    }
    Ok(())
}

/// The connections of `edge`'s process `epoch` counted in the registry with an id in `range`
/// that `open` does not list: gone without their `disconnected` reaching the registry.
pub fn stale_in(
    members: &HashMap<String, String>,
    range: &std::ops::Range<u64>,
    open: &HashSet<u64>,
) -> Vec<(u64, Id)> {
    members
        .iter()
        .filter_map(|(conn, user)| Some((conn.parse::<u64>().ok()?, Id(user.parse().ok()?))))
        .filter(|(conn, _)| range.contains(conn) && !open.contains(conn))
        .collect()
}

/// Take out of the registry the connections of `edge`'s process `epoch` in `range` that are not
/// in `open` (a `present` event): each as its lost `disconnected` would have. Returns how many.
async fn sweep(
    d: &Deps,
    edge: &str,
    epoch: u64,
    range: std::ops::Range<u64>,
    open: &[u64],
) -> Result<usize> {
    let mut c = d.redis.get().await?;
    let members: HashMap<String, String> = c.hgetall(d.registry.members_key(edge, epoch)).await?;
    let open: HashSet<u64> = open.iter().copied().collect();
    let gone = stale_in(&members, &range, &open);
    for (conn, user) in &gone {
        unregister(d, edge, *conn, *user).await?;
    }
    Ok(gone.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_connections_are_those_in_range_that_the_edge_does_not_list() {
        let members: HashMap<String, String> = [
            ("10", "1"), // below the range: another event's
            ("20", "2"), // listed: open
            ("21", "2"), // not listed: gone
            ("29", "3"), // not listed: gone
            ("30", "4"), // at `below`: may still be in its handshake
            ("x", "5"),  // unreadable fields are left alone
            ("22", "y"),
        ]
        .into_iter()
        .map(|(c, u)| (c.to_string(), u.to_string()))
        .collect();
        let open: HashSet<u64> = [20, 25].into();
        let mut gone = stale_in(&members, &(20..30), &open);
        gone.sort();
        assert_eq!(gone, vec![(21, Id(2)), (29, Id(3))]);
        assert!(stale_in(&members, &(20..30), &[20, 21, 29].into()).is_empty());
    }
}
