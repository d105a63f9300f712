//! The player-supplied `context` of a content request: parsing, the key rule, and sanitizing
//! each value before it may reach a prompt. Pure functions; where a context is placed in a prompt
//! is `content::prompts`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// At most this many keys in a context.
pub const MAX_CONTEXT_KEYS: usize = 20;
/// A context key has 1 to this many characters.
pub const MAX_CONTEXT_KEY_LEN: usize = 64;
/// After sanitizing, values are cut to this many characters.
pub const MAX_CONTEXT_VALUE_CHARS: usize = 200;
/// Raw values longer than this (in characters) are refused with an error.
pub const MAX_RAW_CONTEXT_VALUE_CHARS: usize = 1000;

/// Sanitized context: key -> sanitized value, ordered by key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Context(pub BTreeMap<String, String>);

/// Why a client's `context` was refused. The message is shown to the client as it is.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ContextError {
    #[error("context must be an object of strings")]
    NotAnObject,
    #[error("context has {0} keys; at most {MAX_CONTEXT_KEYS} are allowed")]
    TooManyKeys(usize),
    /// Holds a shortened preview of the key.
    #[error(
        "context key {0:?} is not allowed: keys must be 1..{MAX_CONTEXT_KEY_LEN} characters of letters, digits, '_', '-', '.' or single inner spaces"
    )]
    BadKey(String),
    #[error("context value for `{0}` must be a string")]
    NotAString(String),
    #[error("context value for `{key}` is too long ({chars} characters; at most {MAX_RAW_CONTEXT_VALUE_CHARS})")]
    ValueTooLong { key: String, chars: usize },
}

impl Context {
    /// `None` or JSON null -> empty context. Anything but an object of strings is an error.
    /// Keys are 1..64 letters, digits, `_`, `-`, `.` and single inner spaces (keys are shown
    /// to the model as labels, so no punctuation or line breaks); raw values longer than [`MAX_RAW_CONTEXT_VALUE_CHARS`] are refused; values
    /// are stored [sanitized](sanitize_value).
    pub fn parse(value: Option<&Value>) -> Result<Context, ContextError> {
        let object = match value {
            None | Some(Value::Null) => return Ok(Context::default()),
            Some(Value::Object(object)) => object,
            Some(_) => return Err(ContextError::NotAnObject),
        };
        if object.len() > MAX_CONTEXT_KEYS {
            return Err(ContextError::TooManyKeys(object.len()));
        }
        let mut values = BTreeMap::new();
        for (key, raw) in object {
            if !is_valid_key(key) {
                return Err(ContextError::BadKey(key_preview(key)));
            }
            let Value::String(raw) = raw else {
                return Err(ContextError::NotAString(key.clone()));
            };
            let chars = raw.chars().count();
            if chars > MAX_RAW_CONTEXT_VALUE_CHARS {
                return Err(ContextError::ValueTooLong { key: key.clone(), chars });
            }
            values.insert(key.clone(), sanitize_value(raw));
        }
        Ok(Context(values))
    }

    /// Whether the context has no entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Whether `key` is 1..64 characters of letters and digits (any script), `_`, `-`, `.` and
/// single inner spaces: a label, never markup or a line break.
pub fn is_valid_key(key: &str) -> bool {
    (1..=MAX_CONTEXT_KEY_LEN).contains(&key.chars().count())
        && key.trim() == key
        && !key.contains("  ")
        && key.chars().all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | ' '))
}

/// A bad key as it may be echoed back: at most the first 64 chars, with a marker if cut.
fn key_preview(key: &str) -> String {
    let mut preview: String = key.chars().take(MAX_CONTEXT_KEY_LEN).collect();
    if preview.len() < key.len() {
        preview.push('…');
    }
    preview
}

