//! `invite.list`: every link of the caller.

use super::{to_link, LinkRow};
use crate::context::{Ctx, Outcome};
use crate::Result;
use mysql_async::prelude::*;
use topics::Response;

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
