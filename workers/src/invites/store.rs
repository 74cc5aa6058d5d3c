//! The SQL of links: each user's row per peer, on the user's shard.

use crate::db::{exec_drop, rows, Shards};
use crate::Result;
use mysql_async::prelude::*;
use topics::frames::{Direction, InviteState, Link};
use topics::Id;

/// A `links` row as read: (peer_id, peer_username, state, direction, updated_at_ms).
pub type LinkRow = (u64, String, String, String, u64);

fn state_of(s: &str) -> InviteState {
    match s {
        "accepted" => InviteState::Accepted,
        "rejected" => InviteState::Rejected,
        _ => InviteState::Pending,
    }
}

fn state_str(s: InviteState) -> &'static str {
    match s {
        InviteState::Pending => "pending",
        InviteState::Accepted => "accepted",
        InviteState::Rejected => "rejected",
    }
}

fn to_link(r: LinkRow) -> Link {
    Link {
        user_id: Id(r.0),
        username: r.1,
        state: state_of(&r.2),
        direction: if r.3 == "incoming" {
            Direction::Incoming
        } else {
            Direction::Outgoing
        },
        updated_at_ms: r.4,
    }
}

/// My link with `peer`, if any (primary: must see my own writes).
pub async fn link(db: &Shards, me: Id, peer: Id) -> Result<Option<Link>> {
    let r: Option<LinkRow> = db
        .by_id(me)
        .on_primary(async |c| {
            Ok(c.exec_first(
                "SELECT peer_id, peer_username, state, direction, updated_at_ms FROM links WHERE user_id = ? AND peer_id = ?",
                (me.0, peer.0),
            )
            .await?)
        })
        .await?;
    Ok(r.map(to_link))
}

/// Write `owner`'s row for `peer` (created, or its state and direction changed).
#[allow(clippy::too_many_arguments)]
pub async fn put(
    db: &Shards,
    owner: Id,
    peer: Id,
    peer_name: &str,
    state: InviteState,
    dir: Direction,
    now: u64,
) -> Result<()> {
    let dir = if dir == Direction::Incoming {
        "incoming"
    } else {
        "outgoing"
    };
    exec_drop(
        db.by_id(owner),
        "INSERT INTO links (user_id, peer_id, peer_username, state, direction, updated_at_ms) VALUES (?, ?, ?, ?, ?, ?) \
         ON DUPLICATE KEY UPDATE state = VALUES(state), direction = VALUES(direction), updated_at_ms = VALUES(updated_at_ms)",
        (owner.0, peer.0, peer_name, state_str(state), dir, now),
    )
    .await
}

/// How many of my invites wait for an answer.
pub async fn pending_outgoing(db: &Shards, me: Id) -> Result<u64> {
    let n: Option<u64> = db
        .by_id(me)
        .on_primary(async |c| {
            Ok(c.exec_first(
                "SELECT COUNT(*) FROM links WHERE user_id = ? AND direction = 'outgoing' AND state = 'pending'",
                (me.0,),
            )
            .await?)
        })
        .await?;
    Ok(n.unwrap_or(0))
}

/// My links, the most recently changed first (at most 1000).
pub async fn links(db: &Shards, me: Id) -> Result<Vec<Link>> {
    let found: Vec<LinkRow> = rows(
        db.by_id(me),
        "SELECT peer_id, peer_username, state, direction, updated_at_ms FROM links WHERE user_id = ? ORDER BY updated_at_ms DESC LIMIT 1000",
        (me.0,),
    )
    .await?;
    Ok(found.into_iter().map(to_link).collect())
}

/// Delete `owner`'s row for `peer`.
pub async fn delete_link(db: &Shards, owner: Id, peer: Id) -> Result<()> {
    exec_drop(
        db.by_id(owner),
        "DELETE FROM links WHERE user_id = ? AND peer_id = ?",
        (owner.0, peer.0),
    )
    .await
}

/// Everyone I have a row for.
pub async fn peers(db: &Shards, me: Id) -> Result<Vec<Id>> {
    let peers: Vec<u64> = rows(
        db.by_id(me),
        "SELECT peer_id FROM links WHERE user_id = ?",
        (me.0,),
    )
    .await?;
    Ok(peers.into_iter().map(Id).collect())
}

/// Delete all my rows.
pub async fn delete_links(db: &Shards, me: Id) -> Result<()> {
    exec_drop(db.by_id(me), "DELETE FROM links WHERE user_id = ?", (me.0,)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip() {
        for s in [
            InviteState::Pending,
            InviteState::Accepted,
            InviteState::Rejected,
        ] {
            assert_eq!(state_of(state_str(s)), s);
        }
        let l = to_link((1, "a".into(), "accepted".into(), "incoming".into(), 5));
        assert_eq!(l.direction, Direction::Incoming);
        assert_eq!(
            to_link((1, "a".into(), "pending".into(), "outgoing".into(), 5)).direction,
            Direction::Outgoing
        );
    }
}
