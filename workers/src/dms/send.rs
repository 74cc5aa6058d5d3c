//! `dm.send`: store a message once per client_msg_id and deliver it to both members, alone or
//! as part of a batch ([`super::batch`]).

use super::{not_found, store};
use crate::context::{event_to, Caller, Ctx, Deps, Outcome};
use crate::{Error, Result};
use std::collections::BTreeMap;
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
    /// The sender's message that must be stored before this one (`after_client_msg_id`).
    pub after: Option<&'a str>,
}

impl<'a> NewSend<'a> {
    /// `caller`'s send, its input validated (the same checks alone or in a batch).
    pub fn checked(
        caller: Caller,
        conv: Id,
        client_msg_id: &'a str,
        text: &'a str,
        after: Option<&'a str>,
    ) -> std::result::Result<NewSend<'a>, ErrorBody> {
        validate::text(text)?;
        validate::client_msg_id(client_msg_id)?;
        validate::after_client_msg_id(client_msg_id, after)?;
        Ok(NewSend {
            me: caller.user_id,
            username: caller.username,
            conv,
            client_msg_id,
            text,
            after,
        })
    }
}

/// A send that was stored now, or earlier (`duplicate`: a retry of the same client_msg_id).
#[derive(Clone, Debug, PartialEq)]
pub struct Stored {
    pub message: Message,
    pub duplicate: bool,
    /// Both members, who get the `dm.message` event.
    pub members: [Id; 2],
}

/// Store a batch of messages, each once per client_msg_id, and say per send what it became:
/// [`Stored`] or the refusal the sender gets.
///
/// A send that names the message typed before it (`after`) is stored only once that one is —
/// stored earlier, or earlier in this batch — and refused `out_of_order` otherwise, storing
/// nothing: a resend of a message whose first attempt was lost or refused can then never land
/// behind its author's later messages, which wait for it and are sent again after it.
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
    let gates = store::send_gates(d, sends).await?;
    let mut out: Vec<Option<std::result::Result<Stored, ErrorBody>>> = vec![None; sends.len()];
    let mut by_shard: BTreeMap<usize, Vec<(usize, bool)>> = BTreeMap::new();
    for (i, gate) in gates.into_iter().enumerate() {
        match gate.map(may_send) {
            Ok(Ok(connected)) => by_shard
                .entry(d.db.by_id(sends[i].conv).index)
                .or_default()
                .push((i, connected)),
            Ok(Err(e)) => out[i] = Some(Err(e)),
            Err(e) => out[i] = Some(Err(crate::dispatch::shard_down(&d.metrics, &e))),
        }
    }
    // Each conversation shard's transaction under its breaker: the sends of a shard known down
    // are answered `unavailable` and the others are stored; any other failure retries the batch
    // (what was stored is found again by its client_msg_id).
    let commits = by_shard.into_iter().map(|(shard, items)| {
        let at: Vec<usize> = items.iter().map(|&(i, _)| i).collect();
        let commit = d.db.all()[shard].guard(store::commit_shard(d, sends, items));
        async move { (at, commit.await) }
    });
    for (at, results) in futures::future::join_all(commits).await {
        match results {
            Ok(results) => {
                for (i, r) in results {
                    out[i] = Some(r);
                }
            }
            Err(e @ Error::ShardDown { .. }) => {
                for i in at {
                    out[i] = Some(Err(crate::dispatch::shard_down(&d.metrics, &e)));
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out
        .into_iter()
        .map(|r| r.expect("every send has an answer"))
        .collect())
}

/// `dm.send` on its own: a batch of one ([`send_many`]); acknowledged to the sender and
/// delivered to every device of both members.
pub async fn send(
    ctx: &Ctx<'_>,
    conv: Id,
    client_msg_id: &str,
    text: &str,
    after: Option<&str>,
) -> Result<Outcome> {
    let one = NewSend::checked(ctx.caller()?.clone(), conv, client_msg_id, text, after)?;
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
    let stored_at = s.message.sent_at_ms;
    let event = event_to(s.members.to_vec(), Event::DmMessage { message: s.message });
    // a duplicate was stored earlier: its age is not this delivery's latency
    let event = if s.duplicate {
        event
    } else {
        event.persisted_at(stored_at)
    };
    (reply, event)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_message_is_delivered_with_its_commit_time_a_duplicate_without() {
        let stored = |duplicate| Stored {
            message: Message {
                conversation_id: Id(1),
                seq: 1,
                message_id: Id(2),
                author_id: Some(Id(3)),
                author: "ann".into(),
                client_msg_id: "m".into(),
                text: "hi".into(),
                sent_at_ms: 1_767_225_620_000,
            },
            duplicate,
            members: [Id(3), Id(4)],
        };
        assert_eq!(
            sent(stored(false)).1.persisted_at_ms,
            Some(1_767_225_620_000)
        );
        assert_eq!(sent(stored(true)).1.persisted_at_ms, None);
    }
    use crate::dms::not_connected;
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
