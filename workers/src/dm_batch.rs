//! The direct-message worker's batch handler. The `dm.send`s of a batch are handled together:
//! their sessions checked concurrently, their messages stored with one transaction per
//! conversation shard ([`dms::send_many`]), their recipients' connections found in one pipelined
//! registry lookup, and everything the batch has for one edge — the senders' replies and the
//! `dm.message` deliveries to both members' sockets — published as one record on that edge's
//! topic. A message thus costs at most three Kafka records end to end (the request, and one
//! record per edge it reaches, shared with the rest of the batch) instead of five, and the router
//! is not on its path.
//!
//! Every other request of the batch is handled on its own by the [`Dispatcher`], in order.
//! An infrastructure failure during the batched path retries the batch's sends (a stored message
//! is found again by its client_msg_id, so nothing is stored twice); an error that retrying
//! cannot fix sends them through the one-at-a-time path, where only the record at fault is
//! dead-lettered.

use crate::dispatch::{
    authenticate, classify, close_message, error_message, reply_message, revokes, Dispatcher,
};
use crate::dms::{self, NewSend};
use futures::future::BoxFuture;
use runtime::consume::{BatchHandler, Failure, Handler, Inbound, NOT_ATTEMPTED};
use runtime::metrics;
use runtime::registry::{plan, users_of};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use topics::{validate, EdgeMessage, Envelope, ErrorBody, ErrorCode, Id, Request, Response};

/// The reason given to the sessions of a socket closed because its session is gone.
const SESSION_GONE: &str = "session expired or revoked";

pub struct DmBatch {
    pub dispatcher: Arc<Dispatcher>,
}

/// A decoded `dm.send` of the batch.
struct SendRecord<'a> {
    record: &'a Inbound,
    env: Envelope,
    conv: Id,
    client_msg_id: String,
    text: String,
}

/// The record as a `dm.send` to batch, or `None` (anything else is handled on its own).
fn as_send(record: &Inbound) -> Option<SendRecord<'_>> {
    let env = Envelope::decode(&record.payload).ok()?;
    let Request::DmSend {
        conversation_id,
        client_msg_id,
        text,
    } = &env.request
    else {
        return None;
    };
    Some(SendRecord {
        record,
        conv: *conversation_id,
        client_msg_id: client_msg_id.clone(),
        text: text.clone(),
        env,
    })
}

impl BatchHandler for DmBatch {
    fn handle_batch<'a>(
        &'a self,
        records: &'a [Inbound],
    ) -> BoxFuture<'a, Vec<Result<(), Failure>>> {
        Box::pin(async move {
            let mut out: Vec<Option<Result<(), Failure>>> = records.iter().map(|_| None).collect();
            let mut sends: Vec<(usize, SendRecord)> = Vec::new();
            let mut others: Vec<usize> = Vec::new();
            for (i, record) in records.iter().enumerate() {
                match as_send(record) {
                    Some(send) => sends.push((i, send)),
                    None => others.push(i),
                }
            }
            self.one_by_one(records, &others, &mut out).await;
            if !sends.is_empty() {
                let batch: Vec<&SendRecord> = sends.iter().map(|(_, s)| s).collect();
                match self.sends(&batch).await {
                    Ok(()) => {
                        for (i, _) in &sends {
                            out[*i] = Some(Ok(()));
                        }
                    }
                    Err(Failure::Transient(reason)) => {
                        tracing::warn!(%reason, sends = sends.len(), "batch of sends failed; retrying");
                        for (i, _) in &sends {
                            out[*i] = Some(Err(Failure::Transient(reason.clone())));
                        }
                    }
                    Err(Failure::Poison(reason)) => {
                        tracing::warn!(%reason, "batch of sends refused; handling them one by one");
                        let idx: Vec<usize> = sends.iter().map(|(i, _)| *i).collect();
                        self.one_by_one(records, &idx, &mut out).await;
                    }
                }
            }
            out.into_iter()
                .map(|o| o.unwrap_or_else(|| Err(Failure::Transient(NOT_ATTEMPTED.into()))))
                .collect()
        })
    }
}

impl DmBatch {
    /// Records handled on their own, in order; after a transient failure, the later records of
    /// the same key are not attempted (they are retried with it).
    async fn one_by_one(
        &self,
        records: &[Inbound],
        which: &[usize],
        out: &mut [Option<Result<(), Failure>>],
    ) {
        let mut failed: HashSet<Option<&[u8]>> = HashSet::new();
        for &i in which {
            let key = records[i].key.as_deref();
            if failed.contains(&key) {
                out[i] = Some(Err(Failure::Transient(NOT_ATTEMPTED.into())));
                continue;
            }
            let result = self.dispatcher.handle(&records[i]).await;
            if matches!(result, Err(Failure::Transient(_))) {
                failed.insert(key);
            }
            out[i] = Some(result);
        }
    }

