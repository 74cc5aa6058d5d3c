//! Direct conversations. A pair of users has exactly one conversation, found through the
//! `dm_pairs` directory (sharded by the pair key); the conversation and its messages live on the
//! conversation's shard, each member's membership (read position) on the member's shard.
//! Sequence numbers are assigned in the same transaction as the message row, under the
//! conversation row's lock; `(conversation, author, client_msg_id)` is unique, so a retried send
//! returns the original message instead of storing a second one.

pub mod batch;
pub mod history;
pub mod list;
pub mod open;
pub mod read;
pub mod send;
pub mod store;
pub mod sync;

pub use send::{send_many, sent, NewSend, Stored};

use crate::context::{Ctx, Deps, Outcome};
use crate::db::Shards;
use crate::users::{profiles, DELETED};
use crate::Result;
use std::collections::{BTreeMap, HashMap};
use topics::frames::ConversationSummary;
use topics::{ErrorBody, ErrorCode, Id, Request};

/// The direct-message domain's requests (sends also come in batches: [`batch`]).
pub async fn handle(ctx: &Ctx<'_>) -> crate::Result<Outcome> {
    match &ctx.env.request {
        Request::DmOpen { user_id } => open::open(ctx, *user_id).await,
        Request::DmList => list::list(ctx).await,
        Request::DmHistory {
            conversation_id,
            before_seq,
            after_seq,
            limit,
        } => history::history(ctx, *conversation_id, *before_seq, *after_seq, *limit).await,
        Request::DmSend {
            conversation_id,
            client_msg_id,
            text,
            after_client_msg_id,
        } => {
            let after = after_client_msg_id.as_deref();
            send::send(ctx, *conversation_id, client_msg_id, text, after).await
        }
        Request::DmRead {
            conversation_id,
            seq,
        } => read::read(ctx, *conversation_id, *seq).await,
        Request::DmSync { since } => sync::sync(ctx, since).await,
        other => Err(crate::Error::Unrouted(other.kind())),
    }
}

/// `lo:hi` — the same key whoever opens the conversation.
pub fn pair_key(a: Id, b: Id) -> String {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    format!("{lo}:{hi}")
}

/// Names of these users, each with whether the account is deleted (shown as `[deleted]`).
async fn names(db: &Shards, users: &[Id]) -> Result<HashMap<Id, (String, bool)>> {
    profiles(db, users).await
}

/// (user_lo, user_hi, last_seq) of a conversation the caller is in; NotFound otherwise (a
/// conversation one is not in is indistinguishable from one that does not exist).
async fn member_of(d: &Deps, me: Id, conv: Id) -> Result<(Id, Id, u64)> {
    match store::conversation(&d.db, conv).await? {
        Some((lo, hi, last)) if lo == me || hi == me => Ok((lo, hi, last)),
        _ => Err(not_found().into()),
    }
}

fn peer_of(me: Id, lo: Id, hi: Id) -> Id {
    if lo == me {
        hi
    } else {
        lo
    }
}

/// The summaries of these conversations of mine, given with my read position in each, in the
/// order given: per conversation shard one query for the conversations with their last
/// messages and one for the unread counts, then one query per shard of their members for the
/// names. NotFound when I am not in one of them.
pub async fn summaries(
    db: &Shards,
    me: Id,
    mine: &[(Id, u64)],
) -> Result<Vec<ConversationSummary>> {
    let mut by_shard: BTreeMap<usize, Vec<(Id, u64)>> = BTreeMap::new();
    for &(conv, last_read) in mine {
        by_shard
            .entry(db.by_id(conv).index)
            .or_default()
            .push((conv, last_read));
    }
    let per_shard = by_shard.into_values().map(|convs| async move {
        let ids: Vec<Id> = convs.iter().map(|&(conv, _)| conv).collect();
        let heads = store::heads(db, &ids).await?;
        // Nothing follows my read position where it is at the last message.
        let behind: Vec<(Id, u64)> = convs
            .into_iter()
            .filter(|(conv, read)| heads.get(conv).is_some_and(|h| h.last_seq > *read))
            .collect();
        let unread = store::unread(db, me, &behind).await?;
        Ok::<_, crate::Error>((heads, unread))
    });
    let mut heads = HashMap::new();
    let mut unread = HashMap::new();
    for (h, u) in futures::future::try_join_all(per_shard).await? {
        heads.extend(h);
        unread.extend(u);
    }
    let mut members: Vec<Id> = heads.values().flat_map(|h| [h.lo, h.hi]).collect();
    members.sort_unstable();
    members.dedup();
    let names = names(db, &members).await?;
    mine.iter()
        .map(|&(conv, _)| {
            let h = heads
                .get(&conv)
                .filter(|h| h.lo == me || h.hi == me)
                .ok_or_else(not_found)?;
            let peer = peer_of(me, h.lo, h.hi);
            Ok(ConversationSummary {
                conversation_id: conv,
                peer_id: peer,
                peer: match names.get(&peer) {
                    Some((n, false)) => n.clone(),
                    _ => DELETED.to_string(),
                },
                last_seq: h.last_seq,
                last_message: h.last.clone().map(|r| store::to_message(conv, r, &names)),
                unread: unread.get(&conv).copied().unwrap_or(0),
            })
        })
        .collect()
}

fn not_connected() -> ErrorBody {
    ErrorBody::new(
        ErrorCode::Forbidden,
        "you can only message your connections",
    )
}

/// A send whose `after_client_msg_id` is not stored: the earlier message must land first.
fn out_of_order(after: &str) -> ErrorBody {
    ErrorBody::new(
        ErrorCode::OutOfOrder,
        format!("the message typed before this one ({after}) is not stored yet: send it first, then this one again"),
    )
}

fn not_found() -> ErrorBody {
    ErrorBody::new(ErrorCode::NotFound, "no such conversation")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_keys_are_symmetric() {
        assert_eq!(pair_key(Id(2), Id(1)), "1:2");
        assert_eq!(pair_key(Id(1), Id(2)), "1:2");
        assert_eq!(peer_of(Id(1), Id(1), Id(2)), Id(2));
        assert_eq!(peer_of(Id(2), Id(1), Id(2)), Id(1));
    }
}
