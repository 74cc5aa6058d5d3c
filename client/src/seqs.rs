//! The highest sequence number seen per conversation, and the `dm.sync` requests that ask for
//! everything after it. Pure: the socket feeds it every frame it reads.

use std::collections::{BTreeMap, BTreeSet};
use topics::frames::SyncedConversation;
use topics::{Event, Id, Request, Response, ServerFrame};

/// Conversations one `dm.sync` may name (docs/protocol.md, validation rules).
pub const SYNC_MAX_CONVERSATIONS: usize = 100;

/// Per conversation, the highest `seq` of a message this client has seen: in `dm_message`
/// events and in `sent`, `history` and `synced` replies. A conversation opened with `dm.open`
/// is known from then on (at 0 until a message is seen), so that a sync asks about it too.
/// Conversation summaries (`dm.list`) do not count: their `last_seq` is the server's, not
/// something this client has received.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Seqs {
    last: BTreeMap<Id, u64>,
}

impl Seqs {
    /// Note that message `seq` of `conversation` was seen.
    pub fn saw(&mut self, conversation: Id, seq: u64) {
        let e = self.last.entry(conversation).or_insert(0);
        *e = (*e).max(seq);
    }

    /// Start following `conversation` (no message seen yet).
    pub fn follow(&mut self, conversation: Id) {
        self.last.entry(conversation).or_insert(0);
    }

    /// The highest sequence seen in `conversation`, if it is followed.
    pub fn last(&self, conversation: Id) -> Option<u64> {
        self.last.get(&conversation).copied()
    }

    /// Every followed conversation with its highest seen sequence.
    pub fn all(&self) -> &BTreeMap<Id, u64> {
        &self.last
    }

    /// Take in what a frame says about messages seen.
    pub fn observe(&mut self, frame: &ServerFrame) {
        match frame {
            ServerFrame::Reply { data, .. } => self.observe_response(data),
            ServerFrame::Event {
                data: Event::DmMessage { message },
            } => self.saw(message.conversation_id, message.seq),
            _ => {}
        }
    }

    /// Take in what a reply (over WebSocket or HTTP) says about messages seen.
    pub fn observe_response(&mut self, r: &Response) {
        match r {
            Response::Sent { message, .. } => self.saw(message.conversation_id, message.seq),
            Response::History {
                conversation_id,
                messages,
                ..
            } => {
                self.follow(*conversation_id);
                for m in messages {
                    self.saw(m.conversation_id, m.seq);
                }
            }
            Response::Synced { conversations } => {
                for c in conversations {
                    self.follow(c.conversation_id);
                    for m in &c.messages {
                        self.saw(m.conversation_id, m.seq);
                    }
                }
            }
            Response::Conversation { conversation } => self.follow(conversation.conversation_id),
            _ => {}
        }
    }

    /// A plan to sync every followed conversation.
    pub fn plan_sync(&self) -> SyncPlan {
        SyncPlan {
            pending: self.last.keys().copied().collect(),
        }
    }
}

/// Which conversations a sync still has to ask about. A `synced` reply holds at most 100
/// messages per conversation and says `more` when there are others: those are asked again,
/// from the new last sequence, until none says `more`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncPlan {
    pending: BTreeSet<Id>,
}

impl SyncPlan {
    /// The next `dm.sync` (at most [`SYNC_MAX_CONVERSATIONS`] conversations, each from its last
    /// seen sequence in `seqs`), or `None` when the sync is complete.
    pub fn next_request(&mut self, seqs: &Seqs) -> Option<Request> {
        if self.pending.is_empty() {
            return None;
        }
        let mut since = BTreeMap::new();
        while since.len() < SYNC_MAX_CONVERSATIONS {
            let Some(c) = self.pending.pop_first() else {
                break;
            };
            since.insert(c, seqs.last(c).unwrap_or(0));
        }
        Some(Request::DmSync { since })
    }

    /// Take in a `synced` reply: conversations with `more` are asked again. One that says
    /// `more` but brought no message would be asked the same forever, so it is not.
    pub fn absorb(&mut self, conversations: &[SyncedConversation]) {
        for c in conversations {
            if c.more && !c.messages.is_empty() {
                self.pending.insert(c.conversation_id);
            }
        }
    }

