//! `user.delete`: delete the caller's account.

use super::store;
use crate::context::{Ctx, Outcome};
use crate::{dms, invites, refuse, sessions, Result};
use topics::{ErrorCode, Response};

/// Delete my account. Each step is idempotent, and sessions go last, so a retry after a crash
/// finishes the job.
pub async fn delete(ctx: &Ctx<'_>) -> Result<Outcome> {
    let d = ctx.deps;
    let me = ctx.caller()?.user_id;
    let Some(r) = store::row(&d.db, me, true).await? else {
        return Err(refuse(ErrorCode::NotFound, "no such user"));
    };
    store::mark_deleted(&d.db, me, runtime::now_ms()).await?;
    // Free the username and the invite code.
    store::free_username(&d.db, &r.1, me).await?;
    store::free_invite_code(&d.db, &r.3, me).await?;
    // Links on both sides; my conversation memberships (the peers keep theirs and the history).
    for peer in invites::store::peers(&d.db, me).await? {
        invites::store::delete_link(&d.db, peer, me).await?;
    }
    invites::store::delete_links(&d.db, me).await?;
    dms::store::delete_memberships(&d.db, me).await?;
    let ids = sessions::revoke_all(d, me).await?;
    Ok(Outcome {
        response: Some(Response::Ok),
        clear_session: true,
        ..Default::default()
    }
    .deliver(crate::auth::close_sessions(me, ids, "account deleted")))
}
