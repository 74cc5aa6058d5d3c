//! `dm.send`: store a message once per client_msg_id and deliver it to both members, alone or
//! as part of a batch ([`super::batch`]).

use super::{not_connected, not_found, to_message, MsgRow};
use crate::context::{event_to, Ctx, Deps, Outcome};
use crate::Result;
use mysql_async::prelude::*;
use mysql_async::TxOpts;
use std::collections::{BTreeMap, HashMap, HashSet};
use topics::frames::Message;
use topics::{validate, Delivery, ErrorBody, Event, Id, Response};

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

#[cfg(test)]
mod tests {
    use super::*;
    use topics::ErrorCode;

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
}
