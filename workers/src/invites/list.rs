//! `invite.list`: every link of the caller.

use super::store;
use crate::context::{Ctx, Outcome};
use crate::Result;
use topics::Response;

/// All my links: pending both ways, accepted connections, rejected invites.
pub async fn list(ctx: &Ctx<'_>) -> Result<Outcome> {
    let me = ctx.caller()?.user_id;
    let links = store::links(&ctx.deps.db, me).await?;
    Ok(Response::Links { links }.into())
}
