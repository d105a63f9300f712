//! A model's structured answer as text: the JSON body inside an optional Markdown fence, why an
//! answer is refused, and the two salvages of an answer that is nearly right (an object cut off
//! mid-way closed again; a text over its cap cut at its last sentence end). Shared by every
//! structured call (content, moods); never does I/O.

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
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum OutputError {
    /// Maps to fallback reason `invalid_json`.
    #[error("the model's answer is not JSON: {0}")]
    NotJson(String),
    /// Maps to fallback reason `invalid_response`.
    #[error("the model's JSON does not match the schema: {0}")]
    Invalid(String),
}

/// A value read from a model's answer, and whether it had to be salvaged to be accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked<T> {
    pub value: T,
    pub salvaged: bool,
}

impl<T> Checked<T> {
    /// A value accepted as the model wrote it.
    pub fn exact(value: T) -> Self {
        Checked { value, salvaged: false }
    }
}

/// The JSON value of a model's answer: a leading byte-order mark and surrounding whitespace are
/// dropped and a Markdown fence is unwrapped first. Text that does not parse is
/// [`OutputError::NotJson`].
pub fn json_body(text: &str) -> Result<Value, OutputError> {
    let body = strip_fence(text.trim_start_matches('\u{feff}').trim());
    serde_json::from_str(body).map_err(|e| OutputError::NotJson(e.to_string()))
}

/// An answer cut off before its end (the output-token cap), closed again.
#[derive(Debug, Clone, PartialEq)]
pub struct Closed {
    pub value: Value,
    /// The member whose string value was cut, if the cut fell inside one (its text is a prefix
    /// of what the model meant to write).
    pub cut_member: Option<String>,
}

/// Closes a JSON object that ends too early: an unterminated string value is ended (a dangling
/// escape dropped), a trailing comma dropped and the open objects and arrays closed, and the
/// result parsed. `None` when the text is not such a prefix (it does not start an object, or
/// it was cut inside a key, after a colon or inside a number or literal).
pub fn close_truncated(text: &str) -> Option<Closed> {
    let body = strip_fence(text.trim_start_matches('\u{feff}').trim());
    if !body.starts_with('{') {
        return None;
    }
    let mut closers = Vec::new();
    let mut in_string = false;
    // Where the current string began, whether it is a value (not a key), and where its last
    // escape began.
    let mut string_start = 0;
    let mut string_is_value = false;
    let mut escape_at: Option<usize> = None;
    let mut escaping = false;
    let mut last_key: Option<String> = None;
    let mut last_structural = ' ';
    for (at, c) in body.char_indices() {
        if in_string {
            if escaping {
                escaping = false;
            } else if c == '\\' {
                escaping = true;
                escape_at = Some(at);
            } else if c == '"' {
                in_string = false;
                if !string_is_value {
                    last_key = serde_json::from_str(&body[string_start..=at]).ok();
                }
                last_structural = '"';
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                string_start = at;
                escape_at = None;
                let in_array = closers.last() == Some(&']');
                string_is_value = last_structural == ':' || (in_array && matches!(last_structural, '[' | ','));
            }
            '{' => closers.push('}'),
            '[' => closers.push(']'),
            // A closer pops its opener; one that does not match it ends the scan.
            '}' | ']' if closers.pop() != Some(c) => return None,
            c if c.is_whitespace() => continue,
            _ => {}
        }
        last_structural = c;
    }
    if closers.is_empty() {
        // Nothing was cut: the text is whole (and was refused for another reason).
        return None;
    }
    let mut closed = String::with_capacity(body.len() + closers.len() + 2);
    let mut cut_member = None;
    if in_string {
        // Only a string value of an object member can be ended.
        if !string_is_value || closers.last() != Some(&'}') {
            return None;
        }
        let mut kept = body;
        if let Some(at) = escape_at {
            // A dangling escape (`\` or a partial `\u12`) is dropped.
            let tail = &body[at..];
            if escaping || (tail.starts_with("\\u") && tail.len() < 6) {
                kept = &body[..at];
            }
        }
        closed.push_str(kept);
        closed.push('"');
        cut_member = last_key;
    } else {
        let trimmed = body.trim_end();
        let key_without_value = last_structural == '"' && !string_is_value;
        match trimmed.chars().last() {
            Some(',') => closed.push_str(&trimmed[..trimmed.len() - 1]),
            Some('"') if !key_without_value => closed.push_str(trimmed),
            Some('}' | ']' | '{' | '[') => closed.push_str(trimmed),
            // Cut after a key or its colon, inside a number or a literal.
            _ => return None,
        }
    }
    closed.extend(closers.iter().rev());
    let value = serde_json::from_str(&closed).ok()?;
    Some(Closed { value, cut_member })
}

