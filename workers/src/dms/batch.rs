//! The direct-message worker's batch handler. The `dm.send`s of a batch are handled together:
//! their sessions checked concurrently, their messages stored with one transaction per
//! conversation shard ([`dms::send_many`]), their recipients' connections found with one
//! concurrent registry lookup, and everything the batch has for one edge — the senders' replies and the
//! `dm.message` deliveries to both members' sockets — published as one record on that edge's
//! topic. A message thus costs at most three Kafka records end to end (the request, and one
//! record per edge it reaches, shared with the rest of the batch) instead of five, and the router
//! is not on its path.
//!
//! Every other request of the batch is handled on its own by the [`Dispatcher`], each key's in
//! order and the keys at once ([`by_key`], as for every other role), and dropped if its deadline
//! has passed ([`Dispatcher::expired`]); a send never is: it is stored even late (see there).
//! An infrastructure failure during the batched path retries the batch's sends (a stored message
//! is found again by its client_msg_id, so nothing is stored twice); an error that retrying
//! cannot fix sends them through the one-at-a-time path, where only the record at fault is
//! dead-lettered.

use crate::dispatch::{
    authenticate, classify, close_message, error_message, reply_message, revokes, shard_down,
    Dispatcher,
};
use crate::dms::{self, NewSend};
use futures::future::BoxFuture;
use runtime::consume::{by_key, BatchHandler, Failure, Inbound};
use runtime::registry::{plan, users_of};
use std::collections::BTreeMap;
use std::sync::Arc;
use topics::{Delivery, EdgeMessage, Envelope, ErrorBody, ErrorCode, Id, Request};
use tracing::Instrument;

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
    after: Option<String>,
}

/// The record as a `dm.send` to batch, or `None` (anything else is handled on its own).
fn as_send(record: &Inbound) -> Option<SendRecord<'_>> {
    let env = Envelope::decode(&record.payload).ok()?;
    let Request::DmSend {
        conversation_id,
        client_msg_id,
        text,
        after_client_msg_id,
    } = &env.request
    else {
        return None;
    };
    Some(SendRecord {
        record,
        conv: *conversation_id,
        client_msg_id: client_msg_id.clone(),
        text: text.clone(),
        after: after_client_msg_id.clone(),
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
            let mut send_at: Vec<usize> = Vec::new();
            let mut sends: Vec<SendRecord> = Vec::new();
            let mut others: Vec<usize> = Vec::new();
            for (i, record) in records.iter().enumerate() {
                match as_send(record) {
                    Some(send) => {
                        send_at.push(i);
                        sends.push(send);
                    }
                    None => others.push(i),
                }
            }
            self.one_by_one(records, &others, &mut out).await;
            if !sends.is_empty() {
                match self.sends(&sends).await {
                    Ok(()) => send_at.iter().for_each(|&i| out[i] = Some(Ok(()))),
                    Err(Failure::Transient(reason)) => {
                        tracing::warn!(%reason, sends = sends.len(), "batch of sends failed; retrying");
                        for &i in &send_at {
                            out[i] = Some(Err(Failure::Transient(reason.clone())));
                        }
                    }
                    Err(Failure::Poison(reason)) => {
                        tracing::warn!(%reason, "batch of sends refused; handling them one by one");
                        self.one_by_one(records, &send_at, &mut out).await;
                    }
                }
            }
            out.into_iter()
                .map(|o| o.expect("every record has an outcome"))
                .collect()
        })
    }
}

impl DmBatch {
    /// The records at `which` handled on their own by the dispatcher: each key's in order, the
    /// keys at once ([`by_key`]).
    async fn one_by_one(
        &self,
        records: &[Inbound],
        which: &[usize],
        out: &mut [Option<Result<(), Failure>>],
    ) {
        let picked: Vec<&Inbound> = which.iter().map(|&i| &records[i]).collect();
        let results = by_key(self.dispatcher.as_ref(), picked).await;
        for (&i, result) in which.iter().zip(results) {
            out[i] = Some(result);
        }
    }

