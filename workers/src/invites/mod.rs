//! Invites by personal code. The link between two users is stored on both users' shards (one row
//! each, from each one's point of view): none → pending → accepted / rejected; removing a
//! connection deletes both rows, after which either may invite again. The invitee's row is
//! written first, so a crash between the two writes leaves nothing the inviter can see, and the
//! retry completes it.

use crate::context::{event_to, Ctx, Deps, Outcome};
use crate::users::normalise_code;
use crate::{refuse, Result};
use mysql_async::prelude::*;
use topics::frames::{Direction, InviteState, Link};
use topics::{ErrorCode, Event, Id, Request, Response};

type LinkRow = (u64, String, String, String, u64);

/// The invites domain's requests.
pub async fn handle(ctx: &Ctx<'_>) -> crate::Result<Outcome> {
    match &ctx.env.request {
        Request::InviteSend { code } => send(ctx, code).await,
        Request::InviteRespond { user_id, accept } => respond(ctx, *user_id, *accept).await,
        Request::InviteList => list(ctx).await,
        Request::ConnectionRemove { user_id } => remove(ctx, *user_id).await,
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

/// Invite the owner of `code`.
pub async fn send(ctx: &Ctx<'_>, code: &str) -> Result<Outcome> {
    let d = ctx.deps;
    let me = ctx.caller()?.clone();
    let code = normalise_code(code);
    if code.is_empty() || code.len() > 16 || !code.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(refuse(ErrorCode::InvalidInput, "invite code is malformed"));
    }
    let target: Option<u64> = {
        let mut c = d.db.by_key(&code).primary.get_conn().await?;
        c.exec_first("SELECT user_id FROM invite_codes WHERE code = ?", (&code,))
            .await?
    };
    let Some(target) = target.map(Id) else {
        return Err(refuse(ErrorCode::NotFound, "unknown invite code"));
    };
    if target == me.user_id {
        return Err(refuse(
            ErrorCode::InvalidInput,
            "you cannot invite yourself",
        ));
    }
    match link(d, me.user_id, target).await? {
        Some(l) if l.state == InviteState::Accepted => {
            return Err(refuse(ErrorCode::Conflict, "you are already connected"))
        }
        Some(l) if l.state == InviteState::Pending && l.direction == Direction::Outgoing => {
            return Err(refuse(ErrorCode::Conflict, "an invite is already pending"))
        }
        Some(l) if l.state == InviteState::Pending => {
            return Err(refuse(
                ErrorCode::Conflict,
                "they already invited you: accept their invite",
            ))
        }
        _ => {}
    }
    let pending: u64 = d
        .db
        .by_id(me.user_id)
        .primary
        .get_conn()
        .await?
        .exec_first(
            "SELECT COUNT(*) FROM links WHERE user_id = ? AND direction = 'outgoing' AND state = 'pending'",
            (me.user_id.0,),
        )
        .await?
        .unwrap_or(0);
    if pending >= d.limits.pending_invites_max {
        return Err(refuse(
            ErrorCode::RateLimited,
            "too many pending invites; wait for answers",
        ));
    }
    let profiles = crate::users::profiles(d, &[target]).await?;
    let target_name = match profiles.get(&target) {
        Some((name, false)) => name.clone(),
        _ => return Err(refuse(ErrorCode::NotFound, "unknown invite code")),
    };
    let now = runtime::now_ms();
    put(
        d,
        target,
        me.user_id,
        &me.username,
        InviteState::Pending,
        Direction::Incoming,
        now,
    )
    .await?;
    put(
        d,
        me.user_id,
        target,
        &target_name,
        InviteState::Pending,
        Direction::Outgoing,
        now,
    )
    .await?;
    let theirs = Link {
        user_id: me.user_id,
        username: me.username.clone(),
        state: InviteState::Pending,
        direction: Direction::Incoming,
        updated_at_ms: now,
    };
    let mine = Link {
        user_id: target,
        username: target_name,
        state: InviteState::Pending,
        direction: Direction::Outgoing,
        updated_at_ms: now,
    };
    Ok(both_sides(me.user_id, mine, target, theirs))
}

/// The reply, and the update for every device of both users (my other devices included).
fn both_sides(me: Id, mine: Link, peer: Id, theirs: Link) -> Outcome {
    Outcome::from(Response::Link { link: mine.clone() })
        .deliver(event_to(vec![peer], Event::InviteUpdated { link: theirs }))
        .deliver(event_to(vec![me], Event::InviteUpdated { link: mine }))
}

/// Accept or reject the pending invite from `from`.
pub async fn respond(ctx: &Ctx<'_>, from: Id, accept: bool) -> Result<Outcome> {
    let d = ctx.deps;
    let me = ctx.caller()?.clone();
    let state = if accept {
        InviteState::Accepted
    } else {
        InviteState::Rejected
    };
    let current = link(d, me.user_id, from).await?;
    let Some(l) = current.filter(|l| {
        l.direction == Direction::Incoming && (l.state == InviteState::Pending || l.state == state)
    }) else {
        return Err(refuse(
            ErrorCode::NotFound,
            "no pending invite from this user",
        ));
    };
    let now = runtime::now_ms();
    put(
        d,
        from,
        me.user_id,
        &me.username,
        state,
        Direction::Outgoing,
        now,
    )
    .await?;
    put(
        d,
        me.user_id,
        from,
        &l.username,
        state,
        Direction::Incoming,
        now,
    )
    .await?;
    let theirs = Link {
        user_id: me.user_id,
        username: me.username.clone(),
        state,
        direction: Direction::Outgoing,
        updated_at_ms: now,
    };
    let mine = Link {
        state,
        updated_at_ms: now,
        ..l
    };
    Ok(both_sides(me.user_id, mine, from, theirs))
}

/// All my links: pending both ways, accepted connections, rejected invites.
pub async fn list(ctx: &Ctx<'_>) -> Result<Outcome> {
    let me = ctx.caller()?.user_id;
    let mut c = ctx.deps.db.by_id(me).primary.get_conn().await?;
    let rows: Vec<LinkRow> = c
        .exec(
            "SELECT peer_id, peer_username, state, direction, updated_at_ms FROM links WHERE user_id = ? ORDER BY updated_at_ms DESC LIMIT 1000",
            (me.0,),
        )
        .await?;
    Ok(Response::Links {
        links: rows.into_iter().map(to_link).collect(),
    }
    .into())
}

/// Remove a connection (or withdraw / forget an invite): both rows go; re-inviting is allowed.
/// The peer's row goes first: from then on the removed user can no longer message me
/// (`dm.send` checks the sender's own row), and a crash before my row goes leaves it for the
/// retry to find. Both users' devices are told the link ended.
pub async fn remove(ctx: &Ctx<'_>, peer: Id) -> Result<Outcome> {
    let d = ctx.deps;
    let me = ctx.caller()?.user_id;
    if link(d, me, peer).await?.is_none() {
        return Err(refuse(ErrorCode::NotFound, "no connection with this user"));
    }
    let mut cp = d.db.by_id(peer).primary.get_conn().await?;
    cp.exec_drop(
        "DELETE FROM links WHERE user_id = ? AND peer_id = ?",
        (peer.0, me.0),
    )
    .await?;
    drop(cp);
    let mut c = d.db.by_id(me).primary.get_conn().await?;
    c.exec_drop(
        "DELETE FROM links WHERE user_id = ? AND peer_id = ?",
        (me.0, peer.0),
    )
    .await?;
    Ok(removed(me, peer))
}

/// The reply to a removal, and the event for every device of both users.
fn removed(me: Id, peer: Id) -> Outcome {
    Outcome::from(Response::Ok)
        .deliver(event_to(
            vec![peer],
            Event::ConnectionRemoved { user_id: me },
        ))
        .deliver(event_to(
            vec![me],
            Event::ConnectionRemoved { user_id: peer },
        ))
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

    #[test]
    fn a_removal_tells_both_users_about_the_other() {
        let out = removed(Id(1), Id(2));
        assert_eq!(out.response, Some(Response::Ok));
        let told: Vec<(Vec<Id>, Event)> = out
            .deliveries
            .iter()
            .map(|d| {
                let topics::Target::Users { user_ids } = &d.target else {
                    panic!("{d:?}")
                };
                let topics::ServerFrame::Event { data } = serde_json::from_str(&d.frame).unwrap()
                else {
                    panic!("{d:?}")
                };
                (user_ids.clone(), data)
            })
            .collect();
        assert_eq!(
            told,
            vec![
                (vec![Id(2)], Event::ConnectionRemoved { user_id: Id(1) }),
                (vec![Id(1)], Event::ConnectionRemoved { user_id: Id(2) }),
            ]
        );
    }
}
