//! `dm.list`: the caller's conversations.

use super::summary;
use crate::context::{Ctx, Outcome};
use crate::Result;
use mysql_async::prelude::*;
use topics::{Id, Response};

/// My conversations, most recently active first, with last message and unread count.
pub async fn list(ctx: &Ctx<'_>) -> Result<Outcome> {
    let d = ctx.deps;
    let me = ctx.caller()?.user_id;
    let mut c = d.db.by_id(me).primary.get_conn().await?;
    let rows: Vec<(u64, u64)> = c
        .exec(
            "SELECT conversation_id, last_read_seq FROM memberships WHERE user_id = ? LIMIT 500",
            (me.0,),
        )
        .await?;
    drop(c);
    let mut out = Vec::with_capacity(rows.len());
    for (conv, last_read) in rows {
        out.push(summary(d, me, Id(conv), last_read).await?);
    }
    out.sort_by_key(|s| {
        std::cmp::Reverse(s.last_message.as_ref().map(|m| m.sent_at_ms).unwrap_or(0))
    });
    Ok(Response::Conversations { conversations: out }.into())
}
