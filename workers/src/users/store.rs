//! The SQL of accounts: the `users` rows (on the user's shard), the username directory and the
//! invite codes (each sharded by its key).

use crate::db::{exec_drop, is_duplicate, PooledConn, Shards};
use crate::{Error, Result};
use mysql_async::prelude::*;
use std::collections::HashMap;
use topics::Id;

/// A `users` row: (id, username, password_hash, invite_code, created_at_ms, deleted_at_ms).
pub type UserRow = (u64, String, String, String, u64, Option<u64>);

/// A user's row, from the primary or the replica.
pub async fn row(db: &Shards, user: Id, primary: bool) -> Result<Option<UserRow>> {
    let read = async |c: &mut PooledConn| {
        Ok(c.exec_first(
            "SELECT id, username, password_hash, invite_code, created_at_ms, deleted_at_ms FROM users WHERE id = ?",
            (user.0,),
        )
        .await?)
    };
    let shard = db.by_id(user);
    if primary {
        shard.on_primary(read).await
    } else {
        shard.on_replica(read).await
    }
}

/// The id the username directory gives `username`.
pub async fn id_of(db: &Shards, username: &str, primary: bool) -> Result<Option<Id>> {
    let read = async |c: &mut PooledConn| {
        let id: Option<u64> = c
            .exec_first(
                "SELECT user_id FROM usernames WHERE username = ?",
                (username,),
            )
            .await?;
        Ok(id.map(Id))
    };
    let shard = db.by_key(username);
    if primary {
        shard.on_primary(read).await
    } else {
        shard.on_replica(read).await
    }
}

/// Public profiles of these users, deleted ones included (`deleted` true), from replicas.
pub async fn profiles(db: &Shards, users: &[Id]) -> Result<HashMap<Id, (String, bool)>> {
    let mut by_shard: HashMap<usize, Vec<u64>> = HashMap::new();
    for u in users {
        by_shard.entry(db.by_id(*u).index).or_default().push(u.0);
    }
    let mut out = HashMap::new();
    for (shard, ids) in by_shard {
        let list = ids
            .iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let rows: Vec<(u64, String, Option<u64>)> = db.all()[shard]
            .on_replica(async |c| {
                Ok(c.query(format!(
                    "SELECT id, username, deleted_at_ms FROM users WHERE id IN ({list})"
                ))
                .await?)
            })
            .await?;
        for (id, name, deleted) in rows {
            out.insert(Id(id), (name, deleted.is_some()));
        }
    }
    Ok(out)
}

/// What the username directory says after a sign-up tried to claim a name.
#[derive(Debug, PartialEq)]
pub enum Claim {
    /// The name was free and is now the new id's.
    Claimed,
    /// The name was already there: its owner, and the key of the request that claimed it.
    Owned { owner: Id, request_key: String },
    /// The name was there, but its row went away before it could be read.
    Gone,
}

/// Claim `name` for `fresh` in the username directory, tagged with the claiming request's key.
pub async fn claim_username(db: &Shards, name: &str, fresh: Id, key: &str) -> Result<Claim> {
    db.by_key(name)
        .on_primary(async |c| {
            match c
                .exec_drop(
                    "INSERT INTO usernames (username, user_id, request_key) VALUES (?, ?, ?)",
                    (name, fresh.0, key),
                )
                .await
            {
                Ok(()) => Ok(Claim::Claimed),
                Err(e) if is_duplicate(&e) => {
                    let owned: Option<(u64, String)> = c
                        .exec_first(
                            "SELECT user_id, request_key FROM usernames WHERE username = ?",
                            (name,),
                        )
                        .await?;
                    Ok(match owned {
                        Some((owner, request_key)) => Claim::Owned {
                            owner: Id(owner),
                            request_key,
                        },
                        None => Claim::Gone,
                    })
                }
                Err(e) => Err(e.into()),
            }
        })
        .await
}

/// Create the user's row (once).
pub async fn add_user(
    db: &Shards,
    user: Id,
    name: &str,
    hash: &str,
    code: &str,
    now: u64,
) -> Result<()> {
    exec_drop(
        db.by_id(user),
        "INSERT IGNORE INTO users (id, username, password_hash, invite_code, created_at_ms) VALUES (?, ?, ?, ?, ?)",
        (user.0, name, hash, code, now),
    )
    .await
}

/// Point the invite code `code` at `user` (once).
pub async fn add_invite_code(db: &Shards, code: &str, user: Id) -> Result<()> {
    exec_drop(
        db.by_key(code),
        "INSERT IGNORE INTO invite_codes (code, user_id) VALUES (?, ?)",
        (code, user.0),
    )
    .await
}

/// The owner of an invite code.
pub async fn code_owner(db: &Shards, code: &str) -> Result<Option<Id>> {
    let owner: Option<u64> = db
        .by_key(code)
        .on_primary(async |c| {
            Ok(
                c.exec_first("SELECT user_id FROM invite_codes WHERE code = ?", (code,))
                    .await?,
            )
        })
        .await?;
    Ok(owner.map(Id))
}

/// Mark the account deleted (keeping the first time) and forget its password.
pub async fn mark_deleted(db: &Shards, user: Id, now: u64) -> Result<()> {
    exec_drop(
        db.by_id(user),
        "UPDATE users SET deleted_at_ms = COALESCE(deleted_at_ms, ?), password_hash = '' WHERE id = ?",
        (now, user.0),
    )
    .await
}

/// Free `name` in the username directory, if it is still `user`'s.
pub async fn free_username(db: &Shards, name: &str, user: Id) -> Result<()> {
    exec_drop(
        db.by_key(name),
        "DELETE FROM usernames WHERE username = ? AND user_id = ?",
        (name, user.0),
    )
    .await
}

/// Free the invite code `code`, if it is still `user`'s.
pub async fn free_invite_code(db: &Shards, code: &str, user: Id) -> Result<()> {
    exec_drop(
        db.by_key(code),
        "DELETE FROM invite_codes WHERE code = ? AND user_id = ?",
        (code, user.0),
    )
    .await
}

/// Store a fresh invite code of mine; false when the code already names someone.
pub async fn claim_invite_code(db: &Shards, code: &str, user: Id) -> Result<bool> {
    match exec_drop(
        db.by_key(code),
        "INSERT INTO invite_codes (code, user_id) VALUES (?, ?)",
        (code, user.0),
    )
    .await
    {
        Ok(()) => Ok(true),
        Err(Error::Db(e)) if is_duplicate(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Make `new` my invite code if `old` still is and the account lives; whether it did.
pub async fn replace_invite_code(db: &Shards, user: Id, old: &str, new: &str) -> Result<bool> {
    db.by_id(user)
        .on_primary(async |c| {
            c.exec_drop(
                "UPDATE users SET invite_code = ? WHERE id = ? AND invite_code = ? AND deleted_at_ms IS NULL",
                (new, user.0, old),
            )
            .await?;
            Ok(c.affected_rows() == 1)
        })
        .await
}
