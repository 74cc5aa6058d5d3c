//! Direct conversations. A pair of users has exactly one conversation, found through the
//! `dm_pairs` directory (sharded by the pair key); the conversation and its messages live on the
//! conversation's shard, each member's membership (read position) on the member's shard.
//! Sequence numbers are assigned in the same transaction as the message row, under the
//! conversation row's lock; `(conversation, author, client_msg_id)` is unique, so a retried send
//! returns the original message instead of storing a second one.

use crate::db::exec_drop;
use crate::dispatch::{event_to, Ctx, Deps, Outcome};
use crate::invites;
use crate::users::{profiles, DELETED};
use crate::{refuse, Result};
use mysql_async::prelude::*;
use mysql_async::TxOpts;
use std::collections::{BTreeMap, HashMap};
use topics::frames::{ConversationSummary, InviteState, Message, SyncedConversation};
use topics::{validate, ErrorCode, Event, Id, Response};

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
        _ => Err(refuse(ErrorCode::NotFound, "no such conversation")),
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

/// Open (or find) the one conversation with `peer`; only between connected users.
pub async fn open(ctx: &Ctx<'_>, peer: Id) -> Result<Outcome> {
    let d = ctx.deps;
    let me = ctx.caller()?.user_id;
    if peer == me {
        return Err(refuse(
            ErrorCode::InvalidInput,
            "you cannot message yourself",
        ));
    }
    match invites::link(d, me, peer).await? {
        Some(l) if l.state == InviteState::Accepted => {}
        _ => return Err(not_connected()),
    }
    let key = pair_key(me, peer);
    let mut c = d.db.by_key(&key).primary.get_conn().await?;
    c.exec_drop(
        "INSERT IGNORE INTO dm_pairs (pair_key, conversation_id) VALUES (?, ?)",
        (&key, d.ids.next().0),
    )
    .await?;
    let conv: u64 = c
        .exec_first(
            "SELECT conversation_id FROM dm_pairs WHERE pair_key = ?",
            (&key,),
        )
        .await?
        .ok_or_else(|| refuse(ErrorCode::Unavailable, "retry"))?;
    drop(c);
    let conv = Id(conv);
    let (lo, hi) = if me <= peer { (me, peer) } else { (peer, me) };
    exec_drop(
        &d.db.by_id(conv).primary,
        "INSERT IGNORE INTO conversations (id, user_lo, user_hi, last_seq, created_at_ms) VALUES (?, ?, ?, 0, ?)",
        (conv.0, lo.0, hi.0, runtime::now_ms()),
    )
    .await?;
    for (user, other) in [(me, peer), (peer, me)] {
        exec_drop(
            &d.db.by_id(user).primary,
            "INSERT IGNORE INTO memberships (user_id, conversation_id, peer_id, last_read_seq) VALUES (?, ?, ?, 0)",
            (user.0, conv.0, other.0),
        )
        .await?;
    }
    let last_read = read_position(d, me, conv).await?;
    Ok(Response::Conversation {
        conversation: summary(d, me, conv, last_read).await?,
    }
    .into())
}

async fn read_position(d: &Deps, me: Id, conv: Id) -> Result<u64> {
    let mut c = d.db.by_id(me).primary.get_conn().await?;
    Ok(c.exec_first(
        "SELECT last_read_seq FROM memberships WHERE user_id = ? AND conversation_id = ?",
        (me.0, conv.0),
    )
    .await?
    .unwrap_or(0))
}

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
    let (rows, more) = page(d, conv, before, after, validate::page(limit, 50)).await?;
    let names = names(d, &[lo, hi]).await?;
    let messages = rows
        .into_iter()
        .map(|r| to_message(conv, r, &names))
        .collect();
    Ok(Response::History {
        conversation_id: conv,
        messages,
        more,
    }
    .into())
}

fn not_connected() -> crate::Error {
    refuse(
        ErrorCode::Forbidden,
        "you can only message your connections",
    )
}

/// What a sender's own shard says before a send: `None` when I am not a member of the
/// conversation, else the state of my link with its peer (`None` when there is no link).
/// Both rows are keyed by my id, so this is one primary-key lookup on one shard; the primary,
/// so that a removal is seen as soon as it is written.
async fn send_gate(d: &Deps, me: Id, conv: Id) -> Result<Option<Option<String>>> {
    let mut c = d.db.by_id(me).primary.get_conn().await?;
    let row: Option<Option<String>> = c
        .exec_first(
            "SELECT l.state FROM memberships m LEFT JOIN links l ON l.user_id = m.user_id AND l.peer_id = m.peer_id WHERE m.user_id = ? AND m.conversation_id = ?",
            (me.0, conv.0),
        )
        .await?;
    Ok(row)
}

