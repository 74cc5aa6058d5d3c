//! `session.refresh`: keep a session alive and rotate its token.

use super::{close_sessions, grant, session_response};
use crate::context::{Ctx, Outcome};
use crate::sessions::Rotation;
use crate::{refuse, sessions, Result};
use topics::{Auth, ErrorCode};

/// Keep-alive: extends the idle lifetime (never past the session's absolute end) and rotates
/// the token. Refreshing with a token that was already rotated out (other than one retry of a
/// refresh whose answer was lost, see `sessions::refresh`) means two parties hold the session:
/// it is revoked and its sockets are closed, as by a logout.
pub async fn refresh(ctx: &Ctx<'_>) -> Result<Outcome> {
    let c = ctx.caller()?;
    let d = ctx.deps;
    let expired = || refuse(ErrorCode::Unauthorized, "invalid or expired session");
    let rec = sessions::load(d, &c.session_id)
        .await?
        .ok_or_else(expired)?;
    let presented = match &ctx.env.auth {
        Auth::Token { token_hash } => Some(token_hash.as_str()),
        _ => None,
    };
    let token = match sessions::refresh(d, &c.session_id, &rec, presented).await? {
        Rotation::Rotated(token) => token,
        Rotation::Gone => return Err(expired()),
        Rotation::Reused => {
            let close = close_sessions(
                c.user_id,
                vec![c.session_id.clone()],
                "session revoked: a rotated-out token was reused",
            );
            let payload = serde_json::to_vec(&close).expect("deliveries serialise");
            d.publisher
                .send(&d.topics.deliver(), &close.key(), &payload)
                .await?;
            return Err(refuse(
                ErrorCode::Unauthorized,
                "session revoked: a rotated-out token was reused",
            ));
        }
    };
    let g = grant(
        ctx,
        &c.session_id,
        c.user_id,
        &c.username,
        Some(token.clone()),
    );
    Ok(Outcome {
        response: Some(session_response(&g, token)),
        session: Some(g),
        ..Default::default()
    })
}
