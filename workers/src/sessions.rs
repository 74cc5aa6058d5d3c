//! Sessions in Redis Cluster. A session has a stable id and a bearer token that rotates on every
//! refresh; only the token's SHA-256 is stored. Keys:
//! - `tok:<sha256>` → session id (expires with the session; a rotated-out token lingers for a
//!   short grace period so requests already in flight do not fail);
//! - `sess:<id>` → hash {user_id, username, created_ms, last_seen_ms, token_hash}, idle expiry;
//! - `usess:{<user>}` → set of the user's session ids (cleaned lazily when listed).

use crate::dispatch::Deps;
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
    })
}

/// Create a session; returns (token, session id).
pub async fn create(d: &Deps, user: Id, username: &str) -> Result<(String, String)> {
    let token = new_token();
    let sid = new_session_id();
    let hash = hash_token(&token);
    let now = runtime::now_ms();
    let ttl = d.limits.session_idle_timeout_s;
    let mut c = d.redis.get().await?;
    let _: () = redis::pipe()
        .hset_multiple(
            sess_key(d, &sid),
            &[
                ("user_id", user.to_string()),
                ("username", username.to_string()),
                ("created_ms", now.to_string()),
                ("last_seen_ms", now.to_string()),
                ("token_hash", hash.clone()),
            ],
        )
        .expire(sess_key(d, &sid), ttl as i64)
        .query_async(&mut c)
        .await?;
    let _: () = c.set_ex(tok_key(d, &hash), &sid, ttl).await?;
    let _: () = c.sadd(user_key(d, user), &sid).await?;
    Ok((token, sid))
}

pub async fn load(d: &Deps, sid: &str) -> Result<Option<SessionRecord>> {
    let mut c = d.redis.get().await?;
    let map: HashMap<String, String> = c.hgetall(sess_key(d, sid)).await?;
    Ok(parse(map))
}

/// The session a token hash opens, if it is live.
pub async fn resolve_token(d: &Deps, hash: &str) -> Result<Option<(String, SessionRecord)>> {
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(None);
    }
    let mut c = d.redis.get().await?;
    let sid: Option<String> = c.get(tok_key(d, hash)).await?;
    drop(c);
    let Some(sid) = sid else { return Ok(None) };
    Ok(load(d, &sid).await?.map(|r| (sid, r)))
}

/// Extend the session's idle lifetime and rotate its token; returns the new token.
pub async fn refresh(d: &Deps, sid: &str, rec: &SessionRecord) -> Result<String> {
    let token = new_token();
    let hash = hash_token(&token);
    let ttl = d.limits.session_idle_timeout_s;
    let mut c = d.redis.get().await?;
    let _: () = c.set_ex(tok_key(d, &hash), sid, ttl).await?;
    let _: () = redis::pipe()
        .hset(sess_key(d, sid), "token_hash", &hash)
        .hset(
            sess_key(d, sid),
            "last_seen_ms",
            runtime::now_ms().to_string(),
        )
        .expire(sess_key(d, sid), ttl as i64)
        .query_async(&mut c)
        .await?;
    let _: () = c
        .expire(tok_key(d, &rec.token_hash), d.limits.token_grace_s as i64)
        .await?;
    Ok(token)
}

/// End one session.
pub async fn revoke(d: &Deps, sid: &str, rec: &SessionRecord) -> Result<()> {
    let mut c = d.redis.get().await?;
    let _: () = c.del(tok_key(d, &rec.token_hash)).await?;
    let _: () = c.del(sess_key(d, sid)).await?;
    let _: () = c.srem(user_key(d, rec.user_id), sid).await?;
    Ok(())
}

/// Every live session of a user (dead ids are dropped from the index on the way).
pub async fn list(d: &Deps, user: Id) -> Result<Vec<(String, SessionRecord)>> {
    let mut c = d.redis.get().await?;
    let ids: Vec<String> = c.smembers(user_key(d, user)).await?;
    drop(c);
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

/// End every session of a user; returns their ids.
pub async fn revoke_all(d: &Deps, user: Id) -> Result<Vec<String>> {
    let all = list(d, user).await?;
    for (sid, rec) in &all {
        revoke(d, sid, rec).await?;
    }
    Ok(all.into_iter().map(|(sid, _)| sid).collect())
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
        assert_eq!(parse(m).unwrap().user_id, Id(5));
    }
}
