//! Players as rules: opaque tokens (only their SHA-256 is stored), nickname rules, and the A/B
//! variant. Pure functions; never touches the database.

use rand::RngCore;
use serde::Serialize;
use sha2::{Digest, Sha256};
use unicode_general_category::{get_general_category, GeneralCategory};

pub const MAX_NICKNAME_CHARS: usize = 32;

/// The close of every session of a player the admin or moderation blocked (PROTOCOL §5).
pub const BLOCKED_CLOSE_CODE: u16 = 4003;
pub const BLOCKED_CLOSE_REASON: &str = "blocked";

/// The A/B group of a player: `control` when `user_id` is even, `treatment` when odd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[cfg_attr(test, derive(ts_rs::TS))]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    Control,
    Treatment,
}

impl Variant {
    pub fn of(user_id: i64) -> Variant {
        if user_id.rem_euclid(2) == 0 {
            Variant::Control
        } else {
            Variant::Treatment
        }
    }
}

pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Why a nickname is refused; the message is shown to the client as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NicknameError {
    #[error("nickname must not contain control characters")]
    ControlCharacter,
    /// The first invisible format character (Unicode category Cf) found.
    #[error("nickname must not contain invisible format characters (U+{:04X})", u32::from(*.0))]
    FormatCharacter(char),
    #[error("nickname must not be empty")]
    Empty,
    /// Its length in characters, once trimmed.
    #[error("nickname is {0} characters; at most {max} are allowed", max = MAX_NICKNAME_CHARS)]
    TooLong(usize),
}

/// Trims and checks a nickname: 1..32 characters, no control or format characters.
pub fn validate_nickname(raw: &str) -> Result<String, NicknameError> {
    // Checked before trimming: a tab or newline at either end is refused, not silently cut.
    if raw.chars().any(char::is_control) {
        return Err(NicknameError::ControlCharacter);
    }
    // Zero-width and direction-override characters let one player pass for another.
    if let Some(c) = raw.chars().find(|&c| get_general_category(c) == GeneralCategory::Format) {
        return Err(NicknameError::FormatCharacter(c));
    }
    let nickname = raw.trim();
    let chars = nickname.chars().count();
    if chars == 0 {
        return Err(NicknameError::Empty);
    }
    if chars > MAX_NICKNAME_CHARS {
        return Err(NicknameError::TooLong(chars));
    }
    Ok(nickname.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nickname_rules() {
        assert_eq!(validate_nickname("  Ada ").unwrap(), "Ada");
        assert!(validate_nickname("   ").is_err());
        assert!(validate_nickname("Ada\n").is_err());
        assert!(validate_nickname("\tAda").is_err());
        assert!(validate_nickname(&"x".repeat(33)).is_err());
        assert!(validate_nickname(&"é".repeat(32)).is_ok());
        assert!(validate_nickname("A\u{7}da").is_err());
        // Unicode format characters (Cf): zero-width, joiners, direction overrides, BOM, tags.
        for c in ['\u{200B}', '\u{200D}', '\u{202E}', '\u{2066}', '\u{FEFF}', '\u{00AD}', '\u{E0041}'] {
            let err = validate_nickname(&format!("Ad{c}a")).unwrap_err();
            assert!(err.to_string().contains("format characters"), "{c:?}: {err}");
        }
        assert!(validate_nickname("Zoë 😀").is_ok());
    }

    #[test]
    fn each_refusal_says_what_is_wrong() {
        let cases = [
            ("Ada\n", NicknameError::ControlCharacter, "nickname must not contain control characters"),
            (
                "A\u{200B}da",
                NicknameError::FormatCharacter('\u{200B}'),
                "nickname must not contain invisible format characters (U+200B)",
            ),
            (
                "A\u{E0041}",
                NicknameError::FormatCharacter('\u{E0041}'),
                "nickname must not contain invisible format characters (U+E0041)",
            ),
            ("  ", NicknameError::Empty, "nickname must not be empty"),
            (&"x".repeat(40), NicknameError::TooLong(40), "nickname is 40 characters; at most 32 are allowed"),
        ];
        for (raw, error, message) in cases {
            assert_eq!(validate_nickname(raw), Err(error.clone()), "{raw:?}");
            assert_eq!(error.to_string(), message);
        }
    }

    #[test]
    fn variant_is_a_function_of_the_id() {
        assert_eq!(Variant::of(2), Variant::Control);
        assert_eq!(Variant::of(3), Variant::Treatment);
        assert_eq!(Variant::of(3), Variant::of(3));
    }

    #[test]
    fn tokens_are_random_and_hashed() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert_eq!(hash_token(&a).len(), 64);
        assert_ne!(hash_token(&a), a);
    }
}
