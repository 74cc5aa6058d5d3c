//! Login, the handshake check, refresh, listing and ending sessions.

use crate::context::{Ctx, Outcome};
use crate::sessions::Rotation;
use crate::{login_limits, refuse, sessions, Result};
use topics::frames::SessionInfo;
use topics::{
    Auth, Delivery, ErrorCode, Event, Request, Response, ServerFrame, SessionGrant, Target,
};

/// The auth domain's requests.
pub async fn handle(ctx: &Ctx<'_>) -> crate::Result<Outcome> {
    match &ctx.env.request {
        Request::Ping => Ok(Response::Pong.into()),
        Request::Login {
            username,
            password,
            device,
        } => login(ctx, username, password, device.as_deref()).await,
        Request::Verify => verify(ctx).await,
        Request::Refresh => refresh(ctx).await,
        Request::SessionList => list(ctx).await,
        Request::Logout { session_id } => logout(ctx, session_id.as_deref()).await,
        Request::LogoutAll => logout_all(ctx).await,
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

/// Username + password → a new session. Rate limited per address, and failures per account
/// and address and per account (see `login_limits`); unknown users and wrong passwords get the
/// same error after the same work.
pub async fn login(
    ctx: &Ctx<'_>,
    username: &str,
    password: &str,
    device: Option<&str>,
) -> Result<Outcome> {
    let d = ctx.deps;
    let too_many = || {
        refuse(
            ErrorCode::RateLimited,
            "too many login attempts; wait a minute",
        )
    };
    let peer = ctx.env.peer.clone().unwrap_or_default();
    if !sessions::allow(
        d,
        &format!("login:a:{peer}"),
        d.limits.login_attempts_per_address_per_minute,
    )
    .await?
    {
        return Err(too_many());
    }
    // The sign-up rules decide what a username is: anything else (a fullwidth or accented
    // variant of a real name, say) names no account and is refused before any lookup, so the
    // failure counts below and the directory see exactly the name that was signed up.
    let Ok(name) = topics::validate::username(username) else {
        return Err(refuse(ErrorCode::Unauthorized, BAD_CREDENTIALS));
    };
    let found = crate::users::credentials(d, &name).await?;
    let Some(slots) =
        login_limits::begin(d, &name, &peer, found.as_ref().map(|(u, _, _)| *u)).await?
    else {
        return Err(too_many());
    };
    let hash = found.as_ref().map(|(_, _, h)| h.clone());
    let ok = crate::users::verify_password(password.to_string(), hash).await?;
    let (user, username) = match (ok, found) {
        (true, Some((user, username, _))) => (user, username),
        // The attempt stays counted: it is a failure.
        _ => return Err(refuse(ErrorCode::Unauthorized, BAD_CREDENTIALS)),
    };
    login_limits::succeeded(d, slots, user, &peer).await?;
    let (token, sid) = sessions::create(d, user, &username, device).await?;
    let g = grant(ctx, &sid, user, &username, Some(token.clone()));
    Ok(Outcome {
        response: Some(session_response(&g, token)),
        session: Some(g),
        ..Default::default()
    })
}

/// The handshake check: the edge learns whose connection this is.
pub async fn verify(ctx: &Ctx<'_>) -> Result<Outcome> {
    let c = ctx.caller()?;
    Ok(Outcome {
        response: Some(Response::Ok),
        session: Some(grant(ctx, &c.session_id, c.user_id, &c.username, None)),
        ..Default::default()
    })
}

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
                .send(&d.topics.deliver(), &close.key(), &payload, None)
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

pub async fn list(ctx: &Ctx<'_>) -> Result<Outcome> {
    let c = ctx.caller()?;
    let sessions = sessions::list(ctx.deps, c.user_id)
        .await?
        .into_iter()
        .map(|(sid, r)| SessionInfo {
            current: sid == c.session_id,
            session_id: sid,
            created_at_ms: r.created_ms,
            last_seen_ms: r.last_seen_ms,
            device: r.device,
        })
        .collect();
    Ok(Response::Sessions { sessions }.into())
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

/// Log out one session (the current one by default).
pub async fn logout(ctx: &Ctx<'_>, session_id: Option<&str>) -> Result<Outcome> {
    let c = ctx.caller()?;
    let sid = session_id.unwrap_or(&c.session_id).to_string();
    let rec = sessions::load(ctx.deps, &sid)
        .await?
        .filter(|r| r.user_id == c.user_id)
        .ok_or_else(|| refuse(ErrorCode::NotFound, "no such session"))?;
    sessions::revoke(ctx.deps, &sid, &rec).await?;
    Ok(Outcome {
        response: Some(Response::Ok),
        clear_session: sid == c.session_id,
        ..Default::default()
    }
    .deliver(close_sessions(c.user_id, vec![sid], "logged out")))
}

/// Log out every session of the caller, this one included.
pub async fn logout_all(ctx: &Ctx<'_>) -> Result<Outcome> {
    let c = ctx.caller()?;
    let ids = sessions::revoke_all(ctx.deps, c.user_id).await?;
    Ok(Outcome {
        response: Some(Response::Ok),
        clear_session: true,
        ..Default::default()
    }
    .deliver(close_sessions(c.user_id, ids, "logged out everywhere")))
}
