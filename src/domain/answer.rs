//! A model's structured answer as text: the JSON body inside an optional Markdown fence, and why
//! an answer is refused. Shared by every structured call (content, moods); never does I/O.

use serde_json::Value;

/// The inside of a Markdown code fence (```` ```json ... ``` ````), or `text` if it is not fenced.
pub fn strip_fence(text: &str) -> &str {
    let Some(rest) = text.strip_prefix("```") else {
        return text;
    };
    // The info string, e.g. `json`; the JSON itself starts with `{`, never a letter.
    let rest = rest.trim_start_matches(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let rest = rest.strip_suffix("```").unwrap_or(rest);
    rest.trim()
}

/// A JSON type's name, for error messages.
pub fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Why the model's answer was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum OutputError {
    /// Maps to fallback reason `invalid_json`.
    #[error("the model's answer is not JSON: {0}")]
    NotJson(String),
    /// Maps to fallback reason `invalid_response`.
    #[error("the model's JSON does not match the schema: {0}")]
    Invalid(String),
}

/// The JSON value of a model's answer: a leading byte-order mark and surrounding whitespace are
/// dropped and a Markdown fence is unwrapped first. Text that does not parse is
/// [`OutputError::NotJson`].
pub fn json_body(text: &str) -> Result<Value, OutputError> {
    let body = strip_fence(text.trim_start_matches('\u{feff}').trim());
    serde_json::from_str(body).map_err(|e| OutputError::NotJson(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fences_are_unwrapped_whatever_their_info_string() {
        for text in ["{\"a\":1}", "```json\n{\"a\":1}\n```", "```JSON {\"a\":1} ```", "\u{feff} ```\n{\"a\":1}```"] {
            assert_eq!(json_body(text).unwrap()["a"], 1, "{text:?}");
        }
        assert!(matches!(json_body("no json here"), Err(OutputError::NotJson(_))));
    }
}
