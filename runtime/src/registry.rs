//! The connection registry in Redis Cluster, shared by the presence workers (which write it from
//! edge events) and the router (which reads it to find a user's edges).
//!
//! Keys (all under the configured prefix):
//! - `edges` — hash: edge id → `epoch:last_heartbeat_ms`. An edge is live while its heartbeat is
//!   younger than the liveness window; connections of a dead edge, or of an earlier epoch of a
//!   live one, are ignored and cleaned lazily.
//! - `conns:{<user>}` — hash: `edge/conn` → session id, every open connection of a user.
//! - `online:{<edge>}:<epoch>` — sorted set (all scores 0, lexicographic): zero-padded user ids
//!   online on one edge process; `count:{<edge>}:<epoch>` — hash: user id → connections on it.
//!   Scoped by the process' epoch (as connection ids carry it, 24 bits) so that a new process'
//!   connections, registered in parallel with its `started` event, are never wiped by it.
//!   `members:{<edge>}:<epoch>` — hash: connection id → user id, the connections counted there,
//!   so that counting stays idempotent (one Lua script on the edge's slot).
//! - `abandoned:{<edge>}:<conn>` — a marker, expiring, on a handshake its edge gave up on before
//!   the check answered: the check may still be on its way, and must not register it.
//! - `unames` — hash: user id → username, for the online list.

use crate::redis::{redis, Keys};
use crate::Result;
use redis::AsyncCommands;
use std::collections::{BTreeMap, HashMap};
use topics::{Delivery, EdgeMessage, Id, Target};

/// Width of the zero-padded user ids in `online:` sets (u64 max has 20 digits).
pub const ID_WIDTH: usize = 20;

pub fn pad(id: Id) -> String {
    format!("{:0width$}", id.0, width = ID_WIDTH)
}

#[derive(Clone, Debug)]
pub struct Registry {
    pub keys: Keys,
    /// An edge whose last heartbeat is older than this is dead.
    pub liveness_ms: u64,
}

/// One open connection of a user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conn {
    pub edge: String,
    pub conn: u64,
    pub session_id: String,
}

impl Registry {
    pub fn edges_key(&self) -> String {
        self.keys.key("edges")
    }
    pub fn conns_key(&self, user: Id) -> String {
        self.keys.key(format!("conns:{{{user}}}"))
    }
    pub fn online_key(&self, edge: &str, epoch: u64) -> String {
        let tag = topics::bus::epoch_tag(epoch);
        self.keys.key(format!("online:{{{edge}}}:{tag}"))
    }
    pub fn count_key(&self, edge: &str, epoch: u64) -> String {
        let tag = topics::bus::epoch_tag(epoch);
        self.keys.key(format!("count:{{{edge}}}:{tag}"))
    }
    pub fn members_key(&self, edge: &str, epoch: u64) -> String {
        let tag = topics::bus::epoch_tag(epoch);
        self.keys.key(format!("members:{{{edge}}}:{tag}"))
    }
    /// Set for a while when an edge gave up on a handshake (`abandoned`): a verification still
    /// in flight for that connection must not register it.
    pub fn abandoned_key(&self, edge: &str, conn: u64) -> String {
        self.keys.key(format!("abandoned:{{{edge}}}:{conn}"))
    }
    pub fn unames_key(&self) -> String {
        self.keys.key("unames")
    }

    /// Live edges and their current epoch.
    pub async fn live_edges<C: redis::aio::ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
        now_ms: u64,
    ) -> Result<HashMap<String, u64>> {
        let all: HashMap<String, String> = con.hgetall(self.edges_key()).await?;
        Ok(live_of(
            all.iter()
                .filter_map(|(edge, v)| Some((edge.clone(), parse_edge_value(v)?))),
            now_ms,
            self.liveness_ms,
        ))
    }
}

/// Where some users can be reached now: the live edges (edge id → epoch) and the current
/// connections of each user asked about.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reach {
    pub live: HashMap<String, u64>,
    pub conns: HashMap<Id, Vec<Conn>>,
}

