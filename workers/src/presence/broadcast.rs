//! `broadcast.send`: a message to every connected client.

use crate::context::{Ctx, Outcome};
use crate::{refuse, sessions, Result};
use topics::{validate, Delivery, ErrorCode, Event, Response, ServerFrame, Target};

/// A message to every connected client on every edge (rate limited per user).
pub async fn broadcast(ctx: &Ctx<'_>, text: &str) -> Result<Outcome> {
    let d = ctx.deps;
    let me = ctx.caller()?.clone();
    validate::text(text)?;
    if !sessions::allow(
        d,
        &format!("broadcast:{}", me.user_id),
        d.limits.broadcasts_per_user_per_minute,
    )
    .await?
    {
        return Err(refuse(
            ErrorCode::RateLimited,
            "too many broadcasts; wait a minute",
        ));
    }
    let frame = ServerFrame::Event {
        data: Event::Broadcast {
            from_user_id: me.user_id,
            from: me.username,
            text: text.to_string(),
            sent_at_ms: runtime::now_ms(),
        },
    };
    Ok(Outcome::from(Response::Ok).deliver(Delivery::new(Target::All, frame.to_json())))
}