    /// Handle the batch's sends together; `Ok` once every effect is durable (messages committed,
    /// edge records acknowledged).
    ///
    /// With tracing on, for the traced sends only (those whose edge sampled them; the others make
    /// no span): a `dm.batch` span (linked to each one's trace) holds the shared work —
    /// the MariaDB transactions and the Redis lookup; each send has
    /// its own `request` span, child of the span in its record's headers, and each item the
    /// batch has for an edge an `edge.publish` span, child of its send's, whose context the item
    /// carries ([`EdgeMessage::Traced`]) so the edge's span for it joins the send's trace. The
    /// edge records carry no context of their own: an untraced send's items get no span there.
    async fn sends(&self, batch: &[SendRecord<'_>]) -> Result<(), Failure> {
        // only the traced sends (their edge sampled them) get spans
        let traced: Vec<bool> = batch.iter().map(|s| s.record.trace.sampled()).collect();
        let any = traced.contains(&true);
        let batch_span = runtime::trace::span_if(any, || {
            let span = tracing::info_span!(parent: None, "dm.batch", sends = batch.len());
            for s in batch {
                runtime::trace::add_link(&span, &s.record.trace);
            }
            span
        });
        let record_spans: Vec<tracing::Span> = if any {
            batch
                .iter()
                .zip(&traced)
                .map(|(s, &traced)| {
                    runtime::trace::span_if(traced, || {
                        let span = tracing::info_span!(
                            parent: None,
                            "request",
                            otel.kind = "consumer",
                            kind = s.env.request.kind(),
                            edge = %s.env.edge,
                        );
                        runtime::trace::set_parent(&span, &s.record.trace);
                        span.follows_from(&batch_span);
                        span
                    })
                })
                .collect()
        } else {
            Vec::new()
        };
        self.sends_in(batch, &record_spans)
            .instrument(batch_span)
            .await
    }

    async fn sends_in(
        &self,
        batch: &[SendRecord<'_>],
        record_spans: &[tracing::Span],
    ) -> Result<(), Failure> {
        let deps = &self.dispatcher.deps;
        let started = std::time::Instant::now();
        let callers =
            futures::future::join_all(batch.iter().map(|s| authenticate(&**deps, &s.env))).await;
        // Per send: what to store, or the refusal to answer.
        let mut checked: Vec<Result<NewSend, ErrorBody>> = Vec::with_capacity(batch.len());
        for (s, caller) in batch.iter().zip(callers) {
            let caller = match caller {
                Ok(c) => c.ok_or_else(|| ErrorBody::new(ErrorCode::Unauthorized, "no session")),
                Err(crate::Error::Reply(body)) => Err(body),
                // a bearer token's account check needs the caller's shard
                Err(e @ crate::Error::ShardDown { .. }) => Err(shard_down(&deps.metrics, &e)),
                Err(e) => return Err(classify(e)),
            };
            checked.push(caller.and_then(|caller| {
                NewSend::checked(
                    caller,
                    s.conv,
                    &s.client_msg_id,
                    &s.text,
                    s.after.as_deref(),
                )
            }));
        }
        let to_store: Vec<NewSend> = checked
            .iter()
            .filter_map(|c| c.as_ref().ok().cloned())
            .collect();
        let mut stored = dms::send_many(deps, &to_store)
            .instrument(runtime::trace::span_if(!record_spans.is_empty(), || {
                tracing::info_span!("mariadb.store", messages = to_store.len())
            }))
            .await
            .map_err(classify)?
            .into_iter();
        // Per send, in order: the records for its own edge, and its deliveries.
        let mut answers: Vec<(Vec<EdgeMessage>, Vec<Delivery>)> = Vec::with_capacity(batch.len());
        for (s, c) in batch.iter().zip(&checked) {
            let result = match c {
                Ok(_) => stored.next().expect("one answer per stored send"),
                Err(body) => Err(body.clone()),
            };
            let kind = s.env.request.kind_index();
            deps.metrics
                .handler_seconds
                .at(kind)
                .observe(runtime::metrics::since(started));
            answers.push(match result {
                Ok(st) => {
                    deps.metrics.requests_handled.at(kind).inc();
                    let (response, delivery) = dms::sent(st);
                    (
                        vec![reply_message(&s.env, response, None, false)],
                        vec![delivery],
                    )
                }
                Err(err) => {
                    deps.metrics.request_errors.get(kind, err.code).inc();
                    let close = revokes(&s.env, &err).then(|| close_message(&s.env));
                    let own = std::iter::once(error_message(&s.env, err)).chain(close);
                    (own.collect(), vec![])
                }
            });
        }
        let users: Vec<Id> = answers
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
                .reach(&c, &users, runtime::now_ms())
                .instrument(runtime::trace::span_if(!record_spans.is_empty(), || {
                    tracing::info_span!("redis.reach", users = users.len())
                }))
                .await
                .map_err(|e| Failure::Transient(e.to_string()))?
        };
        let mut per_edge: BTreeMap<String, Vec<EdgeMessage>> = BTreeMap::new();
        // the `edge.publish` spans, ended once the edge records are acknowledged
        let mut hops: Vec<tracing::Span> = Vec::new();
        for (i, ((own, deliveries), s)) in answers.into_iter().zip(batch).enumerate() {
            let mut hop = |edge: &str, msg: EdgeMessage| match record_spans.get(i) {
                Some(parent) if !parent.is_disabled() => {
                    let span = tracing::info_span!(
                        parent: parent,
                        "edge.publish",
                        otel.kind = "producer",
                        edge = %edge,
                        op = msg.op(),
                    );
                    let tp = runtime::trace::Carrier::of(&span)
                        .traceparent()
                        .map(str::to_string);
                    hops.push(span);
                    EdgeMessage::traced(msg, tp)
                }
                _ => msg,
            };
            let mine: Vec<EdgeMessage> = own.into_iter().map(|m| hop(&s.env.edge, m)).collect();
            per_edge.entry(s.env.edge.clone()).or_default().extend(mine);
            for d in &deliveries {
                let users = users_of(d);
                for (edge, msg) in plan(d, reach.conns_of(&users), &reach.live) {
                    let msg = hop(&edge, msg);
                    per_edge.entry(edge).or_default().push(msg);
                }
            }
        }
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
            // each item carries its own trace context (`hop` above), if its send is traced
            async move { deps.publisher.send_untraced(&topic, key, &payload).await }
        });
        let sent = futures::future::join_all(publishes).await;
        drop(hops);
        for sent in sent {
            sent.map_err(|e| Failure::Transient(e.to_string()))?;
        }
        Ok(())
    }
}
