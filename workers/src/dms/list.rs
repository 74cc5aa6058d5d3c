//! `dm.list`: the caller's conversations, most recently active first.

use super::{store, summaries};
use crate::context::{Ctx, Outcome};
use crate::db::Shards;
use crate::Result;
use topics::frames::ConversationSummary;
use topics::{Id, Response};

/// My conversations, most recently active first, with last message and unread count.
pub async fn list(ctx: &Ctx<'_>) -> Result<Outcome> {
    let me = ctx.caller()?.user_id;
    let conversations = conversations(&ctx.deps.db, me).await?;
    Ok(Response::Conversations { conversations }.into())
}

/// The conversations of `me` as `dm.list` shows them: one query for my memberships, then a
/// fixed number per shard whatever their number ([`summaries`]).
pub async fn conversations(db: &Shards, me: Id) -> Result<Vec<ConversationSummary>> {
    let mine = store::memberships(db, me).await?;
    let mut out = summaries(db, me, &mine).await?;
    out.sort_by_key(|s| {
        std::cmp::Reverse(s.last_message.as_ref().map(|m| m.sent_at_ms).unwrap_or(0))
    });
    Ok(out)
}
