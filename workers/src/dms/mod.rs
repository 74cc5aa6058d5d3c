//! Direct conversations. A pair of users has exactly one conversation, found through the
//! `dm_pairs` directory (sharded by the pair key); the conversation and its messages live on the
//! conversation's shard, each member's membership (read position) on the member's shard.
//! Sequence numbers are assigned in the same transaction as the message row, under the
//! conversation row's lock; `(conversation, author, client_msg_id)` is unique, so a retried send
//! returns the original message instead of storing a second one.

pub mod batch;

use crate::context::{event_to, Ctx, Deps, Outcome};
use crate::db::exec_drop;
use crate::invites;
use crate::users::{profiles, DELETED};
use crate::{refuse, Result};
use mysql_async::prelude::*;
use mysql_async::TxOpts;

use std::collections::{BTreeMap, HashMap, HashSet};
use topics::frames::{ConversationSummary, InviteState, Message, SyncedConversation};
use topics::{validate, Delivery, ErrorBody, ErrorCode, Event, Id, Request, Response};

/// The direct-message domain's requests (sends also come in batches: [`batch`]).
pub async fn handle(ctx: &Ctx<'_>) -> crate::Result<Outcome> {
    match &ctx.env.request {
        Request::DmOpen { user_id } => open(ctx, *user_id).await,
        Request::DmList => list(ctx).await,
        Request::DmHistory {
            conversation_id,
            before_seq,
            after_seq,
            limit,
        } => history(ctx, *conversation_id, *before_seq, *after_seq, *limit).await,
        Request::DmSend {
            conversation_id,
            client_msg_id,
            text,
        } => send(ctx, *conversation_id, client_msg_id, text).await,
        Request::DmRead {
            conversation_id,
            seq,
        } => read(ctx, *conversation_id, *seq).await,
        Request::DmSync { since } => sync(ctx, since).await,
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
        _ => return Err(not_connected().into()),
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

fn not_connected() -> ErrorBody {
    ErrorBody::new(
        ErrorCode::Forbidden,
        "you can only message your connections",
    )
}

/// Whether a new message may be stored: `not_found` when I am not in the conversation (as
/// everywhere else); otherwise whether the link is accepted. A send that is not allowed may
/// still be the retry of a message stored while we were connected: the caller returns that one
/// and refuses only new messages.
fn may_send(gate: Option<Option<String>>) -> std::result::Result<bool, ErrorBody> {
    match gate {
        None => Err(not_found()),
        Some(state) => Ok(state.as_deref() == Some("accepted")),
    }
}

/// One `dm.send` of a batch, its caller authenticated and its input validated.
#[derive(Clone, Debug)]
pub struct NewSend<'a> {
    pub me: Id,
    pub username: String,
    pub conv: Id,
    pub client_msg_id: &'a str,
    pub text: &'a str,
}

/// A send that was stored now, or earlier (`duplicate`: a retry of the same client_msg_id).
#[derive(Clone, Debug, PartialEq)]
pub struct Stored {
    pub message: Message,
    pub duplicate: bool,
    /// Both members, who get the `dm.message` event.
    pub members: [Id; 2],
}

/// `?, ?, …` with `n` placeholders.
fn marks(n: usize) -> String {
    vec!["?"; n].join(", ")
}

/// `(a) OR (a) OR …`, `n` times: one lookup per row of a composite key, which the range
/// optimizer turns into `n` point reads of the index.
fn any_of(n: usize, clause: &str) -> String {
    vec![format!("({clause})"); n].join(" OR ")
}

/// What each sender's own shard says before its sends: per (me, conversation), `None` when I am
/// not a member, else the state of my link with the peer (`None` when there is no link). Both
/// rows are keyed by my id: one query per shard of senders, on the primary, so that a removal
/// is seen as soon as it is written.
async fn send_gates(d: &Deps, sends: &[NewSend<'_>]) -> Result<Vec<Option<Option<String>>>> {
    let mut by_shard: BTreeMap<usize, Vec<(Id, Id)>> = BTreeMap::new();
    for s in sends {
        by_shard
            .entry(d.db.by_id(s.me).index)
            .or_default()
            .push((s.me, s.conv));
    }
    let lookups = by_shard.into_values().map(|pairs| async move {
        let shard = d.db.by_id(pairs[0].0);
        let sql = format!(
            "SELECT m.user_id, m.conversation_id, l.state FROM memberships m LEFT JOIN links l ON l.user_id = m.user_id AND l.peer_id = m.peer_id WHERE {}",
            any_of(pairs.len(), "m.user_id = ? AND m.conversation_id = ?")
        );
        let params: Vec<mysql_async::Value> =
            pairs.iter().flat_map(|(me, conv)| [me.0.into(), conv.0.into()]).collect();
        let mut c = shard.primary.get_conn().await?;
        let rows: Vec<(u64, u64, Option<String>)> = c.exec(sql, params).await?;
        Ok::<_, crate::Error>(rows)
    });
    let mut gates: HashMap<(u64, u64), Option<String>> = HashMap::new();
    for rows in futures::future::try_join_all(lookups).await? {
        gates.extend(
            rows.into_iter()
                .map(|(me, conv, state)| ((me, conv), state)),
        );
    }
    Ok(sends
        .iter()
        .map(|s| gates.get(&(s.me.0, s.conv.0)).cloned())
        .collect())
}

/// Store a batch of messages, each once per client_msg_id, and say per send what it became:
/// [`Stored`] or the refusal the sender gets.
///
/// The sends of one conversation shard are committed in one transaction: the conversation rows
/// locked in id order (`FOR UPDATE`, so concurrent batches on other workers queue rather than
/// deadlock), one lookup of the client_msg_ids already stored, one multi-row INSERT, one UPDATE
/// of every `last_seq`, one COMMIT. Sequence numbers follow the batch's order, which is the
/// order of each conversation's partition; the lock makes them strictly increasing and gap-free
/// whoever else writes the conversation. A retry in the same batch is answered with the message
/// stored by the first.
///
/// Only between connections, like `dm.open`: after a `connection.remove` the conversation stays
/// readable, but new messages are refused with `forbidden` until a new invite is accepted (a
/// retry of a message stored before still returns it as a duplicate). The link is read before
/// the conversation's transaction, from the sender's shard (the conversation usually lives on
/// another one). A removal deletes the removed user's row first, so every send handled after
/// that write is refused, and so is every send made after the removal's reply or its
/// `connection_removed` event; only a send already past this check when the row goes can still
/// be stored.
pub async fn send_many(
    d: &Deps,
    sends: &[NewSend<'_>],
) -> Result<Vec<std::result::Result<Stored, ErrorBody>>> {
    let gates = send_gates(d, sends).await?;
    let mut out: Vec<Option<std::result::Result<Stored, ErrorBody>>> = vec![None; sends.len()];
    let mut by_shard: BTreeMap<usize, Vec<(usize, bool)>> = BTreeMap::new();
    for (i, gate) in gates.into_iter().enumerate() {
        match may_send(gate) {
            Ok(connected) => by_shard
                .entry(d.db.by_id(sends[i].conv).index)
                .or_default()
                .push((i, connected)),
            Err(e) => out[i] = Some(Err(e)),
        }
    }
    let commits = by_shard
        .into_values()
        .map(|items| commit_shard(d, sends, items));
    for results in futures::future::try_join_all(commits).await? {
        for (i, r) in results {
            out[i] = Some(r);
        }
    }
    Ok(out
        .into_iter()
        .map(|r| r.expect("every send has an answer"))
        .collect())
}

fn not_found() -> ErrorBody {
    ErrorBody::new(ErrorCode::NotFound, "no such conversation")
}

/// One shard's transaction of [`send_many`]: `items` are (index into `sends`, connected).
async fn commit_shard(
    d: &Deps,
    sends: &[NewSend<'_>],
    items: Vec<(usize, bool)>,
) -> Result<Vec<(usize, std::result::Result<Stored, ErrorBody>)>> {
    let mut convs: Vec<u64> = items.iter().map(|&(i, _)| sends[i].conv.0).collect();
    convs.sort_unstable();
    convs.dedup();
    let mut c =
        d.db.by_id(sends[items[0].0].conv)
            .primary
            .get_conn()
            .await?;
    let mut tx = c.start_transaction(TxOpts::default()).await?;
    let rows: Vec<(u64, u64, u64, u64)> = tx
        .exec(
            format!(
                "SELECT id, user_lo, user_hi, last_seq FROM conversations WHERE id IN ({}) ORDER BY id FOR UPDATE",
                marks(convs.len())
            ),
            convs.clone(),
        )
        .await?;
    let mut last: HashMap<u64, (Id, Id, u64)> = rows
        .into_iter()
        .map(|(id, lo, hi, seq)| (id, (Id(lo), Id(hi), seq)))
        .collect();
    let members: Vec<usize> = items
        .iter()
        .map(|&(i, _)| i)
        .filter(|&i| {
            let s = &sends[i];
            last.get(&s.conv.0)
                .is_some_and(|&(lo, hi, _)| lo == s.me || hi == s.me)
        })
        .collect();
    // Keyed by (conversation, author, client_msg_id), which compares byte for byte.
    let mut stored: HashMap<(u64, u64, String), MsgRow> = HashMap::new();
    if !members.is_empty() {
        let params: Vec<mysql_async::Value> = members
            .iter()
            .flat_map(|&i| {
                let s = &sends[i];
                [s.conv.0.into(), s.me.0.into(), s.client_msg_id.into()]
            })
            .collect();
        let found: Vec<(u64, u64, u64, u64, String, String, u64)> = tx
            .exec(
                format!(
                    "SELECT conversation_id, seq, id, author_id, client_msg_id, body, sent_at_ms FROM messages WHERE {}",
                    any_of(members.len(), "conversation_id = ? AND author_id = ? AND client_msg_id = ?")
                ),
                params,
            )
            .await?;
        for (conv, seq, id, author, cmid, body, sent) in found {
            stored.insert(
                (conv, author, cmid.clone()),
                (seq, id, author, cmid, body, sent),
            );
        }
    }
    let members: HashSet<usize> = members.into_iter().collect();
    let mut out = Vec::with_capacity(items.len());
    let mut inserts: Vec<mysql_async::Value> = Vec::new();
    let mut new_rows = 0usize;
    let now = runtime::now_ms();
    for (i, connected) in items {
        let s = &sends[i];
        let Some(&(lo, hi, last_seq)) = last.get(&s.conv.0).filter(|_| members.contains(&i)) else {
            out.push((i, Err(not_found())));
            continue;
        };
        let key = (s.conv.0, s.me.0, s.client_msg_id.to_string());
        let (row, duplicate) = match stored.get(&key) {
            Some(row) => (row.clone(), true),
            None if !connected => {
                out.push((i, Err(not_connected())));
                continue;
            }
            None => {
                let seq = last_seq + 1;
                last.insert(s.conv.0, (lo, hi, seq));
                let id = d.ids.next();
                let row: MsgRow = (
                    seq,
                    id.0,
                    s.me.0,
                    s.client_msg_id.to_string(),
                    s.text.to_string(),
                    now,
                );
                inserts.extend([
                    s.conv.0.into(),
                    seq.into(),
                    id.0.into(),
                    s.me.0.into(),
                    s.client_msg_id.into(),
                    s.text.into(),
                    now.into(),
                ]);
                new_rows += 1;
                stored.insert(key, row.clone());
                (row, false)
            }
        };
        let mut names = HashMap::new();
        names.insert(s.me, (s.username.clone(), false));
        let stored = Stored {
            message: to_message(s.conv, row, &names),
            duplicate,
            members: [lo, hi],
        };
        out.push((i, Ok(stored)));
    }
    if new_rows == 0 {
        tx.rollback().await?;
        return Ok(out);
    }
    tx.exec_drop(
        format!(
            "INSERT INTO messages (conversation_id, seq, id, author_id, client_msg_id, body, sent_at_ms) VALUES {}",
            vec!["(?, ?, ?, ?, ?, ?, ?)"; new_rows].join(", ")
        ),
        inserts,
    )
    .await?;
    let moved: Vec<(u64, u64)> = convs
        .iter()
        .filter_map(|id| last.get(id).map(|&(_, _, seq)| (*id, seq)))
        .collect();
    let mut params: Vec<mysql_async::Value> = Vec::with_capacity(moved.len() * 3);
    for &(id, seq) in &moved {
        params.extend([id.into(), seq.into()]);
    }
    params.extend(moved.iter().map(|&(id, _)| id.into()));
    tx.exec_drop(
        format!(
            "UPDATE conversations SET last_seq = CASE id {} END WHERE id IN ({})",
            vec!["WHEN ? THEN ?"; moved.len()].join(" "),
            marks(moved.len())
        ),
        params,
    )
    .await?;
    tx.commit().await?;
    d.metrics
        .get(runtime::metrics::MESSAGES_PERSISTED_TOTAL, &[])
        .add(new_rows as u64);
    Ok(out)
}

/// `dm.send` on its own: a batch of one ([`send_many`]); acknowledged to the sender and
/// delivered to every device of both members.
pub async fn send(ctx: &Ctx<'_>, conv: Id, client_msg_id: &str, text: &str) -> Result<Outcome> {
    let caller = ctx.caller()?;
    validate::text(text)?;
    validate::client_msg_id(client_msg_id)?;
    let one = NewSend {
        me: caller.user_id,
        username: caller.username.clone(),
        conv,
        client_msg_id,
        text,
    };
    let stored = send_many(ctx.deps, &[one])
        .await?
        .pop()
        .expect("one answer per send")?;
    let (response, delivery) = sent(stored);
    Ok(Outcome::from(response).deliver(delivery))
}

/// The reply to a stored send, and its `dm.message` event to both members.
pub fn sent(s: Stored) -> (Response, Delivery) {
    let reply = Response::Sent {
        message: s.message.clone(),
        duplicate: s.duplicate,
    };
    let event = event_to(s.members.to_vec(), Event::DmMessage { message: s.message });
    (reply, event)
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
        let code = |e: ErrorBody| e.code;
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
