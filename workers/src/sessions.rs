//! Sessions in Redis Cluster. A session has a stable id and a bearer token that rotates on every
//! refresh; only the token's SHA-256 is stored. Keys:
//! - `tok:<sha256>` → session id (expires with the session; a rotated-out token lingers for a
//!   short grace period so requests already in flight do not fail);
//! - `sess:<id>` → hash {user_id, username, created_ms, last_seen_ms, token_hash, prev_hash,
//!   prev_retried, device?}, idle expiry (`last_seen_ms` moves on refresh, `device` is the
//!   login's label), never past `created_ms` + `session_max_lifetime_s`;
//! - `usess:{<user>}` → set of the user's session ids (cleaned lazily when listed).

use crate::context::Deps;
use crate::Result;
use base64::Engine;
use rand::TryRngCore;
use runtime::redis::redis::{self, AsyncCommands};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use topics::Id;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRecord {
    pub user_id: Id,
    pub username: String,
    pub created_ms: u64,
    pub last_seen_ms: u64,
    pub token_hash: String,
    /// What the session was opened from (see [`topics::device`]).
    pub device: Option<String>,
}

/// A new bearer token: 256 bits from the OS CSPRNG, base64url (valid in a WS subprotocol).
pub fn new_token() -> String {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.try_fill_bytes(&mut b).expect("os rng");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

pub fn new_session_id() -> String {
    let mut b = [0u8; 16];
    rand::rngs::OsRng.try_fill_bytes(&mut b).expect("os rng");
    hex::encode(b)
}

/// How long a session may still live from `now`: the idle timeout, cut at its absolute end.
/// Zero once it is over.
pub fn ttl_ms(l: &crate::Limits, created_ms: u64, now: u64) -> u64 {
    let end = created_ms.saturating_add(l.session_max_lifetime_s.saturating_mul(1000));
    end.saturating_sub(now)
        .min(l.session_idle_timeout_s.saturating_mul(1000))
}

pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn tok_key(d: &Deps, hash: &str) -> String {
    d.keys.key(format!("tok:{hash}"))
}
fn sess_key(d: &Deps, sid: &str) -> String {
    d.keys.key(format!("sess:{sid}"))
}
fn user_key(d: &Deps, user: Id) -> String {
    d.keys.key(format!("usess:{{{user}}}"))
}

fn parse(map: HashMap<String, String>) -> Option<SessionRecord> {
    Some(SessionRecord {
        user_id: map.get("user_id")?.parse().ok()?,
        username: map.get("username")?.clone(),
        created_ms: map.get("created_ms")?.parse().ok()?,
        last_seen_ms: map.get("last_seen_ms")?.parse().ok()?,
        token_hash: map.get("token_hash")?.clone(),
        device: map.get("device").and_then(|d| topics::device::sanitize(d)),
    })
}

/// Create a session; returns (token, session id).
/// A new session for `user`, opened from `device` (a label from the client's `User-Agent` by way
/// of the edge; sanitised again here, and not stored when nothing is left of it).
pub async fn create(
    d: &Deps,
    user: Id,
    username: &str,
    device: Option<&str>,
) -> Result<(String, String)> {
    let token = new_token();
    let sid = new_session_id();
    let hash = hash_token(&token);
    let now = runtime::now_ms();
    let ttl = ttl_ms(&d.limits, now, now);
    let mut fields = vec![
        ("user_id", user.to_string()),
        ("username", username.to_string()),
        ("created_ms", now.to_string()),
        ("last_seen_ms", now.to_string()),
        ("token_hash", hash.clone()),
    ];
    if let Some(label) = device.and_then(topics::device::sanitize) {
        fields.push(("device", label));
    }
    let mut c = d.redis.get().await?;
    let _: () = redis::pipe()
        .hset_multiple(sess_key(d, &sid), &fields)
        .pexpire(sess_key(d, &sid), ttl as i64)
        .query_async(&mut c)
        .await?;
    let _: () = c.pset_ex(tok_key(d, &hash), &sid, ttl).await?;
    let _: () = c.sadd(user_key(d, user), &sid).await?;
    Ok((token, sid))
}

pub async fn load(d: &Deps, sid: &str) -> Result<Option<SessionRecord>> {
    let mut c = d.redis.get().await?;
    let map: HashMap<String, String> = c.hgetall(sess_key(d, sid)).await?;
    // Past its absolute end a session is gone, even if its keys were written with a longer
    // lifetime (the setting was lowered since).
    Ok(parse(map).filter(|r| ttl_ms(&d.limits, r.created_ms, runtime::now_ms()) > 0))
}

/// The session a token hash opens, if it is live.
pub async fn resolve_token(d: &Deps, hash: &str) -> Result<Option<(String, SessionRecord)>> {
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(None);
    }
    let mut c = d.redis.get().await?;
    let sid: Option<String> = c.get(tok_key(d, hash)).await?;
    let Some(sid) = sid else { return Ok(None) };
    Ok(load(d, &sid).await?.map(|r| (sid, r)))
}

