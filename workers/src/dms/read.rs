//! `dm.read`: move the caller's read position.

use super::member_of;
use crate::context::{Ctx, Outcome};
use crate::Result;
use mysql_async::prelude::*;
use topics::{Id, Response};

/// Mark messages up to `seq` read (never moves backwards).
pub async fn read(ctx: &Ctx<'_>, conv: Id, seq: u64) -> Result<Outcome> {
    let d = ctx.deps;
    let me = ctx.caller()?.user_id;
    let (_, _, last) = member_of(d, me, conv).await?;
    let mut c = d.db.by_id(me).primary.get_conn().await?;
    c.exec_drop(
        "UPDATE memberships SET last_read_seq = GREATEST(last_read_seq, ?) WHERE user_id = ? AND conversation_id = ?",
        (seq.min(last), me.0, conv.0),
    )
    .await?;
    Ok(Response::Ok.into())
}
