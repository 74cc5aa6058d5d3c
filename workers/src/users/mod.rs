//! Accounts: sign-up (usernames unique across every shard through a username directory), lookup
//! of public profiles, and deletion (sessions revoked, sockets closed, links removed, history
//! kept with the author shown as deleted).

pub mod create;
pub mod delete;
pub mod invite_code;
pub mod lookup;
pub mod me;
pub mod password;

pub use invite_code::{new_invite_code, normalise_code};
pub use password::{hash_password, verify_password};

use crate::context::{Ctx, Deps, Outcome};
use crate::db::Shards;
use crate::Result;
use mysql_async::prelude::*;
use std::collections::HashMap;
use topics::frames::UserProfile;
use topics::{Id, Request};

/// The users domain's requests.
pub async fn handle(ctx: &Ctx<'_>) -> crate::Result<Outcome> {
    match &ctx.env.request {
        Request::UserCreate { username, password } => create::create(ctx, username, password).await,
        Request::Me => me::me(ctx).await,
        Request::UserLookup { username, user_id } => {
            lookup::lookup(ctx, username.as_deref(), *user_id).await
        }
        Request::UserDelete => delete::delete(ctx).await,
        other => Err(crate::Error::Unrouted(other.kind())),
    }
}

/// Shown instead of a deleted author's name.
pub const DELETED: &str = "[deleted]";

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
pub async fn profiles(db: &Shards, users: &[Id]) -> Result<HashMap<Id, (String, bool)>> {
    let mut by_shard: HashMap<usize, Vec<u64>> = HashMap::new();
    for u in users {
        by_shard.entry(db.by_id(*u).index).or_default().push(u.0);
    }
    let mut out = HashMap::new();
    for (shard, ids) in by_shard {
        let mut c = db.all()[shard].replica.get_conn().await?;
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
