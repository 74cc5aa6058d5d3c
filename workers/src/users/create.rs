//! `user.create`: sign up.

use super::store::{self, Claim};
use super::{hash_password, new_invite_code, profile};
use crate::context::{Ctx, Outcome};
use crate::{refuse, sessions, Result};
use topics::{validate, ErrorCode, Response};

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
    // The account's row and its code go to shards not known down: with one shard down, only
    // the names whose directory entry lives there cannot sign up.
    let fresh = d.db.live_id(|| d.ids.next());
    let user = match store::claim_username(&d.db, &name, fresh, &key).await? {
        Claim::Claimed => fresh,
        Claim::Owned { owner, request_key } if request_key == key => owner,
        Claim::Owned { .. } => return Err(refuse(ErrorCode::Conflict, "username is taken")),
        Claim::Gone => return Err(refuse(ErrorCode::Unavailable, "retry")),
    };
    let hash = hash_password(password.to_string()).await?;
    let now = runtime::now_ms();
    let code = d.db.live_key(new_invite_code);
    store::add_user(&d.db, user, &name, &hash, &code, now).await?;
    let r = store::row(&d.db, user, true)
        .await?
        .ok_or_else(|| refuse(ErrorCode::Unavailable, "retry"))?;
    store::add_invite_code(&d.db, &r.3, user).await?;
    Ok(Response::User {
        user: profile(&r),
        invite_code: Some(r.3.clone()),
    }
    .into())
}
