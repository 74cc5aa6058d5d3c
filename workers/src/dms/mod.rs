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
pub mod sync;

pub use send::{send_many, sent, NewSend, Stored};

use crate::context::{Ctx, Deps, Outcome};
use crate::users::{profiles, DELETED};
use crate::Result;
use mysql_async::prelude::*;
use std::collections::HashMap;
use topics::frames::{ConversationSummary, Message};
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
        } => send::send(ctx, *conversation_id, client_msg_id, text).await,
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

type MsgRow = (u64, u64, u64, String, String, u64);

/// Names of the conversation's two members, `[deleted]` for deleted accounts.
async fn names(d: &Deps, users: &[Id]) -> Result<HashMap<Id, (String, bool)>> {
    profiles(d, users).await
}

fn to_message(conv: Id, r: MsgRow, names: &HashMap<Id, (String, bool)>) -> Message {
    let (seq, id, author, client_msg_id, text, sent) = r;
    let author = Id(author);
    let (author_id, name) = match names.get(&author) {
        Some((n, false)) => (Some(author), n.clone()),
        _ => (None, DELETED.to_string()),
    };
    Message {
        conversation_id: conv,
        seq,
        message_id: Id(id),
        author_id,
        author: name,
        client_msg_id,
        text,
        sent_at_ms: sent,
    }
}

/// (user_lo, user_hi, last_seq) of a conversation the caller is in; NotFound otherwise (a
/// conversation one is not in is indistinguishable from one that does not exist).
async fn member_of(d: &Deps, me: Id, conv: Id) -> Result<(Id, Id, u64)> {
    let mut c = d.db.by_id(conv).primary.get_conn().await?;
    let row: Option<(u64, u64, u64)> = c
        .exec_first(
            "SELECT user_lo, user_hi, last_seq FROM conversations WHERE id = ?",
            (conv.0,),
        )
        .await?;
    match row {
        Some((lo, hi, last)) if lo == me.0 || hi == me.0 => Ok((Id(lo), Id(hi), last)),
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

async fn summary(d: &Deps, me: Id, conv: Id, last_read: u64) -> Result<ConversationSummary> {
    let (lo, hi, last_seq) = member_of(d, me, conv).await?;
    let peer = peer_of(me, lo, hi);
    let names = names(d, &[lo, hi]).await?;
    let mut c = d.db.by_id(conv).primary.get_conn().await?;
    let last: Option<MsgRow> = c
        .exec_first(
            "SELECT seq, id, author_id, client_msg_id, body, sent_at_ms FROM messages WHERE conversation_id = ? AND seq = ?",
            (conv.0, last_seq),
        )
        .await?;
    let unread: u64 = c
        .exec_first(
            "SELECT COUNT(*) FROM (SELECT 1 FROM messages WHERE conversation_id = ? AND seq > ? AND author_id <> ? LIMIT 1000) t",
            (conv.0, last_read, me.0),
        )
        .await?
        .unwrap_or(0);
    Ok(ConversationSummary {
        conversation_id: conv,
        peer_id: peer,
        peer: match names.get(&peer) {
            Some((n, false)) => n.clone(),
            _ => DELETED.to_string(),
        },
        last_seq,
        last_message: last.map(|r| to_message(conv, r, &names)),
        unread,
    })
}

/// One page of a conversation's messages, ascending. `after_seq`: the page after it;
/// `before_seq`: the page before it (older history, read from the replica); neither: the latest.
async fn page(
    d: &Deps,
    conv: Id,
    before: Option<u64>,
    after: Option<u64>,
    limit: u32,
) -> Result<(Vec<MsgRow>, bool)> {
    let n = limit as u64 + 1;
    let cols = "SELECT seq, id, author_id, client_msg_id, body, sent_at_ms FROM messages WHERE conversation_id = ?";
    let shard = d.db.by_id(conv);
    let mut rows: Vec<MsgRow> = match (before, after) {
        (_, Some(a)) => {
            let mut c = shard.primary.get_conn().await?;
            c.exec(
                format!("{cols} AND seq > ? ORDER BY seq ASC LIMIT ?"),
                (conv.0, a, n),
            )
            .await?
        }
        (Some(b), None) => {
            let mut c = shard.replica.get_conn().await?;
            c.exec(
                format!("{cols} AND seq < ? ORDER BY seq DESC LIMIT ?"),
                (conv.0, b, n),
            )
            .await?
        }
        (None, None) => {
            let mut c = shard.primary.get_conn().await?;
            c.exec(format!("{cols} ORDER BY seq DESC LIMIT ?"), (conv.0, n))
                .await?
        }
    };
    let more = rows.len() as u64 == n;
    rows.truncate(limit as usize);
    rows.sort_by_key(|r| r.0);
    Ok((rows, more))
}

fn not_connected() -> ErrorBody {
    ErrorBody::new(
        ErrorCode::Forbidden,
        "you can only message your connections",
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

    #[test]
    fn deleted_authors_are_shown_as_deleted() {
        let mut names = HashMap::new();
        names.insert(Id(1), ("ann".to_string(), false));
        names.insert(Id(2), ("bob".to_string(), true));
        let m = to_message(Id(9), (1, 10, 1, "c".into(), "hi".into(), 5), &names);
        assert_eq!((m.author_id, m.author.as_str()), (Some(Id(1)), "ann"));
        let m = to_message(Id(9), (2, 11, 2, "c".into(), "yo".into(), 6), &names);
        assert_eq!((m.author_id, m.author.as_str()), (None, DELETED));
    }
}
