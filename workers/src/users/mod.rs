//! Accounts: sign-up (usernames unique across every shard through a username directory), lookup
//! of public profiles, and deletion (sessions revoked, sockets closed, links removed, history
//! kept with the author shown as deleted).

use crate::context::{Ctx, Deps, Outcome};
use crate::db::{exec_drop, is_duplicate, rows};
use crate::{refuse, sessions, Error, Result};
use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use mysql_async::prelude::*;
use std::collections::HashMap;
use topics::frames::UserProfile;
use topics::{validate, ErrorCode, Id, Request, Response};

/// The users domain's requests.
pub async fn handle(ctx: &Ctx<'_>) -> crate::Result<Outcome> {
    match &ctx.env.request {
        Request::UserCreate { username, password } => create(ctx, username, password).await,
        Request::Me => me(ctx).await,
        Request::UserLookup { username, user_id } => {
            lookup(ctx, username.as_deref(), *user_id).await
        }
        Request::UserDelete => delete(ctx).await,
        other => Err(crate::Error::Unrouted(other.kind())),
    }
}

/// Shown instead of a deleted author's name.
pub const DELETED: &str = "[deleted]";

/// At most one Argon2 computation per core at once, on tokio's blocking pool, so a burst of
/// sign-ups and logins queues here instead of filling the pool. Each computation allocates
/// 19 MiB; that it goes back to the OS afterwards depends on the allocator: glibc keeps it in the
/// heap unless its mmap threshold is fixed, which `./sb` does (`MALLOC_MMAP_THRESHOLD_`,
/// docs/operations.md).
async fn off_runtime<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    static SLOTS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    let slots = SLOTS.get_or_init(|| {
        tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get()))
    });
    let _slot = slots
        .acquire()
        .await
        .expect("the semaphore is never closed");
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::Hash(e.to_string()))
}

/// Argon2id with OWASP's parameters (m = 19456 KiB, t = 2, p = 1), off the async runtime.
pub async fn hash_password(password: String) -> Result<String> {
    off_runtime(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| Error::Hash(e.to_string()))
    })
    .await?
}

/// Check a password; with no stored hash, burn the same work against a dummy so unknown users
/// and wrong passwords take equally long.
pub async fn verify_password(password: String, stored: Option<String>) -> Result<bool> {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    off_runtime(move || {
        let known = stored.is_some();
        let stored = stored.unwrap_or_else(|| {
            DUMMY
                .get_or_init(|| {
                    Argon2::default()
                        .hash_password(b"dummy-password", &SaltString::generate(&mut OsRng))
                        .map(|h| h.to_string())
                        .unwrap_or_default()
                })
                .clone()
        });
        let ok = PasswordHash::new(&stored)
            .map(|h| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
            .unwrap_or(false);
        ok && known
    })
    .await
}

const CODE_ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";

/// A personal invite code: 10 characters of an unambiguous alphabet (50 bits).
pub fn new_invite_code() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..10)
        .map(|_| CODE_ALPHABET[rng.random_range(0..CODE_ALPHABET.len())] as char)
        .collect()
}

/// Normalise a code typed by a person: trim, upper-case, drop spaces and dashes.
pub fn normalise_code(raw: &str) -> String {
    raw.chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .collect::<String>()
        .to_ascii_uppercase()
}

type UserRow = (u64, String, String, String, u64, Option<u64>);

async fn row(d: &Deps, user: Id, primary: bool) -> Result<Option<UserRow>> {
    let shard = d.db.by_id(user);
    let pool = if primary {
        &shard.primary
    } else {
        &shard.replica
    };
    let mut c = pool.get_conn().await?;
    Ok(c.exec_first(
        "SELECT id, username, password_hash, invite_code, created_at_ms, deleted_at_ms FROM users WHERE id = ?",
        (user.0,),
    )
    .await?)
}

/// Does this account exist and is it not deleted (read from the primary, together with the
/// other checks waiting for that shard: [`crate::accounts`])?
pub async fn exists(d: &Deps, user: Id) -> Result<bool> {
    d.accounts.exists(user).await
}

