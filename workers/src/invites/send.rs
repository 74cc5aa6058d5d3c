//! `invite.send`: invite the owner of a personal code.

use super::{both_sides, store};
use crate::context::{Ctx, Outcome};
use crate::users::{self, normalise_code};
use crate::{refuse, Result};
use topics::frames::{Direction, InviteState, Link};
use topics::ErrorCode;

/// Invite the owner of `code`.
pub async fn send(ctx: &Ctx<'_>, code: &str) -> Result<Outcome> {
    let d = ctx.deps;
    let me = ctx.caller()?.clone();
    let code = normalise_code(code);
    if code.is_empty() || code.len() > 16 || !code.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(refuse(ErrorCode::InvalidInput, "invite code is malformed"));
    }
    let Some(target) = users::store::code_owner(&d.db, &code).await? else {
        return Err(refuse(ErrorCode::NotFound, "unknown invite code"));
    };
    if target == me.user_id {
        return Err(refuse(
            ErrorCode::InvalidInput,
            "you cannot invite yourself",
        ));
    }
    match store::link(&d.db, me.user_id, target).await? {
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
    let pending = store::pending_outgoing(&d.db, me.user_id).await?;
    if pending >= d.limits.pending_invites_max {
        return Err(refuse(
            ErrorCode::RateLimited,
            "too many pending invites; wait for answers",
        ));
    }
    // From the primary: the code's owner may have signed up a moment ago, and a replica may not
    // have the account yet.
    let target_name = match users::store::row(&d.db, target, true).await? {
        Some(r) if r.5.is_none() => r.1,
        _ => return Err(refuse(ErrorCode::NotFound, "unknown invite code")),
    };
    let now = runtime::now_ms();
    store::put(
        &d.db,
        target,
        me.user_id,
        &me.username,
        InviteState::Pending,
        Direction::Incoming,
        now,
    )
    .await?;
    store::put(
        &d.db,
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
