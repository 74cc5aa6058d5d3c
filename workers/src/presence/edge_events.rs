//! Edge events (started, heartbeat, connected, disconnected) written to the connection registry.

use crate::context::Deps;
use crate::Result;
use runtime::redis::redis::{self, AsyncCommands};
use runtime::registry::{conn_field, edge_value, pad, parse_edge_value};
use topics::{EdgeEvent, Id};

/// Add (`+1`) or remove (`-1`) one connection of a user on an edge process, atomically on the
/// edge's slot and idempotently: the connection is counted only when it enters or leaves the
/// process' member hash, so a redelivered event, or one retried after a failure half-way through
/// its other writes, changes nothing twice. The user is in the online set while the count is
/// positive. Returns the user's new count, or -1 when nothing changed.
const COUNT_SCRIPT: &str = r"
local changed
if ARGV[4] == '1' then
  changed = redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
else
  changed = redis.call('HDEL', KEYS[1], ARGV[1])
end
if changed == 0 then
  return -1
end
local n = redis.call('HINCRBY', KEYS[2], ARGV[2], ARGV[4])
if n <= 0 then
  redis.call('HDEL', KEYS[2], ARGV[2])
  redis.call('ZREM', KEYS[3], ARGV[3])
else
  redis.call('ZADD', KEYS[3], 0, ARGV[3])
end
return n
";

/// Count one connection in (`delta` 1) or out (-1) of its edge process' online set.
async fn count<C: redis::aio::ConnectionLike + Send>(
    d: &Deps,
    c: &mut C,
    edge: &str,
    conn: u64,
    user_id: Id,
    delta: i8,
) -> redis::RedisResult<()> {
    let r = &d.registry;
    let epoch = topics::bus::conn_epoch(conn);
    let _: i64 = redis::Script::new(COUNT_SCRIPT)
        .key(r.members_key(edge, epoch))
        .key(r.count_key(edge, epoch))
        .key(r.online_key(edge, epoch))
        .arg(conn)
        .arg(user_id.to_string())
        .arg(pad(user_id))
        .arg(delta)
        .invoke_async(c)
        .await?;
    Ok(())
}

/// Apply one edge event to the registry.
pub async fn apply_edge_event(d: &Deps, ev: EdgeEvent) -> Result<()> {
    let r = &d.registry;
    let mut c = d.redis.get().await?;
    match ev {
        EdgeEvent::Started { edge, epoch } => {
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
            // Every write is idempotent (a redelivered or retried event changes nothing twice)
            // and independent of the others, so the three go out at once on the multiplexed
            // connection: one round trip.
            let (mut a, mut b, mut k) = (c.clone(), c.clone(), c.clone());
            let field = conn_field(&edge, conn);
            let uid = user_id.to_string();
            let ((), (), ()) = futures::future::try_join3(
                a.hset(r.conns_key(user_id), &field, &session_id),
                b.hset(r.unames_key(), &uid, &username),
                count(d, &mut k, &edge, conn, user_id, 1),
            )
            .await?;
        }
        EdgeEvent::Disconnected {
            edge,
            conn,
            user_id,
        } => {
            let (mut a, mut k) = (c.clone(), c.clone());
            let field = conn_field(&edge, conn);
            let ((), ()) = futures::future::try_join(
                a.hdel(r.conns_key(user_id), &field),
                count(d, &mut k, &edge, conn, user_id, -1),
            )
            .await?;
        }
    }
    Ok(())
}