    pub fn is_done(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use topics::frames::{ConversationSummary, Message};

    fn msg(conv: u64, seq: u64) -> Message {
        Message {
            conversation_id: Id(conv),
            seq,
            message_id: Id(1000 + seq),
            author_id: Some(Id(1)),
            author: "ann".into(),
            client_msg_id: format!("c{seq}"),
            text: "hi".into(),
            sent_at_ms: 0,
        }
    }

    fn event(conv: u64, seq: u64) -> ServerFrame {
        ServerFrame::Event {
            data: Event::DmMessage {
                message: msg(conv, seq),
            },
        }
    }

    fn reply(data: Response) -> ServerFrame {
        ServerFrame::Reply {
            rid: Some("r1".into()),
            data,
        }
    }

    #[test]
    fn keeps_the_highest_sequence_seen_per_conversation() {
        let mut s = Seqs::default();
        s.observe(&event(7, 3));
        s.observe(&event(7, 2)); // late, out of order: not a step back
        s.observe(&event(9, 1));
        s.observe(&reply(Response::Sent {
            message: msg(7, 5),
            duplicate: false,
        }));
        s.observe(&reply(Response::History {
            conversation_id: Id(9),
            messages: vec![msg(9, 4), msg(9, 6)],
            more: false,
        }));
        assert_eq!(s.last(Id(7)), Some(5));
        assert_eq!(s.last(Id(9)), Some(6));
        assert_eq!(s.last(Id(8)), None);
    }

    #[test]
    fn follows_opened_conversations_but_not_the_servers_last_seq() {
        let mut s = Seqs::default();
        let summary = ConversationSummary {
            conversation_id: Id(4),
            peer_id: Id(2),
            peer: "bob".into(),
            last_seq: 40,
            last_message: Some(msg(4, 40)),
            unread: 40,
        };
        s.observe(&reply(Response::Conversation {
            conversation: summary.clone(),
        }));
        assert_eq!(s.last(Id(4)), Some(0));
        s.observe(&reply(Response::Conversations {
            conversations: vec![summary],
        }));
        assert_eq!(s.last(Id(4)), Some(0));
        // errors and other events change nothing
        s.observe(&ServerFrame::Error {
            rid: None,
            code: topics::ErrorCode::NotFound,
            message: "x".into(),
        });
        s.observe(&ServerFrame::Event {
            data: Event::ConnectionRemoved { user_id: Id(2) },
        });
        assert_eq!(s.all().len(), 1);
    }

    #[test]
    fn syncs_from_the_last_seen_sequence() {
        let mut s = Seqs::default();
        s.observe(&event(7, 3));
        s.follow(Id(8));
        let mut plan = s.plan_sync();
        let Some(Request::DmSync { since }) = plan.next_request(&s) else {
            panic!("expected a dm.sync")
        };
        assert_eq!(since, BTreeMap::from([(Id(7), 3), (Id(8), 0)]));
        assert!(plan.is_done());
        assert_eq!(plan.next_request(&s), None);
    }

    #[test]
    fn asks_again_where_the_reply_says_more() {
        let mut s = Seqs::default();
        s.saw(Id(7), 3);
        s.saw(Id(8), 1);
        let mut plan = s.plan_sync();
        plan.next_request(&s).unwrap();
        let synced = vec![
            SyncedConversation {
                conversation_id: Id(7),
                messages: (4..=103).map(|q| msg(7, q)).collect(),
                more: true,
            },
            SyncedConversation {
                conversation_id: Id(8),
                messages: vec![msg(8, 2)],
                more: false,
            },
        ];
        s.observe_response(&Response::Synced {
            conversations: synced.clone(),
        });
        plan.absorb(&synced);
        let Some(Request::DmSync { since }) = plan.next_request(&s) else {
            panic!("expected a second dm.sync")
        };
        assert_eq!(since, BTreeMap::from([(Id(7), 103)]));
        // `more` without messages would repeat the same question: not asked again
        plan.absorb(&[SyncedConversation {
            conversation_id: Id(7),
            messages: vec![],
            more: true,
        }]);
        assert!(plan.is_done());
    }

    #[test]
    fn splits_a_large_sync_into_requests_of_at_most_100() {
        let mut s = Seqs::default();
        for c in 0..250 {
            s.saw(Id(c), c);
        }
        let mut plan = s.plan_sync();
        let mut sizes = Vec::new();
        let mut seen = BTreeMap::new();
        while let Some(Request::DmSync { since }) = plan.next_request(&s) {
            sizes.push(since.len());
            seen.extend(since);
        }
        assert_eq!(sizes, [100, 100, 50]);
        assert_eq!(&seen, s.all());
    }
}
