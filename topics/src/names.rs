//! Kafka topic names. Every name is derived from one prefix so tests can run side by side on one
//! broker, and per-edge topics are named from the stable edge id (a StatefulSet ordinal), so they
//! do not pile up as edges restart.

use serde::{Deserialize, Serialize};

/// A worker domain: each owns one request topic and one consumer group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Domain {
    Auth,
    Users,
    Invites,
    Dms,
    Presence,
}

impl Domain {
    pub const ALL: [Domain; 5] = [
        Domain::Auth,
        Domain::Users,
        Domain::Invites,
        Domain::Dms,
        Domain::Presence,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Domain::Auth => "auth",
            Domain::Users => "users",
            Domain::Invites => "invites",
            Domain::Dms => "dms",
            Domain::Presence => "presence",
        }
    }

    /// The worker role of this domain: its binary and consumer group, `worker-<domain>`.
    pub fn worker(self) -> String {
        format!("worker-{}", self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
}

impl Topics {
    pub fn new(prefix: impl Into<String>) -> Self {
        Topics {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Requests for one worker domain, e.g. `sb.dms.v1`.
    pub fn requests(&self, domain: Domain) -> String {
        format!("{}.{}.v1", self.prefix, domain.as_str())
    }

    /// Deliveries for the router ("send this frame to user U / to everyone").
    pub fn deliver(&self) -> String {
        format!("{}.deliver.v1", self.prefix)
    }

    /// Replies, deliveries and commands for one edge.
    pub fn edge(&self, edge_id: &str) -> String {
        format!("{}.edge.{}.v1", self.prefix, edge_id)
    }

    /// Records a consumer could not process: a JSON record with the reason, the source topic,
    /// partition and offset, and the original payload.
    pub fn dead_letter(&self) -> String {
        format!("{}.dead-letter.v1", self.prefix)
    }

    /// Consumer group of a domain's workers.
    pub fn group(&self, role: &str) -> String {
        format!("{}.{}", self.prefix, role)
    }

    /// Every shared topic (not the per-edge ones).
    pub fn shared(&self) -> Vec<String> {
        let mut all: Vec<String> = Domain::ALL.iter().map(|d| self.requests(*d)).collect();
        all.push(self.deliver());
        all.push(self.dead_letter());
        all
    }
}

/// An edge id must make a valid topic-name segment: `[a-z0-9-]`, 1–32 characters.
pub fn valid_edge_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 32
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_follow_the_documented_pattern() {
        let t = Topics::new("sb");
        assert_eq!(t.requests(Domain::Dms), "sb.dms.v1");
        assert_eq!(t.edge("edge-0"), "sb.edge.edge-0.v1");
        assert_eq!(t.deliver(), "sb.deliver.v1");
        assert_eq!(t.dead_letter(), "sb.dead-letter.v1");
        assert_eq!(t.group("worker-dms"), "sb.worker-dms");
        assert_eq!(t.shared().len(), 7);
        assert_eq!(t.prefix(), "sb");
    }

    #[test]
    fn edge_ids_are_checked() {
        assert!(valid_edge_id("edge-12"));
        assert!(!valid_edge_id(""));
        assert!(!valid_edge_id("Edge"));
        assert!(!valid_edge_id("a.b"));
        assert!(!valid_edge_id(&"a".repeat(33)));
    }

    proptest! {
        #[test]
        fn edge_topics_are_distinct_and_stable(a in "[a-z0-9-]{1,32}", b in "[a-z0-9-]{1,32}") {
            let t = Topics::new("p");
            prop_assert_eq!(t.edge(&a) == t.edge(&b), a == b);
            prop_assert_eq!(t.edge(&a), Topics::new("p").edge(&a));
        }
    }
}
