//! `session.verify`: the handshake check.

use super::grant;
use crate::context::{Ctx, Outcome};
use crate::Result;
use topics::Response;

/// The handshake check: the edge learns whose connection this is.
pub async fn verify(ctx: &Ctx<'_>) -> Result<Outcome> {
    let c = ctx.caller()?;
    Ok(Outcome {
        response: Some(Response::Ok),
        session: Some(grant(ctx, &c.session_id, c.user_id, &c.username, None)),
        ..Default::default()
    })
}
