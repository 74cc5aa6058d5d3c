//! `user.rotate_invite_code`: replace my invite code with a fresh one, so a code that leaked stops
//! letting strangers invite me.

use super::{new_invite_code, profile, row};
use crate::context::{Ctx, Outcome};
use crate::db::{exec_drop, is_duplicate};
use crate::{refuse, Error, Result};
use mysql_async::prelude::*;
use topics::{ErrorCode, Response};

/// The old code stops resolving first, then a fresh code is stored, then my row names it. Each
/// step is safe to repeat: a retry after a crash reads the same old code from my row and goes on,
/// so a leaked code never outlives a rotation that started. (A crash between the second and the
/// third step leaves a code nobody was shown that still points to me; the next rotation's first
/// step does not remove it. It is as hard to guess as any code.)
pub async fn rotate_invite_code(ctx: &Ctx<'_>) -> Result<Outcome> {
    let d = ctx.deps;
    let me = ctx.caller()?.user_id;
    let r = match row(d, me, true).await? {
        Some(r) if r.5.is_none() => r,
        _ => return Err(refuse(ErrorCode::NotFound, "no such user")),
    };
    let old = &r.3;
    exec_drop(
        &d.db.by_key(old).primary,
        "DELETE FROM invite_codes WHERE code = ? AND user_id = ?",
        (old, me.0),
    )
    .await?;
    let code = loop {
        let code = new_invite_code();
        match exec_drop(
            &d.db.by_key(&code).primary,
            "INSERT INTO invite_codes (code, user_id) VALUES (?, ?)",
            (&code, me.0),
        )
        .await
        {
            Ok(()) => break code,
            // Someone else's code: draw another.
            Err(Error::Db(e)) if is_duplicate(&e) => continue,
            Err(e) => return Err(e),
        }
    };
    let mut c = d.db.by_id(me).primary.get_conn().await?;
    c.exec_drop(
        "UPDATE users SET invite_code = ? WHERE id = ? AND invite_code = ? AND deleted_at_ms IS NULL",
        (&code, me.0, old),
    )
    .await?;
    if c.affected_rows() == 0 {
        // Another rotation (an HTTP call of mine at the same moment) or a deletion came first:
        // my fresh code is not the one, and the answer is whatever my row says now.
        drop(c);
        exec_drop(
            &d.db.by_key(&code).primary,
            "DELETE FROM invite_codes WHERE code = ? AND user_id = ?",
            (&code, me.0),
        )
        .await?;
        return super::me(ctx).await;
    }
    Ok(Response::User {
        user: profile(&r),
        invite_code: Some(code),
    }
    .into())
}