/// (id, username, password hash) of a live account, by username.
pub async fn credentials(d: &Deps, username: &str) -> Result<Option<(Id, String, String)>> {
    let Some(user) = id_of(d, username, true).await? else {
        return Ok(None);
    };
    Ok(match row(d, user, true).await? {
        Some((id, name, hash, _, _, None)) => Some((Id(id), name, hash)),
        _ => None,
    })
}

async fn id_of(d: &Deps, username: &str, primary: bool) -> Result<Option<Id>> {
    let shard = d.db.by_key(username);
    let pool = if primary {
        &shard.primary
    } else {
        &shard.replica
    };
    let mut c = pool.get_conn().await?;
    let id: Option<u64> = c
        .exec_first(
            "SELECT user_id FROM usernames WHERE username = ?",
            (username,),
        )
        .await?;
    Ok(id.map(Id))
}

/// Public profiles of these users, deleted ones included (`deleted` true), from replicas.
pub async fn profiles(d: &Deps, users: &[Id]) -> Result<HashMap<Id, (String, bool)>> {
    let mut by_shard: HashMap<usize, Vec<u64>> = HashMap::new();
    for u in users {
        by_shard.entry(d.db.by_id(*u).index).or_default().push(u.0);
    }
    let mut out = HashMap::new();
    for (shard, ids) in by_shard {
        let mut c = d.db.all()[shard].replica.get_conn().await?;
        let list = ids
            .iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let rows: Vec<(u64, String, Option<u64>)> = c
            .query(format!(
                "SELECT id, username, deleted_at_ms FROM users WHERE id IN ({list})"
            ))
            .await?;
        for (id, name, deleted) in rows {
            out.insert(Id(id), (name, deleted.is_some()));
        }
    }
    Ok(out)
}

fn profile(r: &UserRow) -> UserProfile {
    UserProfile {
        user_id: Id(r.0),
        username: r.1.clone(),
        created_at_ms: r.4,
    }
}

/// Sign up. Safe to retry: a redelivered request finds its own directory entry and completes.
pub async fn create(ctx: &Ctx<'_>, username: &str, password: &str) -> Result<Outcome> {
    let d = ctx.deps;
    let name = validate::username(username)?;
    validate::password(password)?;
    let peer = ctx.env.peer.clone().unwrap_or_default();
    if !sessions::allow(
        d,
        &format!("signup:a:{peer}"),
        d.limits.signups_per_address_per_minute,
    )
    .await?
    {
        return Err(refuse(
            ErrorCode::RateLimited,
            "too many sign-ups from this address; wait a minute",
        ));
    }
    let key = ctx.request_key();
    let user = {
        let mut c = d.db.by_key(&name).primary.get_conn().await?;
        let fresh = d.ids.next();
        match c
            .exec_drop(
                "INSERT INTO usernames (username, user_id, request_key) VALUES (?, ?, ?)",
                (&name, fresh.0, &key),
            )
            .await
        {
            Ok(()) => fresh,
            Err(e) if is_duplicate(&e) => {
                let (owner, k): (u64, String) = c
                    .exec_first(
                        "SELECT user_id, request_key FROM usernames WHERE username = ?",
                        (&name,),
                    )
                    .await?
                    .ok_or_else(|| refuse(ErrorCode::Unavailable, "retry"))?;
                if k != key {
                    return Err(refuse(ErrorCode::Conflict, "username is taken"));
                }
                Id(owner)
            }
            Err(e) => return Err(e.into()),
        }
    };
    let hash = hash_password(password.to_string()).await?;
    let now = runtime::now_ms();
    {
        let mut c = d.db.by_id(user).primary.get_conn().await?;
        c.exec_drop(
            "INSERT IGNORE INTO users (id, username, password_hash, invite_code, created_at_ms) VALUES (?, ?, ?, ?, ?)",
            (user.0, &name, &hash, new_invite_code(), now),
        )
        .await?;
    }
    let r = row(d, user, true)
        .await?
        .ok_or_else(|| refuse(ErrorCode::Unavailable, "retry"))?;
    let mut cc = d.db.by_key(&r.3).primary.get_conn().await?;
    cc.exec_drop(
        "INSERT IGNORE INTO invite_codes (code, user_id) VALUES (?, ?)",
        (&r.3, user.0),
    )
    .await?;
    Ok(Response::User {
        user: profile(&r),
        invite_code: Some(r.3.clone()),
    }
    .into())
}

