//! `user.rotate_invite_code`: replace my invite code with a fresh one, so a code that leaked stops
//! letting strangers invite me.

use super::{new_invite_code, profile, store};
use crate::context::{Ctx, Outcome};
use crate::{refuse, Result};
use topics::{ErrorCode, Response};

/// The old code stops resolving first, then a fresh code is stored, then my row names it. Each
/// step is safe to repeat: a retry after a crash reads the same old code from my row and goes on,
/// so a leaked code never outlives a rotation that started. (A crash between the second and the
/// third step leaves a code nobody was shown that still points to me; the next rotation's first
/// step does not remove it. It is as hard to guess as any code.)
pub async fn rotate_invite_code(ctx: &Ctx<'_>) -> Result<Outcome> {
    let d = ctx.deps;
    let me = ctx.caller()?.user_id;
    let r = match store::row(&d.db, me, true).await? {
        Some(r) if r.5.is_none() => r,
        _ => return Err(refuse(ErrorCode::NotFound, "no such user")),
    };
    let old = &r.3;
    store::free_invite_code(&d.db, old, me).await?;
    let code = loop {
        let code = d.db.live_key(new_invite_code);
        // A code that already names someone else: draw another.
        if store::claim_invite_code(&d.db, &code, me).await? {
            break code;
        }
    };
    if !store::replace_invite_code(&d.db, me, old, &code).await? {
        // Another rotation (an HTTP call of mine at the same moment) or a deletion came first:
        // my fresh code is not the one, and the answer is whatever my row says now.
        store::free_invite_code(&d.db, &code, me).await?;
        return super::me::me(ctx).await;
    }
    Ok(Response::User {
        user: profile(&r),
        invite_code: Some(code),
    }
    .into())
}
