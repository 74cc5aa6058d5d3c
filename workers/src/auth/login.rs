//! `session.login`: username and password for a new session.

use super::{grant, session_response, BAD_CREDENTIALS};
use crate::context::{Ctx, Outcome};
use crate::{login_limits, refuse, sessions, Result};
use topics::ErrorCode;

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
