//! `user.create`: sign up.

use super::store::{self, Claim};
use super::{hash_password, new_invite_code, profile, verify_password};
use crate::context::{Ctx, Outcome};
use crate::{refuse, sessions, Result};
use topics::{validate, ErrorCode, Response};

/// Sign up. Safe to resend: a redelivered request, or a resend of the client's with the same
/// `client_request_id`, finds its own directory entry and completes what the first left undone;
/// if the first completed, it is answered as the first was, when the password is the same.
pub async fn create(
    ctx: &Ctx<'_>,
    username: &str,
    password: &str,
    client_request_id: Option<&str>,
) -> Result<Outcome> {
    let d = ctx.deps;
    let name = validate::username(username)?;
    validate::password(password)?;
    let key = match client_request_id {
        Some(id) => {
            validate::client_request_id(id)?;
            client_key(id)
        }
        None => ctx.request_key(),
    };
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
    // The account's row and its code go to shards not known down: with one shard down, only
    // the names whose directory entry lives there cannot sign up.
    let fresh = d.db.live_id(|| d.ids.next());
    let user = match store::claim_username(&d.db, &name, fresh, &key).await? {
        Claim::Claimed => fresh,
        Claim::Owned { owner, request_key } if request_key == key => owner,
        Claim::Owned { .. } => return Err(taken()),
        Claim::Gone => return Err(refuse(ErrorCode::Unavailable, "retry")),
    };
    if user != fresh {
        // Resumed: if the first attempt wrote the account, it is the answer (its invite code's
        // entry may be what the first left undone).
        if let Some(r) = store::row(&d.db, user, true).await? {
            if !verify_password(password.to_string(), Some(r.2.clone())).await? {
                return Err(taken());
            }
            store::add_invite_code(&d.db, &r.3, user).await?;
            return Ok(created(&r));
        }
    }
    let hash = hash_password(password.to_string()).await?;
    let now = runtime::now_ms();
    let code = d.db.live_key(new_invite_code);
    store::add_user(&d.db, user, &name, &hash, &code, now).await?;
    let r = store::row(&d.db, user, true)
        .await?
        .ok_or_else(|| refuse(ErrorCode::Unavailable, "retry"))?;
    store::add_invite_code(&d.db, &r.3, user).await?;
    Ok(created(&r))
}

/// The directory's `request_key` of a sign-up the client named, told apart from the keys of
/// those it did not (`<edge id>/<req>`) by its prefix, which no edge id has.
pub fn client_key(client_request_id: &str) -> String {
    format!("client:{client_request_id}")
}

fn taken() -> crate::Error {
    refuse(ErrorCode::Conflict, "username is taken")
}

fn created(r: &store::UserRow) -> Outcome {
    Response::User {
        user: profile(r),
        invite_code: Some(r.3.clone()),
    }
    .into()
}
