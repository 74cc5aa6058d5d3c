//! `user.lookup`: a public profile by username or id.

use super::{profile, store};
use crate::context::{Ctx, Outcome};
use crate::{refuse, Result};
use topics::{validate, ErrorCode, Id, Response};

/// A public profile by username or id (replica reads: a profile a moment old is fine).
pub async fn lookup(ctx: &Ctx<'_>, username: Option<&str>, user_id: Option<Id>) -> Result<Outcome> {
    let d = ctx.deps;
    let id = match (username, user_id) {
        // A name the sign-up rules refuse names nobody (and never reaches the directory).
        (Some(name), None) => match validate::username(name) {
            Ok(name) => store::id_of(&d.db, &name, false).await?,
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
        Some(id) => store::row(&d.db, id, false).await?,
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
