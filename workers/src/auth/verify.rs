//! `session.verify`: the handshake check. A session that checks out has its connection put in the
//! registry here, before the edge answers the upgrade, so deliveries find it as soon as the
//! socket is open (and the handshake costs no `connected` event through Kafka).

use super::grant;
use crate::context::{Ctx, Outcome};
use crate::presence::edge_events::{register, VERIFY_MAX_AGE_MS};
use crate::Result;
use topics::{ErrorCode, Response};

/// The handshake check: the edge learns whose connection this is.
pub async fn verify(ctx: &Ctx<'_>) -> Result<Outcome> {
    let c = ctx.caller()?;
    let env = ctx.env;
    if runtime::now_ms().saturating_sub(env.sent_at_ms) > VERIFY_MAX_AGE_MS {
        return Err(crate::refuse(
            ErrorCode::Unavailable,
            "the handshake check came too late; connect again",
        ));
    }
    if !register(
        ctx.deps,
        &env.edge,
        env.conn,
        c.user_id,
        &c.username,
        &c.session_id,
    )
    .await?
    {
        return Err(crate::refuse(
            ErrorCode::Unavailable,
            "the edge gave up on this handshake; connect again",
        ));
    }
    Ok(Outcome {
        response: Some(Response::Ok),
        session: Some(grant(ctx, &c.session_id, c.user_id, &c.username, None)),
        ..Default::default()
    })
}