/// What refreshing a session did.
#[derive(Debug, PartialEq, Eq)]
pub enum Rotation {
    /// The new token.
    Rotated(String),
    /// The session is over (expired, past its absolute end, or revoked meanwhile).
    Gone,
    /// A rotated-out token was presented again: the session has been revoked.
    Reused,
}

/// Compare-and-rotate, atomic on the session's hash. ARGV: the presented token's hash ('' for
/// the session's current one), the new hash, now, the new expiry (ms). A refresh with the
/// current token rotates it (it becomes `prev_hash`). A refresh with `prev_hash` is taken as
/// the retry of a refresh whose answer was lost, once: it rotates again and the token minted in
/// between is rotated out. Anything else is a rotated-out token being reused.
const ROTATE_SCRIPT: &str = r"
local cur = redis.call('HGET', KEYS[1], 'token_hash')
if not cur then return {'gone', ''} end
local p = ARGV[1]
if p == '' then p = cur end
local prev = redis.call('HGET', KEYS[1], 'prev_hash')
if p == cur then
  redis.call('HSET', KEYS[1], 'token_hash', ARGV[2], 'prev_hash', cur, 'prev_retried', '0', 'last_seen_ms', ARGV[3])
elseif p == prev and redis.call('HGET', KEYS[1], 'prev_retried') ~= '1' then
  redis.call('HSET', KEYS[1], 'token_hash', ARGV[2], 'prev_retried', '1', 'last_seen_ms', ARGV[3])
else
  return {'reused', prev or ''}
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {'rotated', cur}
";

/// Extend the session's idle lifetime (never past its absolute end) and rotate its token.
/// `presented` is the hash of the token the request came with (`None` on a socket, which holds
/// the session itself). Reusing a rotated-out token revokes the whole session.
pub async fn refresh(
    d: &Deps,
    sid: &str,
    rec: &SessionRecord,
    presented: Option<&str>,
) -> Result<Rotation> {
    let now = runtime::now_ms();
    let ttl = ttl_ms(&d.limits, rec.created_ms, now);
    if ttl == 0 {
        return Ok(Rotation::Gone);
    }
    let token = new_token();
    let hash = hash_token(&token);
    let mut c = d.redis.get().await?;
    let (what, old): (String, String) = redis::Script::new(ROTATE_SCRIPT)
        .key(sess_key(d, sid))
        .arg(presented.unwrap_or(""))
        .arg(&hash)
        .arg(now)
        .arg(ttl)
        .invoke_async(&mut c)
        .await?;
    match what.as_str() {
        "rotated" => {
            let _: () = c.pset_ex(tok_key(d, &hash), sid, ttl).await?;
            let _: () = c
                .expire(tok_key(d, &old), d.limits.token_grace_s as i64)
                .await?;
            Ok(Rotation::Rotated(token))
        }
        "reused" => {
            revoke(d, sid, rec).await?;
            for h in [Some(old.as_str()), presented].into_iter().flatten() {
                let _: () = c.del(tok_key(d, h)).await?;
            }
            Ok(Rotation::Reused)
        }
        _ => Ok(Rotation::Gone),
    }
}

