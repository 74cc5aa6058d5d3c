//! `dm.open`: find or create the one conversation of a pair of connected users.

use super::{not_connected, pair_key, store, summaries};
use crate::context::{Ctx, Outcome};
use crate::invites;
use crate::{refuse, Result};
use topics::frames::InviteState;
use topics::{ErrorCode, Id, Response};

/// Open (or find) the one conversation with `peer`; only between connected users.
pub async fn open(ctx: &Ctx<'_>, peer: Id) -> Result<Outcome> {
    let d = ctx.deps;
    let me = ctx.caller()?.user_id;
    if peer == me {
        return Err(refuse(
            ErrorCode::InvalidInput,
            "you cannot message yourself",
        ));
    }
    match invites::link(&d.db, me, peer).await? {
        Some(l) if l.state == InviteState::Accepted => {}
        _ => return Err(not_connected().into()),
    }
    // Nothing is written while a shard the pair needs is known down (each step below is
    // idempotent, so a retry completes what an outage cuts short).
    let key = pair_key(me, peer);
    for shard in [d.db.by_id(me), d.db.by_id(peer), d.db.by_key(&key)] {
        shard.up()?;
    }
    let conv = store::pair_conversation(&d.db, &key, d.db.live_id(|| d.ids.next()))
        .await?
        .ok_or_else(|| refuse(ErrorCode::Unavailable, "retry"))?;
    let (lo, hi) = if me <= peer { (me, peer) } else { (peer, me) };
    store::add_conversation(&d.db, conv, lo, hi, runtime::now_ms()).await?;
    for (user, other) in [(me, peer), (peer, me)] {
        store::add_membership(&d.db, user, conv, other).await?;
    }
    let last_read = store::read_position(&d.db, me, conv).await?;
    let conversation = summaries(&d.db, me, &[(conv, last_read)])
        .await?
        .pop()
        .expect("one summary per conversation");
    Ok(Response::Conversation { conversation }.into())
}
