//! `dm.read`: move the caller's read position.

use super::{member_of, store};
use crate::context::{Ctx, Outcome};
use crate::Result;
use topics::{Id, Response};

/// Mark messages up to `seq` read (never moves backwards).
pub async fn read(ctx: &Ctx<'_>, conv: Id, seq: u64) -> Result<Outcome> {
    let d = ctx.deps;
    let me = ctx.caller()?.user_id;
    let (_, _, last) = member_of(d, me, conv).await?;
    store::mark_read(&d.db, me, conv, seq.min(last)).await?;
    Ok(Response::Ok.into())
}