/// End one session. Its three keys live on three slots, so possibly on three masters; each
/// deletion is acknowledged by `limits.revocation_replicas` replicas of its own master before
/// the revocation counts as done ([`replicated`]), so a failover promoting one of them cannot
/// bring the session back. Otherwise: `unavailable` (repeating a revocation is harmless), and
/// `sb_revocations_unacknowledged_total` counts it.
pub async fn revoke(d: &Deps, sid: &str, rec: &SessionRecord) -> Result<()> {
    let mut tok = redis::cmd("DEL");
    tok.arg(tok_key(d, &rec.token_hash));
    let mut sess = redis::cmd("DEL");
    sess.arg(sess_key(d, sid));
    let (a, b) = futures::try_join!(replicated(d, tok), replicated(d, sess))?;
    if !(a && b) {
        return Err(unconfirmed(d));
    }
    // Out of the user's index last: a logout everywhere retried after `unavailable` still finds
    // the session there, and confirms it gone ([`revoke_all`]).
    let mut index = redis::cmd("SREM");
    index.arg(user_key(d, rec.user_id)).arg(sid);
    if replicated(d, index).await? {
        Ok(())
    } else {
        Err(unconfirmed(d))
    }
}

/// A revocation too few replicas acknowledged: counted, and `unavailable` for the client.
fn unconfirmed(d: &Deps) -> crate::Error {
    d.metrics.revocations_unacknowledged.inc();
    crate::refuse(
        topics::ErrorCode::Unavailable,
        "the revocation could not be confirmed by a replica; retry",
    )
}

/// Deletes a key that is already gone, in a way that always reaches the replication stream (a
/// `DEL` of a missing key is not replicated, so a `WAIT` after it would confirm nothing).
const FORCE_DEL: &str = "redis.call('SET', KEYS[1], '') return redis.call('DEL', KEYS[1])";

/// A revocation retried after `unavailable` finds its session already gone from the master; that
/// deletion must reach a replica before the retry is answered as for a gone session. A write to
/// the key, acknowledged (`WAIT`), means the replicas have everything the master did to it
/// before — the earlier deletion included. `what` is a token's hash or a session's id: called
/// only once the key was read as absent (or as a session past its end).
pub async fn confirm_gone(d: &Deps, what: Gone<'_>) -> Result<()> {
    let key = match what {
        Gone::Token(hash) if hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
            tok_key(d, hash)
        }
        // Not a token this service made: there is nothing to confirm.
        Gone::Token(_) => return Ok(()),
        Gone::Session(sid) => sess_key(d, sid),
    };
    let mut write = redis::cmd("EVAL");
    write.arg(FORCE_DEL).arg(1).arg(key);
    if replicated(d, write).await? {
        Ok(())
    } else {
        Err(unconfirmed(d))
    }
}