/// My own profile, with my invite code.
pub async fn me(ctx: &Ctx<'_>) -> Result<Outcome> {
    let c = ctx.caller()?;
    match row(ctx.deps, c.user_id, true).await? {
        Some(r) if r.5.is_none() => Ok(Response::User {
            user: profile(&r),
            invite_code: Some(r.3.clone()),
        }
        .into()),
        _ => Err(refuse(ErrorCode::NotFound, "no such user")),
    }
}

/// A public profile by username or id (replica reads: a profile a moment old is fine).
pub async fn lookup(ctx: &Ctx<'_>, username: Option<&str>, user_id: Option<Id>) -> Result<Outcome> {
    let d = ctx.deps;
    let id = match (username, user_id) {
        // A name the sign-up rules refuse names nobody (and never reaches the directory).
        (Some(name), None) => match validate::username(name) {
            Ok(name) => id_of(d, &name, false).await?,
            Err(_) => None,
        },
        (None, Some(id)) => Some(id),
        _ => {
            return Err(refuse(
                ErrorCode::InvalidInput,
                "give exactly one of username and user_id",
            ))
        }
    };
    let found = match id {
        Some(id) => row(d, id, false).await?,
        None => None,
    };
    match found {
        Some(r) if r.5.is_none() => Ok(Response::User {
            user: profile(&r),
            invite_code: None,
        }
        .into()),
        _ => Err(refuse(ErrorCode::NotFound, "no such user")),
    }
}

/// Delete my account. Each step is idempotent, and sessions go last, so a retry after a crash
/// finishes the job.
pub async fn delete(ctx: &Ctx<'_>) -> Result<Outcome> {
    let d = ctx.deps;
    let me = ctx.caller()?.user_id;
    let Some(r) = row(d, me, true).await? else {
        return Err(refuse(ErrorCode::NotFound, "no such user"));
    };
    let mine = &d.db.by_id(me).primary;
    exec_drop(
        mine,
        "UPDATE users SET deleted_at_ms = COALESCE(deleted_at_ms, ?), password_hash = '' WHERE id = ?",
        (runtime::now_ms(), me.0),
    )
    .await?;
    // Free the username and the invite code.
    exec_drop(
        &d.db.by_key(&r.1).primary,
        "DELETE FROM usernames WHERE username = ? AND user_id = ?",
        (&r.1, me.0),
    )
    .await?;
    exec_drop(
        &d.db.by_key(&r.3).primary,
        "DELETE FROM invite_codes WHERE code = ? AND user_id = ?",
        (&r.3, me.0),
    )
    .await?;
    // Links on both sides; my conversation memberships (the peers keep theirs and the history).
    let peers: Vec<u64> =
        rows(mine, "SELECT peer_id FROM links WHERE user_id = ?", (me.0,)).await?;
    for p in &peers {
        exec_drop(
            &d.db.by_id(Id(*p)).primary,
            "DELETE FROM links WHERE user_id = ? AND peer_id = ?",
            (p, me.0),
        )
        .await?;
    }
    exec_drop(mine, "DELETE FROM links WHERE user_id = ?", (me.0,)).await?;
    exec_drop(mine, "DELETE FROM memberships WHERE user_id = ?", (me.0,)).await?;
    let ids = sessions::revoke_all(d, me).await?;
    Ok(Outcome {
        response: Some(Response::Ok),
        clear_session: true,
        ..Default::default()
    }
    .deliver(crate::auth::close_sessions(me, ids, "account deleted")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invite_codes() {
        let c = new_invite_code();
        assert_eq!(c.len(), 10);
        assert!(c.bytes().all(|b| CODE_ALPHABET.contains(&b)));
        assert_eq!(normalise_code(" abcd-efgh 23 "), "ABCDEFGH23");
    }

    #[tokio::test]
    async fn passwords_hash_and_verify() {
        let h = hash_password("hunter2!x".into()).await.unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(verify_password("hunter2!x".into(), Some(h.clone()))
            .await
            .unwrap());
        assert!(!verify_password("wrong".into(), Some(h)).await.unwrap());
        assert!(!verify_password("x".into(), None).await.unwrap());
        assert!(!verify_password("x".into(), Some("garbage".into()))
            .await
            .unwrap());
    }
}
