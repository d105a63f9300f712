//! Anthropic Messages API: `POST {base}/v1/messages`. The static system prompt is sent as a
//! block marked `cache_control: ephemeral` so repeated calls hit the prompt cache.

use serde_json::{json, Value};

use super::{AnswerError, Prompt, UpstreamRequest};
use crate::domain::runs::Usage;

pub const API_VERSION: &str = "2023-06-01";

pub fn build(base: &str, model: &str, api_key: &str, prompt: &Prompt) -> UpstreamRequest {
    UpstreamRequest {
        url: format!("{base}/v1/messages"),
        headers: vec![("x-api-key", api_key.to_owned()), ("anthropic-version", API_VERSION.to_owned())],
        body: json!({
            "model": model,
            "max_tokens": prompt.max_tokens,
            "system": [{
                "type": "text",
                "text": prompt.system,
                "cache_control": {"type": "ephemeral"},
            }],
            "messages": [{"role": "user", "content": prompt.user}],
        }),
    }
}

/// `content[0].text`; a refusal (`stop_reason: "refusal"`) is no answer, whatever text came before it.
pub fn text(value: &Value) -> Result<String, AnswerError> {
    if value.get("stop_reason").and_then(Value::as_str) == Some("refusal") {
        return Err(AnswerError::RefusalStop);
    }
    let block = value.pointer("/content/0").ok_or(AnswerError::NoContentBlock)?;
    match block.get("type").and_then(Value::as_str) {
        Some("text") => {}
        other => return Err(AnswerError::NotTextBlock(other.map(str::to_owned))),
    }
    block.get("text").and_then(Value::as_str).map(str::to_owned).ok_or(AnswerError::NoText("content[0].text"))
}

/// `usage`, when the answer reports it.
pub fn usage(value: &Value) -> Option<Usage> {
    let usage = value.get("usage")?;
    let count = |name: &str| usage.get(name).and_then(Value::as_u64).unwrap_or(0);
    usage.get("input_tokens")?.as_u64()?;
    Some(Usage {
        input_tokens: count("input_tokens"),
        output_tokens: count("output_tokens"),
        cache_read_tokens: count("cache_read_input_tokens"),
        cache_write_tokens: count("cache_creation_input_tokens"),
    })
}

/// A streamed prose request (`stream: true`), the system prompt cached as for content.
pub fn build_stream(base: &str, model: &str, api_key: &str, prompt: &super::TextPrompt) -> UpstreamRequest {
    UpstreamRequest {
        url: format!("{base}/v1/messages"),
        headers: vec![("x-api-key", api_key.to_owned()), ("anthropic-version", API_VERSION.to_owned())],
        body: json!({
            "model": model,
            "max_tokens": prompt.max_tokens,
            "stream": true,
            "system": [{
                "type": "text",
                "text": prompt.system,
                "cache_control": {"type": "ephemeral"},
            }],
            "messages": [{"role": "user", "content": prompt.user}],
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_is_no_answer() {
        let refused = json!({"content": [{"type": "text", "text": "{\"flavorText\": \"I"}], "stop_reason": "refusal"});
        assert!(text(&refused).unwrap_err().to_string().contains("refused"));
        let answered = json!({"content": [{"type": "text", "text": "{}"}], "stop_reason": "end_turn"});
        assert_eq!(text(&answered).unwrap(), "{}");
    }
}