/// What [`confirm_gone`] confirms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gone<'a> {
    Token(&'a str),
    Session(&'a str),
}

/// Run one write to one key (redis-rs routes it by that key) on the revocation connection, then, on that
/// same connection and node, `WAIT` for `limits.revocation_replicas` replicas to have it; true
/// if enough did within `limits.revocation_ack_timeout_ms`. `WAIT` counts the replicas that
/// have every earlier write of the connection it is sent on, and only on the node it reaches.
/// The two go as one pipeline: redis-rs sends a cluster pipeline to the node of its first keyed
/// command (`WAIT` has no key), so the `WAIT` follows the write on that node's socket. A
/// connection of their own (not the shared one): a `WAIT` blocks its connection until it is
/// answered, and the handshake's reads must not queue behind it.
async fn replicated(d: &Deps, write: redis::Cmd) -> Result<bool> {
    let need = d.limits.revocation_replicas;
    let mut c = d.revocations.get().await?;
    let mut p = redis::pipe();
    p.add_command(write).ignore();
    if need == 0 {
        let () = p.query_async(&mut c).await?;
        return Ok(true);
    }
    // `WAIT n 0` would wait forever.
    let timeout = d.limits.revocation_ack_timeout_ms.max(1);
    let (acked,): (u64,) = p
        .cmd("WAIT")
        .arg(need)
        .arg(timeout)
        .query_async(&mut c)
        .await?;
    Ok(acked >= need)
}

/// Every live session of a user (dead ids are dropped from the index on the way).
pub async fn list(d: &Deps, user: Id) -> Result<Vec<(String, SessionRecord)>> {
    let mut c = d.redis.get().await?;
    let ids: Vec<String> = c.smembers(user_key(d, user)).await?;
    let mut out = Vec::new();
    for sid in ids {
        match load(d, &sid).await? {
            Some(r) => out.push((sid, r)),
            None => {
                let mut c = d.redis.get().await?;
                let _: () = c.srem(user_key(d, user), &sid).await?;
            }
        }
    }
    out.sort_by_key(|(_, r)| r.created_ms);
    Ok(out)
}

/// End every session of a user; returns their ids. A session still in the user's index but
/// gone (expired, or revoked by an earlier attempt answered `unavailable`) is confirmed gone on
/// the replicas before it leaves the index.
pub async fn revoke_all(d: &Deps, user: Id) -> Result<Vec<String>> {
    let mut c = d.redis.get().await?;
    let ids: Vec<String> = c.smembers(user_key(d, user)).await?;
    for sid in &ids {
        match load(d, sid).await? {
            Some(rec) => revoke(d, sid, &rec).await?,
            None => {
                confirm_gone(d, Gone::Session(sid)).await?;
                let _: () = c.srem(user_key(d, user), sid).await?;
            }
        }
    }
    Ok(ids)
}

/// Count an attempt in a fixed one-minute window; true while under `limit`.
pub async fn allow(d: &Deps, what: &str, limit: u64) -> Result<bool> {
    let window = runtime::now_ms() / 60_000;
    let key = d.keys.key(format!("rl:{what}:{window}"));
    let mut c = d.redis.get().await?;
    let n: u64 = c.incr(&key, 1).await?;
    if n == 1 {
        let _: () = c.expire(&key, 120).await?;
    }
    Ok(n <= limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_random_and_url_safe() {
        let a = new_token();
        assert_ne!(a, new_token());
        assert!(a.len() >= 43, "256 bits");
        assert!(a
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(new_session_id().len(), 32);
        assert_eq!(hash_token("x").len(), 64);
    }

    #[test]
    fn a_session_lives_idle_time_but_never_past_its_absolute_end() {
        let l = crate::Limits {
            session_idle_timeout_s: 600,
            session_max_lifetime_s: 3600,
            ..Default::default()
        };
        assert_eq!(ttl_ms(&l, 1_000, 1_000), 600_000, "idle first");
        assert_eq!(ttl_ms(&l, 0, 3_300_000), 300_000, "cut at the end");
        assert_eq!(ttl_ms(&l, 0, 3_600_000), 0, "over");
        assert_eq!(ttl_ms(&l, 0, 9_999_999), 0);
        let huge = crate::Limits {
            session_max_lifetime_s: u64::MAX,
            ..l
        };
        assert_eq!(ttl_ms(&huge, u64::MAX, 0), 600_000, "no overflow");
    }

    #[test]
    fn parses_records() {
        let mut m: HashMap<String, String> = HashMap::new();
        assert_eq!(parse(m.clone()), None);
        for (k, v) in [
            ("user_id", "5"),
            ("username", "ann"),
            ("created_ms", "1"),
            ("last_seen_ms", "2"),
            ("token_hash", "h"),
        ] {
            m.insert(k.into(), v.into());
        }
        let r = parse(m.clone()).unwrap();
        assert_eq!((r.user_id, r.device), (Id(5), None));
        m.insert("device".into(), "Chrome on Linux\u{0}<b>".into());
        assert_eq!(
            parse(m).unwrap().device.as_deref(),
            Some("Chrome on Linuxb")
        );
    }
}
