//! `invite.respond`: accept or reject a pending invite.

use super::{both_sides, store};
use crate::context::{Ctx, Outcome};
use crate::{refuse, Result};
use topics::frames::{Direction, InviteState, Link};
use topics::{ErrorCode, Id};

/// Accept or reject the pending invite from `from`.
pub async fn respond(ctx: &Ctx<'_>, from: Id, accept: bool) -> Result<Outcome> {
    let d = ctx.deps;
    let me = ctx.caller()?.clone();
    let state = if accept {
        InviteState::Accepted
    } else {
        InviteState::Rejected
    };
    let current = store::link(&d.db, me.user_id, from).await?;
    let Some(l) = current.filter(|l| {
        l.direction == Direction::Incoming && (l.state == InviteState::Pending || l.state == state)
    }) else {
        return Err(refuse(
            ErrorCode::NotFound,
            "no pending invite from this user",
        ));
    };
    let now = runtime::now_ms();
    store::put(
        &d.db,
        from,
        me.user_id,
        &me.username,
        state,
        Direction::Outgoing,
        now,
    )
    .await?;
    store::put(
        &d.db,
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
