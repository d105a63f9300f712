//! The lobby as rules: a chat message as clients see it, its mood, the presence entries, and the
//! text rules of a message. Pure; never does I/O.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use super::status::Status as MoodStatus;

/// Longest message, in characters.
pub const MAX_MESSAGE_CHARS: usize = 500;

/// A lobby message as clients see it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(test, derive(ts_rs::TS))]
pub struct Message {
    pub id: i64,
    pub user_id: i64,
    pub nickname: String,
    pub text: String,
    pub mood: Mood,
    pub mood_status: MoodStatus,
    pub created_at: DateTime<Utc>,
    /// Its listed words were replaced by `***` before anyone saw it (PROTOCOL §6).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    #[cfg_attr(test, ts(optional, as = "Option<bool>"))]
    pub masked: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(test, derive(ts_rs::TS))]
pub struct PresenceUser {
    pub user_id: i64,
    pub nickname: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(test, derive(ts_rs::TS))]
pub struct PresenceLeave {
    pub user_id: i64,
}

/// Why a chat message is refused; the message is shown to the client as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageTextError {
    #[error("message must not contain control characters (newlines are fine)")]
    ControlCharacter,
    #[error("message text must not be empty")]
    Empty,
    /// Its length in characters, once trimmed.
    #[error("message is {0} characters; at most {max} are allowed", max = MAX_MESSAGE_CHARS)]
    TooLong(usize),
}

/// Checks a chat message: 1..500 characters, not blank, no control characters but newline.
/// Returns it without surrounding whitespace.
pub fn validate_text(raw: &str) -> Result<String, MessageTextError> {
    // Checked before trimming: a control character at either end is refused, not cut.
    if raw.chars().any(|c| c.is_control() && c != '\n') {
        return Err(MessageTextError::ControlCharacter);
    }
    let text = raw.trim();
    if text.is_empty() {
        return Err(MessageTextError::Empty);
    }
    let chars = text.chars().count();
    if chars > MAX_MESSAGE_CHARS {
        return Err(MessageTextError::TooLong(chars));
    }
    Ok(text.to_owned())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(ts_rs::TS))]
#[serde(rename_all = "lowercase")]
pub enum Mood {
    Neutral,
    Happy,
    Sad,
    Angry,
    Excited,
    Calm,
}

impl Mood {
    pub const ALL: [Mood; 6] = [Mood::Neutral, Mood::Happy, Mood::Sad, Mood::Angry, Mood::Excited, Mood::Calm];

    pub const fn as_str(self) -> &'static str {
        match self {
            Mood::Neutral => "neutral",
            Mood::Happy => "happy",
            Mood::Sad => "sad",
            Mood::Angry => "angry",
            Mood::Excited => "excited",
            Mood::Calm => "calm",
        }
    }

    pub fn parse(s: &str) -> Option<Mood> {
        Mood::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_rules() {
        assert_eq!(validate_text("  hello ").unwrap(), "hello");
        assert_eq!(validate_text("two\nlines").unwrap(), "two\nlines");
        assert!(validate_text("").is_err());
        assert!(validate_text(" \n ").is_err());
        assert!(validate_text("bell\u{7}").is_err());
        assert!(validate_text("tab\there").is_err());
        assert!(validate_text("\thello").is_err(), "a leading tab is refused, not trimmed away");
        assert!(validate_text(&"é".repeat(500)).is_ok());
        assert!(validate_text(&"x".repeat(501)).is_err());
    }

    #[test]
    fn each_refusal_says_what_is_wrong() {
        let cases = [
            (
                "bell\u{7}",
                MessageTextError::ControlCharacter,
                "message must not contain control characters (newlines are fine)",
            ),
            (" \n ", MessageTextError::Empty, "message text must not be empty"),
            (&"x".repeat(501), MessageTextError::TooLong(501), "message is 501 characters; at most 500 are allowed"),
        ];
        for (raw, error, message) in cases {
            assert_eq!(validate_text(raw), Err(error.clone()), "{raw:?}");
            assert_eq!(error.to_string(), message);
        }
    }

    #[test]
    fn moods_round_trip() {
        for mood in Mood::ALL {
            assert_eq!(Mood::parse(mood.as_str()), Some(mood));
        }
        assert_eq!(Mood::parse("furious"), None);
    }
}
