//! Invites by personal code. The link between two users is stored on both users' shards (one row
//! each, from each one's point of view): none → pending → accepted / rejected; removing a
//! connection deletes both rows, after which either may invite again. The invitee's row is
//! written first, so a crash between the two writes leaves nothing the inviter can see, and the
//! retry completes it.

pub mod list;
pub mod remove;
pub mod respond;
pub mod send;
pub mod store;

pub use store::link;

use crate::context::{event_to, Ctx, Outcome};
use topics::frames::Link;
use topics::{Event, Id, Request, Response};

/// The invites domain's requests.
pub async fn handle(ctx: &Ctx<'_>) -> crate::Result<Outcome> {
    match &ctx.env.request {
        Request::InviteSend { code } => send::send(ctx, code).await,
        Request::InviteRespond { user_id, accept } => {
            respond::respond(ctx, *user_id, *accept).await
        }
        Request::InviteList => list::list(ctx).await,
        Request::ConnectionRemove { user_id } => remove::remove(ctx, *user_id).await,
        other => Err(crate::Error::Unrouted(other.kind())),
    }
}

/// The reply, and the update for every device of both users (my other devices included).
fn both_sides(me: Id, mine: Link, peer: Id, theirs: Link) -> Outcome {
    Outcome::from(Response::Link { link: mine.clone() })
        .deliver(event_to(vec![peer], Event::InviteUpdated { link: theirs }))
        .deliver(event_to(vec![me], Event::InviteUpdated { link: mine }))
}
