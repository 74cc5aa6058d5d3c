//! `dm.history`: one page of a conversation's messages.

use super::{member_of, names, store};
use crate::context::{Ctx, Outcome};
use crate::{refuse, Result};
use topics::{validate, ErrorCode, Id, Response};

pub async fn history(
    ctx: &Ctx<'_>,
    conv: Id,
    before: Option<u64>,
    after: Option<u64>,
    limit: Option<u32>,
) -> Result<Outcome> {
    let d = ctx.deps;
    let me = ctx.caller()?.user_id;
    if before.is_some() && after.is_some() {
        return Err(refuse(
            ErrorCode::InvalidInput,
            "give at most one of before_seq and after_seq",
        ));
    }
    let (lo, hi, _) = member_of(d, me, conv).await?;
    let (rows, more) = store::page(&d.db, conv, before, after, validate::page(limit, 50)).await?;
    let names = names(&d.db, &[lo, hi]).await?;
    let messages = rows
        .into_iter()
        .map(|r| store::to_message(conv, r, &names))
        .collect();
    Ok(Response::History {
        conversation_id: conv,
        messages,
        more,
    }
    .into())
}