/// Makes a context value safe for a prompt: control chars (`char::is_control`: `\n`, `\t`,
/// `\r` and every other Unicode Cc) become spaces, whitespace runs (`char::is_whitespace`)
/// collapse to one space, the ends are trimmed and the result is cut to
/// [`MAX_CONTEXT_VALUE_CHARS`] chars (not bytes). Idempotent.
pub fn sanitize_value(raw: &str) -> String {
    let spaced: String = raw.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let collapsed = spaced.split_whitespace().collect::<Vec<_>>().join(" ");
    let capped: String = collapsed.chars().take(MAX_CONTEXT_VALUE_CHARS).collect();
    // The cut may land just after a space.
    capped.trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Map};

    #[test]
    fn sanitize_turns_controls_into_single_spaces_and_trims() {
        assert_eq!(sanitize_value("a\u{0}b"), "a b");
        assert_eq!(sanitize_value("a\n\n\t\r\nb"), "a b");
        assert_eq!(sanitize_value("a\u{7f}\u{85}\u{1b}[31mb"), "a [31mb");
        assert_eq!(sanitize_value("  lots   of \u{a0}\u{2028} space  "), "lots of space");
        assert_eq!(sanitize_value("\n\t "), "");
        assert_eq!(sanitize_value("The Ashen Well"), "The Ashen Well");
    }

    #[test]
    fn sanitize_caps_at_200_chars_not_bytes() {
        let long = "é".repeat(500);
        let out = sanitize_value(&long);
        assert_eq!(out.chars().count(), MAX_CONTEXT_VALUE_CHARS);
        assert_eq!(out, "é".repeat(200));
        let dragons = "🐉".repeat(201);
        assert_eq!(sanitize_value(&dragons).chars().count(), 200);
        // Collapsing happens before the cap, and a cut after a space leaves no trailing space.
        let spaced = format!("{}   {}", "a".repeat(199), "b".repeat(50));
        assert_eq!(sanitize_value(&spaced), "a".repeat(199));
        let exact = "x".repeat(200);
        assert_eq!(sanitize_value(&exact), exact);
    }

    #[test]
    fn context_parse_happy_path() {
        assert_eq!(Context::parse(None), Ok(Context::default()));
        assert_eq!(Context::parse(Some(&Value::Null)), Ok(Context::default()));
        assert_eq!(Context::parse(Some(&json!({}))), Ok(Context::default()));
        let value = json!({
            "quest_name": "  The Ashen\n\nWell ",
            "character_name": "Ada",
            "npc.mood-1": "",
            "a": "x".repeat(1000),
        });
        let context = Context::parse(Some(&value)).unwrap();
        let keys: Vec<&str> = context.0.keys().map(String::as_str).collect();
        assert_eq!(keys, ["a", "character_name", "npc.mood-1", "quest_name"]);
        assert_eq!(context.0["quest_name"], "The Ashen Well");
        assert_eq!(context.0["character_name"], "Ada");
        assert_eq!(context.0["npc.mood-1"], "");
        assert_eq!(context.0["a"], "x".repeat(200));
        let twenty: Map<String, Value> = (0..20).map(|i| (format!("k{i}"), json!("v"))).collect();
        assert_eq!(Context::parse(Some(&Value::Object(twenty))).unwrap().0.len(), 20);
        let key64 = "k".repeat(64);
        assert!(Context::parse(Some(&json!({ key64.clone(): "v" }))).unwrap().0.contains_key(&key64));
        // Serde round trip, as the context is stored.
        let stored = serde_json::to_string(&context).unwrap();
        assert_eq!(serde_json::from_str::<Context>(&stored).unwrap(), context);
    }

    #[test]
    fn context_parse_refuses_each_rule() {
        for bad in [json!("hello"), json!(5), json!(["a"]), json!(true)] {
            let err = Context::parse(Some(&bad)).unwrap_err();
            assert_eq!(err, ContextError::NotAnObject);
            assert_eq!(err.to_string(), "context must be an object of strings");
        }

        let many: Map<String, Value> = (0..25).map(|i| (format!("k{i}"), json!("v"))).collect();
        let err = Context::parse(Some(&Value::Object(many))).unwrap_err();
        assert_eq!(err, ContextError::TooManyKeys(25));
        assert_eq!(err.to_string(), "context has 25 keys; at most 20 are allowed");

        for key in ["", "bad key!", "a/b", "a\nb", "<x>", " lead", "trail ", "two  spaces", "a: b"] {
            let err = Context::parse(Some(&json!({ key: "v" }))).unwrap_err();
            assert!(matches!(err, ContextError::BadKey(_)), "{key:?}: {err:?}");
            assert!(err.to_string().contains("key"), "{err}");
        }
        for key in ["quest name", "ключ", "npc.mood-2", "名前"] {
            assert!(Context::parse(Some(&json!({ key: "v" }))).is_ok(), "{key:?}");
        }
        let long_key = "k".repeat(65);
        let err = Context::parse(Some(&json!({ long_key: "v" }))).unwrap_err();
        assert_eq!(err, ContextError::BadKey(format!("{}…", "k".repeat(64))));
        assert!(err.to_string().contains("1..64 characters of letters, digits"), "{err}");
        // A huge bad key is not echoed back whole.
        let huge = "!".repeat(10_000);
        assert!(Context::parse(Some(&json!({ huge: "v" }))).unwrap_err().to_string().len() < 300);

        for value in [json!(5), json!(null), json!(["x"]), json!({"a": "b"}), json!(false)] {
            let err = Context::parse(Some(&json!({ "name": value }))).unwrap_err();
            assert_eq!(err, ContextError::NotAString("name".into()));
            assert_eq!(err.to_string(), "context value for `name` must be a string");
        }

        let err = Context::parse(Some(&json!({"a": "x".repeat(1001)}))).unwrap_err();
        assert_eq!(err, ContextError::ValueTooLong { key: "a".into(), chars: 1001 });
        assert!(err.to_string().contains("too long"), "{err}");
        assert!(err.to_string().contains("at most 1000"), "{err}");
        // Counted in chars: 1000 two-byte chars are fine.
        assert!(Context::parse(Some(&json!({"a": "é".repeat(1000)}))).is_ok());
    }
}
