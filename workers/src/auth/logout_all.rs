//! `session.logout_all`: end every session of the caller.

use super::close_sessions;
use crate::context::{Ctx, Outcome};
use crate::{sessions, Result};
use topics::Response;

/// Log out every session of the caller, this one included.
pub async fn logout_all(ctx: &Ctx<'_>) -> Result<Outcome> {
    let c = ctx.caller()?;
    let ids = sessions::revoke_all(ctx.deps, c.user_id).await?;
    Ok(Outcome {
        response: Some(Response::Ok),
        clear_session: true,
        ..Default::default()
    }
    .deliver(close_sessions(c.user_id, ids, "logged out everywhere")))
}
