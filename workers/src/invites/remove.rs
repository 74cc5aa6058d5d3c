//! `connection.remove`: end a connection or withdraw an invite.

use super::store;
use crate::context::{event_to, Ctx, Outcome};
use crate::{refuse, Result};
use topics::{ErrorCode, Event, Id, Response};

/// Remove a connection (or withdraw / forget an invite): both rows go; re-inviting is allowed.
/// The peer's row goes first: from then on the removed user can no longer message me
/// (`dm.send` checks the sender's own row), and a crash before my row goes leaves it for the
/// retry to find. Both users' devices are told the link ended.
pub async fn remove(ctx: &Ctx<'_>, peer: Id) -> Result<Outcome> {
    let d = ctx.deps;
    let me = ctx.caller()?.user_id;
    if store::link(&d.db, me, peer).await?.is_none() {
        return Err(refuse(ErrorCode::NotFound, "no connection with this user"));
    }
    store::delete_link(&d.db, peer, me).await?;
    store::delete_link(&d.db, me, peer).await?;
    Ok(removed(me, peer))
}

/// The reply to a removal, and the event for every device of both users.
fn removed(me: Id, peer: Id) -> Outcome {
    Outcome::from(Response::Ok)
        .deliver(event_to(
            vec![peer],
            Event::ConnectionRemoved { user_id: me },
        ))
        .deliver(event_to(
            vec![me],
            Event::ConnectionRemoved { user_id: peer },
        ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_removal_tells_both_users_about_the_other() {
        let out = removed(Id(1), Id(2));
        assert_eq!(out.response, Some(Response::Ok));
        // Decoded, so that the target and the frame are checked as what they mean.
        let told: Vec<(topics::Target, topics::ServerFrame)> = out
            .deliveries
            .iter()
            .map(|d| (d.target.clone(), serde_json::from_str(&d.frame).unwrap()))
            .collect();
        let to = |user: u64, peer: u64| {
            (
                topics::Target::Users {
                    user_ids: vec![Id(user)],
                },
                topics::ServerFrame::Event {
                    data: Event::ConnectionRemoved { user_id: Id(peer) },
                },
            )
        };
        assert_eq!(told, vec![to(2, 1), to(1, 2)]);
    }
}