/// Whether a new message may be stored: `not_found` when I am not in the conversation (as
/// everywhere else); otherwise whether the link is accepted. A send that is not allowed may
/// still be the retry of a message stored while we were connected: the caller returns that one
/// and refuses only new messages.
fn may_send(gate: Option<Option<String>>) -> Result<bool> {
    match gate {
        None => Err(refuse(ErrorCode::NotFound, "no such conversation")),
        Some(state) => Ok(state.as_deref() == Some("accepted")),
    }
}

/// Store a message (once per client_msg_id), then acknowledge it and deliver it to every device
/// of both members. Only between connections, like `dm.open`: after a `connection.remove` the
/// conversation stays readable, but new messages are refused with `forbidden` until a new invite
/// is accepted (a retry of a message stored before still returns it as a duplicate).
///
/// The link is read before the conversation's transaction, from the sender's shard (the
/// conversation usually lives on another one). A removal deletes the removed user's row first,
/// so every send handled after that write is refused, and so is every send made after the
/// removal's reply or its `connection_removed` event; only a send already past this check when
/// the row goes (sends of one conversation are handled one at a time) can still be stored.
pub async fn send(ctx: &Ctx<'_>, conv: Id, client_msg_id: &str, text: &str) -> Result<Outcome> {
    let d = ctx.deps;
    let me = ctx.caller()?.user_id;
    validate::text(text)?;
    validate::client_msg_id(client_msg_id)?;
    let connected = may_send(send_gate(d, me, conv).await?)?;
    let mut c = d.db.by_id(conv).primary.get_conn().await?;
    let mut tx = c.start_transaction(TxOpts::default()).await?;
    let row: Option<(u64, u64, u64)> = tx
        .exec_first(
            "SELECT user_lo, user_hi, last_seq FROM conversations WHERE id = ? FOR UPDATE",
            (conv.0,),
        )
        .await?;
    let (lo, hi, last_seq) = match row {
        Some((lo, hi, last)) if lo == me.0 || hi == me.0 => (Id(lo), Id(hi), last),
        _ => return Err(refuse(ErrorCode::NotFound, "no such conversation")),
    };
    let existing: Option<MsgRow> = tx
        .exec_first(
            "SELECT seq, id, author_id, client_msg_id, body, sent_at_ms FROM messages WHERE conversation_id = ? AND author_id = ? AND client_msg_id = ?",
            (conv.0, me.0, client_msg_id),
        )
        .await?;
    let (row, duplicate) = match existing {
        Some(r) => {
            tx.rollback().await?;
            (r, true)
        }
        None if !connected => {
            tx.rollback().await?;
            return Err(not_connected());
        }
        None => {
            let seq = last_seq + 1;
            let id = d.ids.next();
            let now = runtime::now_ms();
            tx.exec_drop(
                "UPDATE conversations SET last_seq = ? WHERE id = ?",
                (seq, conv.0),
            )
            .await?;
            tx.exec_drop(
                "INSERT INTO messages (conversation_id, seq, id, author_id, client_msg_id, body, sent_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (conv.0, seq, id.0, me.0, client_msg_id, text, now),
            )
            .await?;
            tx.commit().await?;
            d.metrics
                .inc(runtime::metrics::MESSAGES_PERSISTED_TOTAL, &[]);
            (
                (
                    seq,
                    id.0,
                    me.0,
                    client_msg_id.to_string(),
                    text.to_string(),
                    now,
                ),
                false,
            )
        }
    };
    let mut names = HashMap::new();
    names.insert(me, (ctx.caller()?.username.clone(), false));
    let message = to_message(conv, row, &names);
    Ok(Outcome::from(Response::Sent {
        message: message.clone(),
        duplicate,
    })
    .deliver(event_to(vec![lo, hi], Event::DmMessage { message })))
}

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
        let (rows, more) = page(d, conv, None, Some(seen), validate::PAGE_MAX).await?;
        let names = names(d, &[lo, hi]).await?;
        out.push(SyncedConversation {
            conversation_id: conv,
            messages: rows
                .into_iter()
                .map(|r| to_message(conv, r, &names))
                .collect(),
            more,
        });
    }
    Ok(Response::Synced { conversations: out }.into())
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
    fn only_an_accepted_link_lets_a_member_send() {
        let code = |e: crate::Error| match e {
            crate::Error::Reply(b) => b.code,
            other => panic!("not a refusal: {other}"),
        };
        assert!(may_send(Some(Some("accepted".into()))).unwrap());
        for state in ["pending", "rejected"] {
            assert!(!may_send(Some(Some(state.into()))).unwrap());
        }
        assert!(!may_send(Some(None)).unwrap(), "no link at all");
        assert_eq!(code(may_send(None).unwrap_err()), ErrorCode::NotFound);
        assert_eq!(code(not_connected()), ErrorCode::Forbidden);
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
