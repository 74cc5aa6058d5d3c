//! Presence: the connection registry written from edge events, the online list (paginated with
//! a cursor over every live edge), and broadcasts to everyone.

use crate::context::{Ctx, Deps, Outcome};
use crate::{refuse, sessions, Result};
use runtime::redis::redis::{self, AsyncCommands};
use runtime::registry::{conn_field, edge_value, pad, parse_edge_value};
use std::collections::BTreeSet;
use topics::frames::OnlineUser;
use topics::{
    validate, Delivery, EdgeEvent, ErrorCode, Event, Id, Request, Response, ServerFrame, Target,
};

/// The presence domain's requests (edge events come through [`apply_edge_event`]).
pub async fn handle(ctx: &Ctx<'_>) -> crate::Result<Outcome> {
    match &ctx.env.request {
        Request::OnlineList { cursor, limit } => online(ctx, cursor.as_deref(), *limit).await,
        Request::BroadcastSend { text } => broadcast(ctx, text).await,
        other => Err(crate::Error::Unrouted(other.kind())),
    }
}

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

/// Merge per-edge pages (each sorted) into one page of `limit` distinct ids after `cursor`.
pub fn merge_page(pages: Vec<Vec<String>>, limit: usize) -> (Vec<String>, Option<String>) {
    let all: BTreeSet<String> = pages.into_iter().flatten().collect();
    let mut ids: Vec<String> = all.into_iter().take(limit + 1).collect();
    let more = ids.len() > limit;
    ids.truncate(limit);
    let next = if more { ids.last().cloned() } else { None };
    (ids, next)
}

/// Who is online now, across every live edge, `limit` at a time after `cursor`.
pub async fn online(ctx: &Ctx<'_>, cursor: Option<&str>, limit: Option<u32>) -> Result<Outcome> {
    let d = ctx.deps;
    ctx.caller()?;
    let limit = validate::page(limit, 50) as usize;
    let cursor = match cursor {
        Some(cur)
            if cur.len() == runtime::registry::ID_WIDTH
                && cur.bytes().all(|b| b.is_ascii_digit()) =>
        {
            Some(cur.to_string())
        }
        Some(_) => return Err(refuse(ErrorCode::InvalidInput, "bad cursor")),
        None => None,
    };
    let mut c = d.redis.get().await?;
    let live = d.registry.live_edges(&mut c, runtime::now_ms()).await?;
    let min = cursor
        .map(|cur| format!("({cur}"))
        .unwrap_or_else(|| "-".to_string());
    let mut pages = Vec::new();
    for (edge, &epoch) in &live {
        let page: Vec<String> = c
            .zrangebylex_limit(
                d.registry.online_key(edge, epoch),
                &min,
                "+",
                0,
                limit as isize + 1,
            )
            .await?;
        pages.push(page);
    }
    let (ids, next_cursor) = merge_page(pages, limit);
    let users = if ids.is_empty() {
        vec![]
    } else {
        let uids: Vec<String> = ids
            .iter()
            .map(|p| p.trim_start_matches('0').to_string())
            .collect();
        let names: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(d.registry.unames_key())
            .arg(&uids)
            .query_async(&mut c)
            .await?;
        uids.iter()
            .zip(names)
            .filter_map(|(u, n)| {
                Some(OnlineUser {
                    user_id: u.parse().ok()?,
                    username: n.unwrap_or_default(),
                })
            })
            .collect()
    };
    Ok(Response::Online { users, next_cursor }.into())
}

/// A message to every connected client on every edge (rate limited per user).
pub async fn broadcast(ctx: &Ctx<'_>, text: &str) -> Result<Outcome> {
    let d = ctx.deps;
    let me = ctx.caller()?.clone();
    validate::text(text)?;
    if !sessions::allow(
        d,
        &format!("broadcast:{}", me.user_id),
        d.limits.broadcasts_per_user_per_minute,
    )
    .await?
    {
        return Err(refuse(
            ErrorCode::RateLimited,
            "too many broadcasts; wait a minute",
        ));
    }
    let frame = ServerFrame::Event {
        data: Event::Broadcast {
            from_user_id: me.user_id,
            from: me.username,
            text: text.to_string(),
            sent_at_ms: runtime::now_ms(),
        },
    };
    Ok(Outcome::from(Response::Ok).deliver(Delivery::new(Target::All, frame.to_json())))
}

/// Used by tests and the router: is `user` registered on any connection?
pub async fn connections(d: &Deps, user: Id) -> Result<usize> {
    let mut c = d.redis.get().await?;
    Ok(d.registry.user_conns(&mut c, user).await?.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_pages_without_duplicates() {
        let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (ids, next) = merge_page(vec![p(&["01", "03", "05"]), p(&["02", "03", "04"])], 3);
        assert_eq!(ids, p(&["01", "02", "03"]));
        assert_eq!(next.as_deref(), Some("03"));
        let (ids, next) = merge_page(vec![p(&["01"]), p(&["01"])], 3);
        assert_eq!(ids, p(&["01"]));
        assert_eq!(next, None);
    }
}
