//! The WebSocket requests of one connection that wait for their answer, in the order they were
//! published, each with its deadline (`edge.request_timeout_ms` after its publish). Every request
//! a client can send over WebSocket is answered by its worker; one not answered by its deadline is
//! answered `unavailable` by the edge instead, and whichever of the two comes first is the only
//! answer its `rid` gets: a reply that arrives after the edge's `unavailable` is dropped.
//!
//! One queue per connection, no timer per request: request ids of one connection grow (they come
//! from one counter, taken in the order the connection reads its frames) and every request waits
//! the same time, so the queue is sorted by id and by deadline at once. An answer finds its entry
//! by binary search and marks it; answered entries leave from the front. The connection's task
//! has one timer, set to the front's deadline ([`Flights::next_deadline`]).

use std::collections::VecDeque;
use tokio::time::Instant;

/// Requests of one connection waiting at once; one more is refused (`rate_limited`) before it is
/// published. Above what the frame rate lets through in a deadline at the defaults (a burst of
/// 100 and 50 a second for 5 s).
pub const MAX_IN_FLIGHT: usize = 1024;

#[derive(Debug)]
struct Flight {
    req: u64,
    deadline: Instant,
    rid: Option<String>,
    answered: bool,
}

#[derive(Debug, Default)]
pub struct Flights {
    queue: VecDeque<Flight>,
}

impl Flights {
    /// Start waiting for the answer to `req` (larger than every request tracked before), until
    /// `deadline`. False, and nothing tracked, when [`MAX_IN_FLIGHT`] requests already wait.
    pub fn track(&mut self, req: u64, rid: Option<String>, deadline: Instant) -> bool {
        self.drop_answered();
        if self.queue.len() >= MAX_IN_FLIGHT {
            return false;
        }
        debug_assert!(self.queue.back().is_none_or(|f| f.req < req));
        self.queue.push_back(Flight {
            req,
            deadline,
            rid,
            answered: false,
        });
        true
    }

    /// The answer to `req` is here: true if it is the first (deliver it), false if the request
    /// was answered already, by its worker or by the edge at its deadline, or never tracked.
    pub fn settle(&mut self, req: u64) -> bool {
        let Ok(i) = self.queue.binary_search_by_key(&req, |f| f.req) else {
            return false;
        };
        let first = !std::mem::replace(&mut self.queue[i].answered, true);
        self.drop_answered();
        first
    }

    /// Take the requests whose deadline has come (`deadline <= now`) and that nobody answered:
    /// their `rid`s, oldest first, to answer `unavailable`.
    pub fn expire(&mut self, now: Instant) -> Vec<Option<String>> {
        let mut due = Vec::new();
        while let Some(f) = self.queue.front() {
            if !f.answered && f.deadline > now {
                break;
            }
            let f = self.queue.pop_front().expect("front");
            if !f.answered {
                due.push(f.rid);
            }
        }
        due
    }

    /// The deadline of the oldest request still waiting.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.queue.iter().find(|f| !f.answered).map(|f| f.deadline)
    }

    pub fn is_empty(&self) -> bool {
        self.queue.iter().all(|f| f.answered)
    }

    fn drop_answered(&mut self) {
        while self.queue.front().is_some_and(|f| f.answered) {
            self.queue.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const WAIT: Duration = Duration::from_millis(5_000);

    fn rid(s: &str) -> Option<String> {
        Some(s.into())
    }

    /// Answers in any order deliver once; what is unanswered at its deadline is given back once,
    /// and its late answer is refused.
    #[tokio::test(start_paused = true)]
    async fn each_request_is_answered_once_by_its_worker_or_at_its_deadline() {
        let mut f = Flights::default();
        assert_eq!(f.next_deadline(), None);
        assert!(f.is_empty());
        let t0 = Instant::now();
        assert!(f.track(10, rid("a"), t0 + WAIT));
        tokio::time::advance(Duration::from_millis(1_000)).await;
        assert!(f.track(11, rid("b"), Instant::now() + WAIT));
        assert!(f.track(12, None, Instant::now() + WAIT));
        tokio::time::advance(Duration::from_millis(1_000)).await;
        assert!(f.track(13, rid("d"), Instant::now() + WAIT));
        assert_eq!(f.next_deadline(), Some(t0 + WAIT));

        // answered out of order: the middle one first, then the oldest
        assert!(f.settle(11));
        assert!(!f.settle(11), "a second answer is not delivered");
        assert_eq!(f.next_deadline(), Some(t0 + WAIT));
        assert!(f.settle(10));
        assert_eq!(
            f.next_deadline(),
            Some(t0 + WAIT + Duration::from_millis(1_000)),
            "12 is the oldest still waiting"
        );
        assert!(!f.settle(99), "never tracked");

        // nothing is due before its deadline
        tokio::time::advance(Duration::from_millis(3_999)).await;
        assert!(f.expire(Instant::now()).is_empty());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(f.expire(Instant::now()), vec![None], "12 is due at 6 s");
        assert!(!f.settle(12), "its late answer is dropped");
        assert_eq!(
            f.next_deadline(),
            Some(t0 + WAIT + Duration::from_millis(2_000))
        );
        assert!(!f.is_empty());
        tokio::time::advance(Duration::from_millis(10_000)).await;
        assert_eq!(f.expire(Instant::now()), vec![rid("d")]);
        assert!(f.expire(Instant::now()).is_empty(), "given back once");
        assert!(f.is_empty());
        assert_eq!(f.next_deadline(), None);
    }

    /// The queue is bounded: answered entries make room, unanswered ones do not.
    #[tokio::test(start_paused = true)]
    async fn a_connection_waits_for_at_most_max_in_flight_answers() {
        let mut f = Flights::default();
        let deadline = Instant::now() + WAIT;
        for req in 0..MAX_IN_FLIGHT as u64 {
            assert!(f.track(req, None, deadline));
        }
        assert!(!f.track(5_000, None, deadline), "full");
        assert!(f.settle(1));
        assert!(!f.track(5_000, None, deadline), "1 still waits behind 0");
        assert!(f.settle(0));
        assert!(f.track(5_000, None, deadline), "room again");
        assert!(f.settle(5_000));
    }
}
