//! `user.me`: the caller's own profile.

use super::{profile, store};
use crate::context::{Ctx, Outcome};
use crate::{refuse, Result};
use topics::{ErrorCode, Response};

/// My own profile, with my invite code.
pub async fn me(ctx: &Ctx<'_>) -> Result<Outcome> {
    let c = ctx.caller()?;
    match store::row(&ctx.deps.db, c.user_id, true).await? {
        Some(r) if r.5.is_none() => Ok(Response::User {
            user: profile(&r),
            invite_code: Some(r.3.clone()),
        }
        .into()),
        _ => Err(refuse(ErrorCode::NotFound, "no such user")),
    }
}
