//! Presence: the connection registry written from edge events, the online list (paginated with
//! a cursor over every live edge), and broadcasts to everyone.

pub mod broadcast;
pub mod edge_events;
pub mod online;

pub use edge_events::apply_edge_event;
pub use online::merge_page;

use crate::context::{Ctx, Outcome};
use topics::Request;

/// The presence domain's requests (edge events come through [`apply_edge_event`]).
pub async fn handle(ctx: &Ctx<'_>) -> crate::Result<Outcome> {
    match &ctx.env.request {
        Request::OnlineList { cursor, limit } => {
            online::online(ctx, cursor.as_deref(), *limit).await
        }
        Request::BroadcastSend { text } => broadcast::broadcast(ctx, text).await,
        other => Err(crate::Error::Unrouted(other.kind())),
    }
}
