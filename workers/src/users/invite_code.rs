//! Personal invite codes: made at sign-up, typed by people.

const CODE_ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";

/// A personal invite code: 10 characters of an unambiguous alphabet (50 bits).
pub fn new_invite_code() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..10)
        .map(|_| CODE_ALPHABET[rng.random_range(0..CODE_ALPHABET.len())] as char)
        .collect()
}

/// Normalise a code typed by a person: trim, upper-case, drop spaces and dashes.
pub fn normalise_code(raw: &str) -> String {
    raw.chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .collect::<String>()
        .to_ascii_uppercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invite_codes() {
        let c = new_invite_code();
        assert_eq!(c.len(), 10);
        assert!(c.bytes().all(|b| CODE_ALPHABET.contains(&b)));
        assert_eq!(normalise_code(" abcd-efgh 23 "), "ABCDEFGH23");
    }
}
