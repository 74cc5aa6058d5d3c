//! `dm.open`: find or create the one conversation of a pair of connected users.

use super::{not_connected, pair_key, summary};
use crate::context::{Ctx, Deps, Outcome};
use crate::db::exec_drop;
use crate::invites;
use crate::{refuse, Result};
use mysql_async::prelude::*;
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
    match invites::link(d, me, peer).await? {
        Some(l) if l.state == InviteState::Accepted => {}
        _ => return Err(not_connected().into()),
    }
    let key = pair_key(me, peer);
    let mut c = d.db.by_key(&key).primary.get_conn().await?;
    c.exec_drop(
        "INSERT IGNORE INTO dm_pairs (pair_key, conversation_id) VALUES (?, ?)",
        (&key, d.ids.next().0),
    )
    .await?;
    let conv: u64 = c
        .exec_first(
            "SELECT conversation_id FROM dm_pairs WHERE pair_key = ?",
            (&key,),
        )
        .await?
        .ok_or_else(|| refuse(ErrorCode::Unavailable, "retry"))?;
    drop(c);
    let conv = Id(conv);
    let (lo, hi) = if me <= peer { (me, peer) } else { (peer, me) };
    exec_drop(
        &d.db.by_id(conv).primary,
        "INSERT IGNORE INTO conversations (id, user_lo, user_hi, last_seq, created_at_ms) VALUES (?, ?, ?, 0, ?)",
        (conv.0, lo.0, hi.0, runtime::now_ms()),
    )
    .await?;
    for (user, other) in [(me, peer), (peer, me)] {
        exec_drop(
            &d.db.by_id(user).primary,
            "INSERT IGNORE INTO memberships (user_id, conversation_id, peer_id, last_read_seq) VALUES (?, ?, ?, 0)",
            (user.0, conv.0, other.0),
        )
        .await?;
    }
    let last_read = read_position(d, me, conv).await?;
    Ok(Response::Conversation {
        conversation: summary(d, me, conv, last_read).await?,
    }
    .into())
}

async fn read_position(d: &Deps, me: Id, conv: Id) -> Result<u64> {
    let mut c = d.db.by_id(me).primary.get_conn().await?;
    Ok(c.exec_first(
        "SELECT last_read_seq FROM memberships WHERE user_id = ? AND conversation_id = ?",
        (me.0, conv.0),
    )
    .await?
    .unwrap_or(0))
}
