//! `session.list`: the caller's sessions.

use crate::context::{Ctx, Outcome};
use crate::{sessions, Result};
use topics::frames::SessionInfo;
use topics::Response;

pub async fn list(ctx: &Ctx<'_>) -> Result<Outcome> {
    let c = ctx.caller()?;
    let sessions = sessions::list(ctx.deps, c.user_id)
        .await?
        .into_iter()
        .map(|(sid, r)| SessionInfo {
            current: sid == c.session_id,
            session_id: sid,
            created_at_ms: r.created_ms,
            last_seen_ms: r.last_seen_ms,
            device: r.device,
        })
        .collect();
    Ok(Response::Sessions { sessions }.into())
}
