//! `user.create`: sign up.

use super::hash_password;
use super::{new_invite_code, profile, row};
use crate::context::{Ctx, Outcome};
use crate::db::is_duplicate;
use crate::{refuse, sessions, Result};
use mysql_async::prelude::*;
use topics::{validate, ErrorCode, Id, Response};

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
