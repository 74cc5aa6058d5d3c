//! `user.delete`: delete the caller's account.

use super::row;
use crate::context::{Ctx, Outcome};
use crate::db::{exec_drop, rows};
use crate::{refuse, sessions, Result};
use topics::{ErrorCode, Id, Response};

/// Delete my account. Each step is idempotent, and sessions go last, so a retry after a crash
/// finishes the job.
pub async fn delete(ctx: &Ctx<'_>) -> Result<Outcome> {
    let d = ctx.deps;
    let me = ctx.caller()?.user_id;
    let Some(r) = row(d, me, true).await? else {
        return Err(refuse(ErrorCode::NotFound, "no such user"));
    };
    let mine = &d.db.by_id(me).primary;
    exec_drop(
        mine,
        "UPDATE users SET deleted_at_ms = COALESCE(deleted_at_ms, ?), password_hash = '' WHERE id = ?",
        (runtime::now_ms(), me.0),
    )
    .await?;
    // Free the username and the invite code.
    exec_drop(
        &d.db.by_key(&r.1).primary,
        "DELETE FROM usernames WHERE username = ? AND user_id = ?",
        (&r.1, me.0),
    )
    .await?;
    exec_drop(
        &d.db.by_key(&r.3).primary,
        "DELETE FROM invite_codes WHERE code = ? AND user_id = ?",
        (&r.3, me.0),
    )
    .await?;
    // Links on both sides; my conversation memberships (the peers keep theirs and the history).
    let peers: Vec<u64> =
        rows(mine, "SELECT peer_id FROM links WHERE user_id = ?", (me.0,)).await?;
    for p in &peers {
        exec_drop(
            &d.db.by_id(Id(*p)).primary,
            "DELETE FROM links WHERE user_id = ? AND peer_id = ?",
            (p, me.0),
        )
        .await?;
    }
    exec_drop(mine, "DELETE FROM links WHERE user_id = ?", (me.0,)).await?;
    exec_drop(mine, "DELETE FROM memberships WHERE user_id = ?", (me.0,)).await?;
    let ids = sessions::revoke_all(d, me).await?;
    Ok(Outcome {
        response: Some(Response::Ok),
        clear_session: true,
        ..Default::default()
    }
    .deliver(crate::auth::close_sessions(me, ids, "account deleted")))
}