impl Reach {
    /// Every current connection of these users.
    pub fn conns_of<'a>(&'a self, users: &'a [Id]) -> impl Iterator<Item = &'a Conn> + 'a {
        users
            .iter()
            .flat_map(|u| self.conns.get(u).into_iter().flatten())
    }
}

impl Registry {
    /// The live edges and the connections of `users`, asked all at once: the cluster connection
    /// is multiplexed, so the lookups are in flight together instead of one after the other.
    /// Connections of edges that are not live now, or of an earlier process of a live edge, are
    /// left out of the answer; those certainly gone ([`is_gone`]) are also removed from the
    /// registry (a second round trip, only when there are some).
    /// Cluster pipelines cannot span slots, hence one command per key.
    pub async fn reach<C: redis::aio::ConnectionLike + Clone + Send + Sync>(
        &self,
        con: &C,
        users: &[Id],
        now_ms: u64,
    ) -> Result<Reach> {
        let mut users = users.to_vec();
        users.sort_unstable();
        users.dedup();
        let hgetall = |key: String| {
            let mut con = con.clone();
            async move { con.hgetall::<_, HashMap<String, String>>(key).await }
        };
        let (edges, per_user) = futures::future::join(
            hgetall(self.edges_key()),
            futures::future::join_all(users.iter().map(|u| hgetall(self.conns_key(*u)))),
        )
        .await;
        let edges: HashMap<String, (u64, u64)> = edges?
            .iter()
            .filter_map(|(edge, v)| Some((edge.clone(), parse_edge_value(v)?)))
            .collect();
        let live = live_of(
            edges.iter().map(|(e, v)| (e.clone(), *v)),
            now_ms,
            self.liveness_ms,
        );
        let mut reach = Reach {
            live,
            conns: HashMap::new(),
        };
        let mut stale = Vec::new();
        for (u, fields) in users.iter().zip(per_user) {
            let (current, other): (Vec<Conn>, Vec<Conn>) = conns_of(fields?)
                .into_iter()
                .partition(|c| is_current(c, &reach.live));
            let gone: Vec<&Conn> = other
                .iter()
                .filter(|c| is_gone(c, &edges, now_ms, self.liveness_ms))
                .collect();
            if !gone.is_empty() {
                let fields: Vec<String> =
                    gone.iter().map(|c| conn_field(&c.edge, c.conn)).collect();
                let mut con = con.clone();
                let key = self.conns_key(*u);
                stale.push(async move { con.hdel::<_, _, ()>(key, fields).await });
            }
            reach.conns.insert(*u, current);
        }
        for removed in futures::future::join_all(stale).await {
            removed?;
        }
        Ok(reach)
    }
}

fn conns_of(fields: HashMap<String, String>) -> Vec<Conn> {
    fields
        .into_iter()
        .filter_map(|(field, sid)| {
            let (edge, conn) = parse_conn_field(&field)?;
            Some(Conn {
                edge,
                conn,
                session_id: sid,
            })
        })
        .collect()
}

/// Per edge, the record a delivery becomes, given the current connections of its users
/// ([`Reach::conns_of`]) and the live edges (a broadcast goes to every live edge).
pub fn plan<'a>(
    d: &Delivery,
    conns: impl Iterator<Item = &'a Conn>,
    live: &HashMap<String, u64>,
) -> BTreeMap<String, EdgeMessage> {
    let mut out = BTreeMap::new();
    if let Target::All = d.target {
        for edge in live.keys() {
            out.insert(
                edge.clone(),
                EdgeMessage::Broadcast {
                    frame: d.frame.clone(),
                },
            );
        }
        return out;
    }
    let mut by_edge: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for c in conns.filter(|c| is_current(c, live)) {
        if let Target::Sessions { session_ids, .. } = &d.target {
            if !session_ids.contains(&c.session_id) {
                continue;
            }
        }
        by_edge.entry(c.edge.clone()).or_default().push(c.conn);
    }
    for (edge, conns) in by_edge {
        let msg = match &d.close {
            Some(reason) => EdgeMessage::Close {
                conns,
                frame: d.frame.clone(),
                reason: reason.clone(),
            },
            None => EdgeMessage::Deliver {
                conns,
                frame: d.frame.clone(),
                persisted_at_ms: d.persisted_at_ms,
            },
        };
        out.insert(edge, msg);
    }
    out
}