    /// Handle the batch's sends together; `Ok` once every effect is durable (messages committed,
    /// edge records acknowledged).
    async fn sends(&self, batch: &[&SendRecord<'_>]) -> Result<(), Failure> {
        let deps = &self.dispatcher.deps;
        let callers =
            futures::future::join_all(batch.iter().map(|s| authenticate(deps, &s.env))).await;
        let mut checked: Vec<Result<NewSend, ErrorBody>> = Vec::with_capacity(batch.len());
        // Per send: what to store, or the refusal to answer.
        for (s, caller) in batch.iter().zip(callers) {
            let caller = match caller {
                Ok(c) => c.ok_or_else(|| ErrorBody::new(ErrorCode::Unauthorized, "no session")),
                Err(crate::Error::Reply(body)) => Err(body),
                Err(e) => return Err(classify(e)),
            };
            checked.push(caller.and_then(|caller| {
                validate::text(&s.text)?;
                validate::client_msg_id(&s.client_msg_id)?;
                Ok(NewSend {
                    me: caller.user_id,
                    username: caller.username,
                    conv: s.conv,
                    client_msg_id: &s.client_msg_id,
                    text: &s.text,
                })
            }));
        }
        let to_store: Vec<NewSend> = checked
            .iter()
            .filter_map(|c| c.as_ref().ok().cloned())
            .collect();
        let mut stored = dms::send_many(deps, &to_store)
            .await
            .map_err(classify)?
            .into_iter();
        // Per send, in order: the records for its own edge, and the deliveries.
        let mut answers: Vec<(EdgeMessage, Option<EdgeMessage>)> = Vec::with_capacity(batch.len());
        let mut deliveries = Vec::new();
        for (s, c) in batch.iter().zip(&checked) {
            let result = match c {
                Ok(_) => stored.next().expect("one answer per stored send"),
                Err(body) => Err(body.clone()),
            };
            let kind = s.env.request.kind();
            match result {
                Ok(st) => {
                    deps.metrics
                        .inc(metrics::REQUESTS_HANDLED_TOTAL, &[("kind", kind)]);
                    let mut outcome = dms::sent_outcome(st);
                    let response = outcome.response.take().unwrap_or(Response::Ok);
                    answers.push((reply_message(&s.env, response, None, false), None));
                    deliveries.push((answers.len() - 1, outcome.deliveries));
                }
                Err(err) => {
                    deps.metrics.inc(
                        metrics::REQUEST_ERRORS_TOTAL,
                        &[("kind", kind), ("code", err.code.as_str())],
                    );
                    let close = revokes(&s.env, &err).then(|| close_message(&s.env, SESSION_GONE));
                    answers.push((error_message(&s.env, err), close));
                }
            }
        }
        let users: Vec<topics::Id> = deliveries
            .iter()
            .flat_map(|(_, ds)| ds.iter().flat_map(users_of))
            .collect();
        let reach = if users.is_empty() {
            Default::default()
        } else {
            let c = deps
                .redis
                .get()
                .await
                .map_err(|e| Failure::Transient(e.to_string()))?;
            deps.registry
                .reach(&*c, &users, runtime::now_ms())
                .await
                .map_err(|e| Failure::Transient(e.to_string()))?
        };
        let mut per_edge: BTreeMap<String, Vec<EdgeMessage>> = BTreeMap::new();
        let mut deliveries = deliveries.into_iter().peekable();
        for (n, ((reply, close), s)) in answers.into_iter().zip(batch).enumerate() {
            let items = per_edge.entry(s.env.edge.clone()).or_default();
            items.push(reply);
            items.extend(close);
            while let Some((_, ds)) = deliveries.next_if(|(at, _)| *at == n) {
                for d in &ds {
                    let users = users_of(d);
                    for (edge, msg) in plan(d, reach.conns_of(&users), &reach.live) {
                        per_edge.entry(edge).or_default().push(msg);
                    }
                }
            }
        }
        let traceparent = batch[0].record.traceparent.as_deref();
        let key = batch[0].env.key();
        let publishes = per_edge.into_iter().map(|(edge, mut items)| {
            let msg = if items.len() == 1 {
                items.pop().expect("one item")
            } else {
                EdgeMessage::Batch { items }
            };
            let payload = serde_json::to_vec(&msg).expect("edge messages serialise");
            let topic = deps.topics.edge(&edge);
            let key = &key;
            async move {
                deps.publisher
                    .send(&topic, key, &payload, traceparent)
                    .await
            }
        });
        for sent in futures::future::join_all(publishes).await {
            sent.map_err(|e| Failure::Transient(e.to_string()))?;
        }
        Ok(())
    }
}
