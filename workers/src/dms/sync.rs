//! `dm.sync`: what a reconnecting client missed.

use super::{member_of, names, store};
use crate::context::{Ctx, Outcome};
use crate::{refuse, Result};
use std::collections::BTreeMap;
use topics::frames::SyncedConversation;
use topics::{validate, ErrorCode, Id, Response};

/// What a reconnecting client missed: per conversation, the messages after the sequence it saw.
pub async fn sync(ctx: &Ctx<'_>, since: &BTreeMap<Id, u64>) -> Result<Outcome> {
    let d = ctx.deps;
    let me = ctx.caller()?.user_id;
    if since.len() > validate::PAGE_MAX as usize {
        return Err(refuse(
            ErrorCode::InvalidInput,
            "sync at most 100 conversations at once",
        ));
    }
    let mut out = Vec::new();
    for (&conv, &seen) in since {
        let (lo, hi, last) = member_of(d, me, conv).await?;
        if last <= seen {
            out.push(SyncedConversation {
                conversation_id: conv,
                messages: vec![],
                more: false,
            });
            continue;
        }
        let (rows, more) = store::page(&d.db, conv, None, Some(seen), validate::PAGE_MAX).await?;
        let names = names(&d.db, &[lo, hi]).await?;
        out.push(SyncedConversation {
            conversation_id: conv,
            messages: rows
                .into_iter()
                .map(|r| store::to_message(conv, r, &names))
                .collect(),
            more,
        });
    }
    Ok(Response::Synced { conversations: out }.into())
}