/// The users a delivery is for (none for a broadcast, which goes to every live edge).
pub fn users_of(d: &Delivery) -> Vec<Id> {
    match &d.target {
        Target::Users { user_ids } => user_ids.clone(),
        Target::Sessions { user_id, .. } => vec![*user_id],
        Target::All => vec![],
    }
}

/// Live edges from (edge, (epoch, last heartbeat)). When even the newest heartbeat is stale, the
/// presence workers (who record heartbeats) are behind or down — not every edge at once — so
/// every known edge counts as live rather than dropping all deliveries.
pub fn live_of(
    edges: impl Iterator<Item = (String, (u64, u64))>,
    now_ms: u64,
    liveness_ms: u64,
) -> HashMap<String, u64> {
    let all: Vec<(String, (u64, u64))> = edges.collect();
    let newest = all.iter().map(|(_, (_, seen))| *seen).max().unwrap_or(0);
    let presence_stale = now_ms.saturating_sub(newest) > liveness_ms;
    all.into_iter()
        .filter(|(_, (_, seen))| presence_stale || now_ms.saturating_sub(*seen) <= liveness_ms)
        .map(|(edge, (epoch, _))| (edge, epoch))
        .collect()
}

pub fn edge_value(epoch: u64, seen_ms: u64) -> String {
    format!("{epoch}:{seen_ms}")
}

/// How many liveness windows an edge's heartbeat must be older than the newest one before its
/// connections are removed from the registry as gone (rather than only skipped).
pub const GONE_AFTER_WINDOWS: u64 = 10;

/// Whether a registered connection is certainly gone, so that its registry entry may be removed:
/// its edge runs a later process (a newer epoch), or its edge's heartbeat is more than
/// [`GONE_AFTER_WINDOWS`] liveness windows older than the newest heartbeat of any edge. A
/// connection whose edge is merely not live *now* is kept: heartbeats are recorded by the
/// presence workers, and after one of them restarts it catches up on its backlog partition by
/// partition, so for a few seconds one edge's heartbeat is fresh while another's, equally alive,
/// is still old. Removing that edge's connections then cut them off from live events until they
/// reconnected (found by `loadtest chaos`, docs/reliability.md). An edge id unknown to `edges`
/// (its heartbeat lost, e.g. in a Redis failover) is not taken for gone either.
pub fn is_gone(
    c: &Conn,
    edges: &HashMap<String, (u64, u64)>,
    now_ms: u64,
    liveness_ms: u64,
) -> bool {
    let Some(&(epoch, seen)) = edges.get(&c.edge) else {
        return false;
    };
    let (mine, theirs) = (
        topics::bus::conn_epoch(c.conn),
        topics::bus::epoch_tag(epoch),
    );
    // 24-bit tags: "older" within half the range, so that a wrap-around still reads right
    let older = mine != theirs && theirs.wrapping_sub(mine) & 0xff_ffff < 1 << 23;
    if older {
        return true;
    }
    let newest = edges
        .values()
        .map(|(_, s)| *s)
        .max()
        .unwrap_or(0)
        .min(now_ms);
    newest.saturating_sub(seen) > liveness_ms.saturating_mul(GONE_AFTER_WINDOWS)
}

pub fn parse_edge_value(v: &str) -> Option<(u64, u64)> {
    let (e, s) = v.split_once(':')?;
    Some((e.parse().ok()?, s.parse().ok()?))
}

pub fn conn_field(edge: &str, conn: u64) -> String {
    topics::bus::conn_key(edge, conn)
}

