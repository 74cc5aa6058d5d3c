//! Input rules shared by edges (early rejection) and workers (authoritative checks).

use crate::{ErrorBody, ErrorCode};

pub const USERNAME_MIN: usize = 3;
pub const USERNAME_MAX: usize = 32;
pub const PASSWORD_MIN: usize = 8;
pub const PASSWORD_MAX: usize = 128;
/// Longest message or broadcast text, in bytes.
pub const TEXT_MAX: usize = 4000;
pub const CLIENT_MSG_ID_MAX: usize = 64;
/// Largest WebSocket message and HTTP body an edge accepts at all: a larger WebSocket message
/// closes the connection (1009), a larger HTTP body is refused (413).
pub const FRAME_MAX: usize = 64 * 1024;
/// Largest request frame an edge forwards: a larger one (up to [`FRAME_MAX`]) is answered with a
/// typed `payload_too_large` error frame and the connection stays. No valid request comes close
/// (message text is at most [`TEXT_MAX`]).
pub const REQUEST_MAX: usize = 16 * 1024;
/// Most items one page returns.
pub const PAGE_MAX: u32 = 100;

fn invalid(msg: impl Into<String>) -> ErrorBody {
    ErrorBody::new(ErrorCode::InvalidInput, msg)
}

/// Usernames: 3–32 of `a-z 0-9 _ .`, starting with a letter. Case is folded before the check.
pub fn username(raw: &str) -> Result<String, ErrorBody> {
    let name = raw.trim().to_ascii_lowercase();
    if name.len() < USERNAME_MIN || name.len() > USERNAME_MAX {
        return Err(invalid(format!(
            "username must be {USERNAME_MIN}-{USERNAME_MAX} characters"
        )));
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(invalid("username must start with a letter"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
    {
        return Err(invalid("username may hold only a-z, 0-9, _ and ."));
    }
    Ok(name)
}

/// Passwords: 8–128 characters, not all the same class of trivial (letters-only or
/// digits-only passwords under 12 characters are refused).
pub fn password(raw: &str) -> Result<(), ErrorBody> {
    let n = raw.chars().count();
    if !(PASSWORD_MIN..=PASSWORD_MAX).contains(&n) {
        return Err(invalid(format!(
            "password must be {PASSWORD_MIN}-{PASSWORD_MAX} characters"
        )));
    }
    let all_digits = raw.chars().all(|c| c.is_ascii_digit());
    let all_letters = raw.chars().all(|c| c.is_alphabetic());
    if n < 12 && (all_digits || all_letters) {
        return Err(invalid(
            "password must mix letters with digits or symbols (or be at least 12 characters)",
        ));
    }
    Ok(())
}

/// Message and broadcast text: 1–4000 bytes after trimming, no NUL.
pub fn text(raw: &str) -> Result<(), ErrorBody> {
    if raw.trim().is_empty() {
        return Err(invalid("text must not be empty"));
    }
    if raw.len() > TEXT_MAX {
        return Err(ErrorBody::new(
            ErrorCode::PayloadTooLarge,
            format!("text is longer than {TEXT_MAX} bytes"),
        ));
    }
    if raw.contains('\0') {
        return Err(invalid("text must not contain NUL"));
    }
    Ok(())
}

pub fn client_msg_id(raw: &str) -> Result<(), ErrorBody> {
    if raw.is_empty() || raw.len() > CLIENT_MSG_ID_MAX {
        return Err(invalid(format!(
            "client_msg_id must be 1-{CLIENT_MSG_ID_MAX} bytes"
        )));
    }
    Ok(())
}

/// Longest `client_request_id` of a sign-up, in bytes.
pub const CLIENT_REQUEST_ID_MAX: usize = 64;

/// A sign-up's `client_request_id`: 1-64 bytes.
pub fn client_request_id(raw: &str) -> Result<(), ErrorBody> {
    if raw.is_empty() || raw.len() > CLIENT_REQUEST_ID_MAX {
        return Err(invalid(format!(
            "client_request_id must be 1-{CLIENT_REQUEST_ID_MAX} bytes"
        )));
    }
    Ok(())
}

/// A send's `after_client_msg_id`: absent, or another message's id.
pub fn after_client_msg_id(own: &str, after: Option<&str>) -> Result<(), ErrorBody> {
    let Some(after) = after else { return Ok(()) };
    client_msg_id(after)?;
    if after == own {
        return Err(invalid(
            "after_client_msg_id must name the message typed before this one, not this one",
        ));
    }
    Ok(())
}

/// Clamp a requested page size to 1..=PAGE_MAX (default `default`).
pub fn page(limit: Option<u32>, default: u32) -> u32 {
    limit.unwrap_or(default).clamp(1, PAGE_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        assert_eq!(username(" Alice_1 ").unwrap(), "alice_1");
        for bad in ["ab", "1abc", "al ice", "al-ice", &"a".repeat(33), "élan"] {
            assert_eq!(
                username(bad).unwrap_err().code,
                ErrorCode::InvalidInput,
                "{bad}"
            );
        }
    }

    #[test]
    fn passwords() {
        assert!(password("hunter2!x").is_ok());
        assert!(password("correcthorsebattery").is_ok());
        for bad in ["short1", "abcdefgh", "12345678", &"x1".repeat(65)] {
            assert!(password(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn texts_and_ids() {
        assert!(text("hi").is_ok());
        assert_eq!(text("  ").unwrap_err().code, ErrorCode::InvalidInput);
        assert_eq!(text("a\0b").unwrap_err().code, ErrorCode::InvalidInput);
        assert_eq!(
            text(&"x".repeat(TEXT_MAX + 1)).unwrap_err().code,
            ErrorCode::PayloadTooLarge
        );
        assert!(client_msg_id("c-1").is_ok());
        assert!(client_msg_id("").is_err());
        assert!(after_client_msg_id("c-2", None).is_ok());
        assert!(after_client_msg_id("c-2", Some("c-1")).is_ok());
        assert!(after_client_msg_id("c-2", Some("c-2")).is_err());
        assert!(after_client_msg_id("c-2", Some("")).is_err());
        assert!(client_msg_id(&"x".repeat(65)).is_err());
        assert!(client_request_id("6f9c1d2e-0b7a-4c55-9f0e-3d2b1a0c9e8f").is_ok());
        assert!(client_request_id("").is_err());
        assert!(client_request_id(&"x".repeat(65)).is_err());
        assert_eq!(page(None, 50), 50);
        assert_eq!(page(Some(0), 50), 1);
        assert_eq!(page(Some(1000), 50), PAGE_MAX);
    }
}
