//! The SQL of direct messages and the mapping of its rows: the `dm_pairs` directory, the
//! conversation rows and their messages (on the conversation's shard), and the memberships (on
//! each member's shard). The commands of this folder read as parse → check → store → reply.

use super::{not_connected, not_found, out_of_order, NewSend, Stored};
use crate::context::Deps;
use crate::db::{exec_drop, rows, Shards};
use crate::users::DELETED;
use crate::Result;
use mysql_async::prelude::*;
use mysql_async::TxOpts;
use std::collections::{BTreeMap, HashMap, HashSet};
use topics::frames::Message;
use topics::{ErrorBody, Id};

/// A message row: (seq, id, author_id, client_msg_id, body, sent_at_ms).
pub type MsgRow = (u64, u64, u64, String, String, u64);

/// Unread messages are counted up to this many per conversation.
pub const UNREAD_MAX: u64 = 1000;

/// A message row as the client sees it: the author's name from `names`, `[deleted]` (and no
/// author id) for a deleted account.
pub fn to_message(conv: Id, r: MsgRow, names: &HashMap<Id, (String, bool)>) -> Message {
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

/// (user_lo, user_hi, last_seq) of a conversation, if it exists.
pub async fn conversation(db: &Shards, conv: Id) -> Result<Option<(Id, Id, u64)>> {
    let row: Option<(u64, u64, u64)> = db
        .by_id(conv)
        .on_primary(async |c| {
            Ok(c.exec_first(
                "SELECT user_lo, user_hi, last_seq FROM conversations WHERE id = ?",
                (conv.0,),
            )
            .await?)
        })
        .await?;
    Ok(row.map(|(lo, hi, last)| (Id(lo), Id(hi), last)))
}

/// The conversation of the pair `key`: the one already in the directory, else `fresh`.
pub async fn pair_conversation(db: &Shards, key: &str, fresh: Id) -> Result<Option<Id>> {
    let conv: Option<u64> = db
        .by_key(key)
        .on_primary(async |c| {
            c.exec_drop(
                "INSERT IGNORE INTO dm_pairs (pair_key, conversation_id) VALUES (?, ?)",
                (key, fresh.0),
            )
            .await?;
            Ok(c.exec_first(
                "SELECT conversation_id FROM dm_pairs WHERE pair_key = ?",
                (key,),
            )
            .await?)
        })
        .await?;
    Ok(conv.map(Id))
}

/// Create the conversation row of `lo` and `hi` (once).
pub async fn add_conversation(db: &Shards, conv: Id, lo: Id, hi: Id, now: u64) -> Result<()> {
    exec_drop(
        db.by_id(conv),
        "INSERT IGNORE INTO conversations (id, user_lo, user_hi, last_seq, created_at_ms) VALUES (?, ?, ?, 0, ?)",
        (conv.0, lo.0, hi.0, now),
    )
    .await
}

/// Make `user` a member of `conv` (once), on the user's shard.
pub async fn add_membership(db: &Shards, user: Id, conv: Id, peer: Id) -> Result<()> {
    exec_drop(
        db.by_id(user),
        "INSERT IGNORE INTO memberships (user_id, conversation_id, peer_id, last_read_seq) VALUES (?, ?, ?, 0)",
        (user.0, conv.0, peer.0),
    )
    .await
}

/// My read position in `conv` (0 when I am not a member).
pub async fn read_position(db: &Shards, me: Id, conv: Id) -> Result<u64> {
    let seq: Option<u64> = db
        .by_id(me)
        .on_primary(async |c| {
            Ok(c.exec_first(
                "SELECT last_read_seq FROM memberships WHERE user_id = ? AND conversation_id = ?",
                (me.0, conv.0),
            )
            .await?)
        })
        .await?;
    Ok(seq.unwrap_or(0))
}

/// Move my read position up to `seq` (never backwards).
pub async fn mark_read(db: &Shards, me: Id, conv: Id, seq: u64) -> Result<()> {
    exec_drop(
        db.by_id(me),
        "UPDATE memberships SET last_read_seq = GREATEST(last_read_seq, ?) WHERE user_id = ? AND conversation_id = ?",
        (seq, me.0, conv.0),
    )
    .await
}

/// Delete all my memberships (the peers keep theirs, and the conversations stay).
pub async fn delete_memberships(db: &Shards, me: Id) -> Result<()> {
    exec_drop(
        db.by_id(me),
        "DELETE FROM memberships WHERE user_id = ?",
        (me.0,),
    )
    .await
}

/// My conversations (at most 500) with my read position in each: (conversation, last_read_seq).
pub async fn memberships(db: &Shards, me: Id) -> Result<Vec<(Id, u64)>> {
    let rows: Vec<(u64, u64)> = rows(
        db.by_id(me),
        "SELECT conversation_id, last_read_seq FROM memberships WHERE user_id = ? LIMIT 500",
        (me.0,),
    )
    .await?;
    Ok(rows
        .into_iter()
        .map(|(conv, read)| (Id(conv), read))
        .collect())
}

/// A conversation as a list shows it: its members, its last sequence number and the message
/// with that number (none before the first).
#[derive(Clone, Debug, PartialEq)]
pub struct Head {
    pub lo: Id,
    pub hi: Id,
    pub last_seq: u64,
    pub last: Option<MsgRow>,
}

/// `1, 2, 3`: ids written into the statement. The statements of a list differ by their number
/// of conversations (up to 500): sent as text rather than prepared, they do not crowd the send
/// path's statements out of each connection's cache ([`crate::db`]). Only integers are written.
fn id_list(ids: impl Iterator<Item = u64>) -> String {
    ids.map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
}

type HeadRow = (
    u64,
    u64,
    u64,
    u64,
    Option<u64>,
    Option<u64>,
    Option<u64>,
    Option<String>,
    Option<String>,
    Option<u64>,
);

fn to_head(r: HeadRow) -> (Id, Head) {
    let (conv, lo, hi, last_seq, seq, id, author, cmid, body, sent) = r;
    let last = match (seq, id, author, cmid, body, sent) {
        (Some(seq), Some(id), Some(author), Some(cmid), Some(body), Some(sent)) => {
            Some((seq, id, author, cmid, body, sent))
        }
        _ => None,
    };
    let head = Head {
        lo: Id(lo),
        hi: Id(hi),
        last_seq,
        last,
    };
    (Id(conv), head)
}

/// The heads of these conversations, all on one shard: one query (the conversation rows joined
/// with their last messages), on the primary. Conversations that do not exist are left out.
pub async fn heads(db: &Shards, convs: &[Id]) -> Result<HashMap<Id, Head>> {
    let Some(first) = convs.first() else {
        return Ok(HashMap::new());
    };
    let sql = format!(
        "SELECT c.id, c.user_lo, c.user_hi, c.last_seq, m.seq, m.id, m.author_id, m.client_msg_id, m.body, m.sent_at_ms \
         FROM conversations c LEFT JOIN messages m ON m.conversation_id = c.id AND m.seq = c.last_seq \
         WHERE c.id IN ({})",
        id_list(convs.iter().map(|c| c.0))
    );
    let rows: Vec<HeadRow> = db
        .by_id(*first)
        .on_primary(async |c| Ok(c.query(sql).await?))
        .await?;
    Ok(rows.into_iter().map(to_head).collect())
}

/// How many messages of others follow my read position, per conversation (at most
/// [`UNREAD_MAX`] each), for these (conversation, last_read_seq), all on one shard: one query
/// (a bounded count per conversation, joined by `UNION ALL`), on the primary.
pub async fn unread(db: &Shards, me: Id, convs: &[(Id, u64)]) -> Result<HashMap<Id, u64>> {
    let Some((first, _)) = convs.first() else {
        return Ok(HashMap::new());
    };
    let counts = convs
        .iter()
        .enumerate()
        .map(|(i, (conv, read))| {
            format!(
                "SELECT {conv}, COUNT(*) FROM (SELECT 1 FROM messages WHERE conversation_id = {conv} AND seq > {read} AND author_id <> {me} LIMIT {UNREAD_MAX}) t{i}",
                conv = conv.0,
                me = me.0,
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    let rows: Vec<(u64, u64)> = db
        .by_id(*first)
        .on_primary(async |c| Ok(c.query(counts).await?))
        .await?;
    Ok(rows.into_iter().map(|(conv, n)| (Id(conv), n)).collect())
}

/// One page of a conversation's messages, ascending. `after_seq`: the page after it;
/// `before_seq`: the page before it (older history, read from the replica); neither: the latest.
pub async fn page(
    db: &Shards,
    conv: Id,
    before: Option<u64>,
    after: Option<u64>,
    limit: u32,
) -> Result<(Vec<MsgRow>, bool)> {
    let n = limit as u64 + 1;
    let cols = "SELECT seq, id, author_id, client_msg_id, body, sent_at_ms FROM messages WHERE conversation_id = ?";
    let shard = db.by_id(conv);
    let mut rows: Vec<MsgRow> = match (before, after) {
        (_, Some(a)) => {
            shard
                .on_primary(async |c| {
                    Ok(c.exec(
                        format!("{cols} AND seq > ? ORDER BY seq ASC LIMIT ?"),
                        (conv.0, a, n),
                    )
                    .await?)
                })
                .await?
        }
        (Some(b), None) => {
            shard
                .on_replica(async |c| {
                    Ok(c.exec(
                        format!("{cols} AND seq < ? ORDER BY seq DESC LIMIT ?"),
                        (conv.0, b, n),
                    )
                    .await?)
                })
                .await?
        }
        (None, None) => {
            shard
                .on_primary(async |c| {
                    Ok(
                        c.exec(format!("{cols} ORDER BY seq DESC LIMIT ?"), (conv.0, n))
                            .await?,
                    )
                })
                .await?
        }
    };
    let more = rows.len() as u64 == n;
    rows.truncate(limit as usize);
    rows.sort_by_key(|r| r.0);
    Ok((rows, more))
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
/// is seen as soon as it is written. Each query runs under its shard's breaker
/// ([`crate::db::Shard::guard`]): the sends of a sender shard known down get
/// [`crate::Error::ShardDown`] (the others go on); any other failure fails them all.
pub async fn send_gates(d: &Deps, sends: &[NewSend<'_>]) -> Result<Vec<Result<Gate>>> {
    let mut by_shard: BTreeMap<usize, Vec<(Id, Id)>> = BTreeMap::new();
    for s in sends {
        by_shard
            .entry(d.db.by_id(s.me).index)
            .or_default()
            .push((s.me, s.conv));
    }
    let lookups = by_shard.into_values().map(|pairs| async move {
        let shard = d.db.by_id(pairs[0].0);
        let index = shard.index;
        let sql = format!(
            "SELECT m.user_id, m.conversation_id, l.state FROM memberships m LEFT JOIN links l ON l.user_id = m.user_id AND l.peer_id = m.peer_id WHERE {}",
            any_of(pairs.len(), "m.user_id = ? AND m.conversation_id = ?")
        );
        let params: Vec<mysql_async::Value> =
            pairs.iter().flat_map(|(me, conv)| [me.0.into(), conv.0.into()]).collect();
        let rows: Result<Vec<(u64, u64, Option<String>)>> = rows(shard, &sql, params).await;
        (index, rows)
    });
    let mut gates: HashMap<(u64, u64), Option<String>> = HashMap::new();
    let mut down: HashMap<usize, bool> = HashMap::new();
    for (index, rows) in futures::future::join_all(lookups).await {
        match rows {
            Ok(rows) => gates.extend(
                rows.into_iter()
                    .map(|(me, conv, state)| ((me, conv), state)),
            ),
            Err(crate::Error::ShardDown { tried, .. }) => {
                down.insert(index, tried);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(sends
        .iter()
        .map(|s| {
            let shard = d.db.by_id(s.me).index;
            match down.get(&shard) {
                Some(&tried) => Err(crate::Error::ShardDown { shard, tried }),
                None => Ok(gates.get(&(s.me.0, s.conv.0)).cloned()),
            }
        })
        .collect())
}

/// What [`send_gates`] found of one send: `None` when the sender is not a member, else the
/// state of the link with the peer.
pub type Gate = Option<Option<String>>;

/// One shard's transaction of [`super::send_many`]: `items` are (index into `sends`, connected).
pub async fn commit_shard(
    d: &Deps,
    sends: &[NewSend<'_>],
    items: Vec<(usize, bool)>,
) -> Result<Vec<(usize, std::result::Result<Stored, ErrorBody>)>> {
    let mut convs: Vec<u64> = items.iter().map(|&(i, _)| sends[i].conv.0).collect();
    convs.sort_unstable();
    convs.dedup();
    let shard = d.db.by_id(sends[items[0].0].conv);
    let mut c = shard.primary_conn().await?;
    let started = std::time::Instant::now();
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
    // Keyed by (conversation, author, client_msg_id), which compares byte for byte: the sends'
    // own ids (a retry returns the stored message) and the ones they must follow.
    let mut stored: HashMap<(u64, u64, String), MsgRow> = HashMap::new();
    let wanted: Vec<(u64, u64, &str)> = members
        .iter()
        .flat_map(|&i| {
            let s = &sends[i];
            let after = s.after.map(|a| (s.conv.0, s.me.0, a));
            std::iter::once((s.conv.0, s.me.0, s.client_msg_id)).chain(after)
        })
        .collect();
    if !wanted.is_empty() {
        let params: Vec<mysql_async::Value> = wanted
            .iter()
            .flat_map(|&(conv, me, cmid)| [conv.into(), me.into(), cmid.into()])
            .collect();
        let found: Vec<(u64, u64, u64, u64, String, String, u64)> = tx
            .exec(
                format!(
                    "SELECT conversation_id, seq, id, author_id, client_msg_id, body, sent_at_ms FROM messages WHERE {}",
                    any_of(wanted.len(), "conversation_id = ? AND author_id = ? AND client_msg_id = ?")
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
        let missing = s
            .after
            .filter(|a| !stored.contains_key(&(s.conv.0, s.me.0, a.to_string())));
        let (row, duplicate) = match (stored.get(&key), missing) {
            (Some(row), _) => (row.clone(), true),
            (None, _) if !connected => {
                out.push((i, Err(not_connected())));
                continue;
            }
            (None, Some(after)) => {
                out.push((i, Err(out_of_order(after))));
                continue;
            }
            (None, None) => {
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
        .dm_commit_seconds(shard.index)
        .observe(runtime::metrics::since(started));
    d.metrics.messages_persisted.inc_by(new_rows as u64);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn a_head_has_a_last_message_only_when_the_join_found_one() {
        let found = (
            9,
            1,
            2,
            3,
            Some(3),
            Some(30),
            Some(2),
            Some("c".into()),
            Some("hi".into()),
            Some(7),
        );
        let (conv, head) = to_head(found);
        assert_eq!(conv, Id(9));
        assert_eq!((head.lo, head.hi, head.last_seq), (Id(1), Id(2), 3));
        assert_eq!(head.last, Some((3, 30, 2, "c".into(), "hi".into(), 7)));
        let (_, head) = to_head((9, 1, 2, 0, None, None, None, None, None, None));
        assert_eq!((head.last_seq, head.last), (0, None));
        assert_eq!(id_list([5, 12, 7].into_iter()), "5, 12, 7");
    }
}