pub fn parse_conn_field(f: &str) -> Option<(String, u64)> {
    let (e, c) = f.rsplit_once('/')?;
    Some((e.to_string(), c.parse().ok()?))
}

/// A connection is current when its edge is live and it belongs to that edge's current epoch.
pub fn is_current(c: &Conn, live: &HashMap<String, u64>) -> bool {
    live.get(&c.edge)
        .is_some_and(|&epoch| topics::bus::conn_epoch(c.conn) == topics::bus::epoch_tag(epoch))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_round_trip() {
        assert_eq!(pad(Id(42)).len(), ID_WIDTH);
        assert!(pad(Id(9)) < pad(Id(10)));
        assert_eq!(parse_edge_value(&edge_value(3, 99)), Some((3, 99)));
        assert_eq!(parse_edge_value("x"), None);
        assert_eq!(
            parse_conn_field(&conn_field("edge-1", 77)),
            Some(("edge-1".into(), 77))
        );
        assert_eq!(parse_conn_field("nope"), None);
        let r = Registry {
            keys: Keys::new("p"),
            liveness_ms: 1,
        };
        assert_eq!(r.conns_key(Id(5)), "p:conns:{5}");
        // scoped by the epoch as connection ids carry it (24 bits)
        assert_eq!(r.online_key("e", 7), "p:online:{e}:7");
        assert_eq!(r.count_key("e", (1 << 24) + 7), "p:count:{e}:7");
        assert_eq!(r.members_key("e", 7), "p:members:{e}:7");
        assert_eq!(r.edges_key(), "p:edges");
        assert_eq!(r.unames_key(), "p:unames");
    }

    #[test]
    fn liveness_tolerates_a_stale_presence_worker() {
        let e = |name: &str, seen| (name.to_string(), (1u64, seen));
        let live = live_of(vec![e("a", 1000), e("b", 100)].into_iter(), 1500, 600);
        assert_eq!(live.len(), 1, "b missed its heartbeats while a did not");
        assert!(live.contains_key("a"));
        let all = live_of(vec![e("a", 1000), e("b", 100)].into_iter(), 9000, 600);
        assert_eq!(
            all.len(),
            2,
            "nobody heartbeats: presence is behind, keep delivering"
        );
        assert!(live_of(std::iter::empty(), 5, 1).is_empty());
    }

    #[test]
    fn only_connections_certainly_gone_are_removed() {
        let c = |edge: &str, epoch| Conn {
            edge: edge.into(),
            conn: topics::bus::conn_id(epoch, 1),
            session_id: "s".into(),
        };
        let window = 10_000;
        // After a presence worker's restart: e0's backlog is recorded (fresh), e1's not yet (its
        // heartbeat 15 s old). e1 is not live for this moment, but its connections stay.
        let edges: HashMap<String, (u64, u64)> = [
            ("e0".to_string(), (7, 100_000)),
            ("e1".to_string(), (5, 85_000)),
        ]
        .into();
        let now = 100_500;
        let live = live_of(edges.iter().map(|(e, v)| (e.clone(), *v)), now, window);
        assert!(!is_current(&c("e1", 5), &live));
        assert!(!is_gone(&c("e1", 5), &edges, now, window));
        // an earlier process of a live edge: gone (a wrapped-around tag too)
        assert!(is_gone(&c("e0", 6), &edges, now, window));
        assert!(!is_gone(&c("e0", 7), &edges, now, window));
        assert!(
            !is_gone(&c("e0", 8), &edges, now, window),
            "a later process: not yet recorded"
        );
        let wrapped: HashMap<String, (u64, u64)> = [("e".to_string(), (1 << 24, now))].into();
        assert!(is_gone(&c("e", (1 << 24) - 1), &wrapped, now, window));
        // an edge silent for more than ten windows while others heartbeat: gone
        let old: HashMap<String, (u64, u64)> = [
            ("e0".to_string(), (7, 200_000)),
            ("e1".to_string(), (5, 99_000)),
        ]
        .into();
        assert!(is_gone(&c("e1", 5), &old, 200_000, window));
        // nobody heartbeats (presence down): ages count from the newest heartbeat, not from now
        let quiet: HashMap<String, (u64, u64)> = [
            ("e0".to_string(), (7, 100_000)),
            ("e1".to_string(), (5, 95_000)),
        ]
        .into();
        assert!(!is_gone(&c("e1", 5), &quiet, 900_000, window));
        // an edge the registry does not know
        assert!(!is_gone(&c("nowhere", 5), &edges, now, window));
    }

    #[test]
    fn current_connections() {
        let live: HashMap<String, u64> = [("e".to_string(), 7u64)].into();
        let c = |edge: &str, epoch| Conn {
            edge: edge.into(),
            conn: topics::bus::conn_id(epoch, 1),
            session_id: "s".into(),
        };
        assert!(is_current(&c("e", 7), &live));
        assert!(
            !is_current(&c("e", 6), &live),
            "earlier process of the same edge"
        );
        assert!(!is_current(&c("dead", 7), &live));
    }

    fn conn(edge: &str, epoch: u64, n: u64, sid: &str) -> Conn {
        Conn {
            edge: edge.into(),
            conn: topics::bus::conn_id(epoch, n),
            session_id: sid.into(),
        }
    }

    #[test]
    fn plans_per_edge_records_and_skips_stale_connections() {
        let live: HashMap<String, u64> =
            [("e0".to_string(), 1u64), ("e1".to_string(), 2u64)].into();
        let conns = [
            conn("e0", 1, 1, "s1"),
            conn("e0", 1, 2, "s2"),
            conn("e1", 2, 3, "s1"),
            conn("e1", 1, 4, "s1"),
            conn("dead", 1, 5, "s1"),
        ];
        let d = Delivery::new(
            Target::Users {
                user_ids: vec![Id(1)],
            },
            "f".into(),
        );
        let p = plan(&d, conns.iter(), &live);
        assert_eq!(p.len(), 2);
        assert_eq!(
            p["e0"],
            EdgeMessage::Deliver {
                conns: vec![conns[0].conn, conns[1].conn],
                frame: "f".into(),
                persisted_at_ms: None,
            }
        );
        assert_eq!(
            p["e1"],
            EdgeMessage::Deliver {
                conns: vec![conns[2].conn],
                frame: "f".into(),
                persisted_at_ms: None,
            },
            "earlier epoch skipped"
        );
        // a message's commit time travels to the edges
        let p = plan(&d.clone().persisted_at(42), conns.iter(), &live);
        assert!(matches!(
            p["e0"],
            EdgeMessage::Deliver {
                persisted_at_ms: Some(42),
                ..
            }
        ));

        let mut s = Delivery::new(
            Target::Sessions {
                user_id: Id(1),
                session_ids: vec!["s2".into()],
            },
            "f".into(),
        );
        s.close = Some("bye".into());
        let p = plan(&s, conns.iter(), &live);
        assert_eq!(p.len(), 1);
        assert_eq!(
            p["e0"],
            EdgeMessage::Close {
                conns: vec![conns[1].conn],
                frame: "f".into(),
                reason: "bye".into()
            }
        );

        let all = plan(&Delivery::new(Target::All, "b".into()), [].iter(), &live);
        assert_eq!(all.len(), 2);
        assert_eq!(all["e1"], EdgeMessage::Broadcast { frame: "b".into() });
    }

    #[test]
    fn delivery_users() {
        let to = |t| Delivery::new(t, "f".into());
        assert_eq!(
            users_of(&to(Target::Users {
                user_ids: vec![Id(1), Id(2)]
            })),
            vec![Id(1), Id(2)]
        );
        assert_eq!(
            users_of(&to(Target::Sessions {
                user_id: Id(3),
                session_ids: vec![]
            })),
            vec![Id(3)]
        );
        assert!(users_of(&to(Target::All)).is_empty());
    }
}
