//! Accounts: sign-up (usernames unique across every shard through a username directory), lookup
//! of public profiles, and deletion (sessions revoked, sockets closed, links removed, history
//! kept with the author shown as deleted).

pub mod create;
pub mod delete;
pub mod invite_code;
pub mod lookup;
pub mod me;
pub mod password;
pub mod rotate_invite_code;
pub mod store;

pub use invite_code::{new_invite_code, normalise_code};
pub use password::{hash_password, verify_password};
pub use store::profiles;

use crate::context::{Ctx, Deps, Outcome};
use crate::Result;
use topics::frames::UserProfile;
use topics::{Id, Request};

/// The users domain's requests.
pub async fn handle(ctx: &Ctx<'_>) -> crate::Result<Outcome> {
    match &ctx.env.request {
        Request::UserCreate {
            username,
            password,
            client_request_id,
        } => create::create(ctx, username, password, client_request_id.as_deref()).await,
        Request::Me => me::me(ctx).await,
        Request::UserLookup { username, user_id } => {
            lookup::lookup(ctx, username.as_deref(), *user_id).await
        }
        Request::UserDelete => delete::delete(ctx).await,
        Request::InviteCodeRotate => rotate_invite_code::rotate_invite_code(ctx).await,
        other => Err(crate::Error::Unrouted(other.kind())),
    }
}

/// Shown instead of a deleted author's name.
pub const DELETED: &str = "[deleted]";

/// Does this account exist and is it not deleted (read from the primary, together with the
/// other checks waiting for that shard: [`crate::accounts`])?
pub async fn exists(d: &Deps, user: Id) -> Result<bool> {
    d.accounts.exists(user).await
}

/// (id, username, password hash) of a live account, by username.
pub async fn credentials(d: &Deps, username: &str) -> Result<Option<(Id, String, String)>> {
    let Some(user) = store::id_of(&d.db, username, true).await? else {
        return Ok(None);
    };
    Ok(match store::row(&d.db, user, true).await? {
        Some((id, name, hash, _, _, None)) => Some((Id(id), name, hash)),
        _ => None,
    })
}

fn profile(r: &store::UserRow) -> UserProfile {
    UserProfile {
        user_id: Id(r.0),
        username: r.1.clone(),
        created_at_ms: r.4,
    }
}
