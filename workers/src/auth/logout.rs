//! `session.logout`: end one session.

use super::close_sessions;
use crate::context::{Ctx, Outcome};
use crate::{refuse, sessions, Result};
use topics::{ErrorCode, Response};

/// Log out one session (the current one by default).
pub async fn logout(ctx: &Ctx<'_>, session_id: Option<&str>) -> Result<Outcome> {
    let c = ctx.caller()?;
    let sid = session_id.unwrap_or(&c.session_id).to_string();
    let rec = match sessions::load(ctx.deps, &sid).await? {
        Some(r) if r.user_id == c.user_id => r,
        Some(_) => return Err(refuse(ErrorCode::NotFound, "no such session")),
        None => {
            // Perhaps gone by an earlier attempt answered `unavailable`: done only once a
            // replica has that too.
            sessions::confirm_gone(ctx.deps, sessions::Gone::Session(&sid)).await?;
            return Err(refuse(ErrorCode::NotFound, "no such session"));
        }
    };
    sessions::revoke(ctx.deps, &sid, &rec).await?;
    Ok(Outcome {
        response: Some(Response::Ok),
        clear_session: sid == c.session_id,
        ..Default::default()
    }
    .deliver(close_sessions(c.user_id, vec![sid], "logged out")))
}
