//! Invites by personal code. The link between two users is stored on both users' shards (one row
//! each, from each one's point of view): none → pending → accepted / rejected; removing a
//! connection deletes both rows, after which either may invite again. The invitee's row is
//! written first, so a crash between the two writes leaves nothing the inviter can see, and the
//! retry completes it.

pub mod list;
pub mod remove;
pub mod respond;
pub mod send;

use crate::context::{event_to, Ctx, Deps, Outcome};
use crate::Result;
use mysql_async::prelude::*;
use topics::frames::{Direction, InviteState, Link};
use topics::{Event, Id, Request, Response};

type LinkRow = (u64, String, String, String, u64);

/// The invites domain's requests.
pub async fn handle(ctx: &Ctx<'_>) -> crate::Result<Outcome> {
    match &ctx.env.request {
        Request::InviteSend { code } => send::send(ctx, code).await,
        Request::InviteRespond { user_id, accept } => {
            respond::respond(ctx, *user_id, *accept).await
        }
        Request::InviteList => list::list(ctx).await,
        Request::ConnectionRemove { user_id } => remove::remove(ctx, *user_id).await,
        other => Err(crate::Error::Unrouted(other.kind())),
    }
}

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
pub async fn link(d: &Deps, me: Id, peer: Id) -> Result<Option<Link>> {
    let mut c = d.db.by_id(me).primary.get_conn().await?;
    let r: Option<LinkRow> = c
        .exec_first(
            "SELECT peer_id, peer_username, state, direction, updated_at_ms FROM links WHERE user_id = ? AND peer_id = ?",
            (me.0, peer.0),
        )
        .await?;
    Ok(r.map(to_link))
}

#[allow(clippy::too_many_arguments)]
async fn put(
    d: &Deps,
    owner: Id,
    peer: Id,
    peer_name: &str,
    state: InviteState,
    dir: Direction,
    now: u64,
) -> Result<()> {
    let mut c = d.db.by_id(owner).primary.get_conn().await?;
    let dir = if dir == Direction::Incoming {
        "incoming"
    } else {
        "outgoing"
    };
    c.exec_drop(
        "INSERT INTO links (user_id, peer_id, peer_username, state, direction, updated_at_ms) VALUES (?, ?, ?, ?, ?, ?) \
         ON DUPLICATE KEY UPDATE state = VALUES(state), direction = VALUES(direction), updated_at_ms = VALUES(updated_at_ms)",
        (owner.0, peer.0, peer_name, state_str(state), dir, now),
    )
    .await?;
    Ok(())
}

/// The reply, and the update for every device of both users (my other devices included).
fn both_sides(me: Id, mine: Link, peer: Id, theirs: Link) -> Outcome {
    Outcome::from(Response::Link { link: mine.clone() })
        .deliver(event_to(vec![peer], Event::InviteUpdated { link: theirs }))
        .deliver(event_to(vec![me], Event::InviteUpdated { link: mine }))
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
