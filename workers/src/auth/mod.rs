//! Login, the handshake check, refresh, listing and ending sessions.

pub mod list;
pub mod login;
pub mod logout;
pub mod logout_all;
pub mod refresh;
pub mod verify;

use crate::context::{Ctx, Outcome};
use topics::{Delivery, Event, Request, Response, ServerFrame, SessionGrant, Target};

/// The auth domain's requests.
pub async fn handle(ctx: &Ctx<'_>) -> crate::Result<Outcome> {
    match &ctx.env.request {
        Request::Ping => Ok(Response::Pong.into()),
        Request::Login {
            username,
            password,
            device,
        } => login::login(ctx, username, password, device.as_deref()).await,
        Request::Verify => verify::verify(ctx).await,
        Request::Refresh => refresh::refresh(ctx).await,
        Request::SessionList => list::list(ctx).await,
        Request::Logout { session_id } => logout::logout(ctx, session_id.as_deref()).await,
        Request::LogoutAll => logout_all::logout_all(ctx).await,
        other => Err(crate::Error::Unrouted(other.kind())),
    }
}

/// The one answer for every failed login, whatever the cause.
pub const BAD_CREDENTIALS: &str = "invalid username or password";

fn grant(
    ctx: &Ctx<'_>,
    sid: &str,
    user: topics::Id,
    username: &str,
    token: Option<String>,
) -> SessionGrant {
    SessionGrant {
        session_id: sid.to_string(),
        user_id: user,
        username: username.to_string(),
        token,
        idle_timeout_s: ctx.deps.limits.session_idle_timeout_s,
    }
}

fn session_response(g: &SessionGrant, token: String) -> Response {
    Response::Session {
        token,
        session_id: g.session_id.clone(),
        user_id: g.user_id,
        username: g.username.clone(),
        idle_timeout_s: g.idle_timeout_s,
    }
}

/// Close the sockets of these sessions (through the router) with a `session_revoked` event.
pub fn close_sessions(user: topics::Id, session_ids: Vec<String>, reason: &str) -> Delivery {
    let mut d = Delivery::new(
        Target::Sessions {
            user_id: user,
            session_ids,
        },
        ServerFrame::Event {
            data: Event::SessionRevoked {
                reason: reason.into(),
            },
        }
        .to_json(),
    );
    d.close = Some(reason.into());
    d
}