/// Ends of a sentence: the mark, then any closing quotes or brackets.
fn is_sentence_mark(c: char) -> bool {
    matches!(c, '.' | '!' | '?' | '\u{2026}')
}

fn is_closing(c: char) -> bool {
    matches!(c, '"' | '\'' | '\u{201d}' | '\u{2019}' | ')' | ']' | '\u{bb}')
}

/// `text` cut at the last sentence end within `max_chars` characters, trimmed, when at least
/// half of `text` (in characters) survives; `None` otherwise.
pub fn cut_at_sentence(text: &str, max_chars: usize) -> Option<&str> {
    let text = text.trim();
    let total = text.chars().count();
    let mut best = None;
    let mut chars = text.char_indices().peekable();
    let mut count = 0;
    while let Some((at, c)) = chars.next() {
        count += 1;
        if count > max_chars {
            break;
        }
        if !is_sentence_mark(c) {
            continue;
        }
        // Absorb the marks and closing quotes that follow (`?!`, `."`), within the cap.
        let mut end = at + c.len_utf8();
        let mut end_count = count;
        while let Some(&(next_at, next)) = chars.peek() {
            if !(is_sentence_mark(next) || is_closing(next)) || end_count + 1 > max_chars {
                break;
            }
            chars.next();
            count += 1;
            end_count = count;
            end = next_at + next.len_utf8();
        }
        // A sentence ends where the text does or a space follows.
        let at_break = text[end..].chars().next().is_none_or(char::is_whitespace);
        if at_break {
            best = Some((end, end_count));
        }
    }
    let (end, kept) = best?;
    (kept * 2 >= total).then(|| text[..end].trim_end())
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

    #[test]
    fn a_cut_off_object_is_closed_and_says_which_member_was_cut() {
        let closed = close_truncated("{\"greeting\": \"Hello. Wel").unwrap();
        assert_eq!(closed.value["greeting"], "Hello. Wel");
        assert_eq!(closed.cut_member.as_deref(), Some("greeting"));

        let closed = close_truncated("```json\n{\"a\": \"x.\", \"b\": \"y \\\"q\\\" z\\u00").unwrap();
        assert_eq!(closed.value["a"], "x.");
        assert_eq!(closed.value["b"], "y \"q\" z");
        assert_eq!(closed.cut_member.as_deref(), Some("b"));

        let closed = close_truncated("{\"a\": \"x.\",\n").unwrap();
        assert_eq!(closed.value, serde_json::json!({"a": "x."}));
        assert_eq!(closed.cut_member, None);

        for not_a_prefix in
            ["{\"a\": \"x\"}", "{\"a\": ", "{\"a\": \"x\", \"b", "{\"a\": \"x\", \"b\"", "{\"n\": 12", "Sure!"]
        {
            assert_eq!(close_truncated(not_a_prefix), None, "{not_a_prefix:?}");
        }
    }

    #[test]
    fn texts_are_cut_at_their_last_sentence_end_when_half_survives() {
        assert_eq!(cut_at_sentence("One two. Three four. Five", 22), Some("One two. Three four."));
        assert_eq!(cut_at_sentence("He said \"run!\" Then he ran.", 20), Some("He said \"run!\""));
        // Less than half would survive.
        assert_eq!(cut_at_sentence("Short. And then a very long second sentence without end", 40), None);
        // No sentence end at all; a dot inside a word is not one.
        assert_eq!(cut_at_sentence("no end in sight 3.14 here", 20), None);
        assert_eq!(cut_at_sentence("Héllo wörld. Ünd", 13), Some("Héllo wörld."));
        // A text within the cap that ends a sentence is kept whole.
        assert_eq!(cut_at_sentence("Whole. ", 10), Some("Whole."));
    }
}
