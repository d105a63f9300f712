//! Anthropic Messages API: `POST {base}/v1/messages`. The static system prompt is sent as a
//! block marked `cache_control: ephemeral` so repeated calls hit the prompt cache.

use serde_json::{json, Value};

use super::sse::{failed, json, u64_at, SseEvent, Step, StreamFormatError, StreamReader};
use super::{AnswerError, Prompt, TextPrompt, UpstreamRequest, Wire};
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
pub fn build_stream(base: &str, model: &str, api_key: &str, prompt: &TextPrompt) -> UpstreamRequest {
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

/// This wire format (PROTOCOL §7: one provider, one implementation of [`Wire`]).
pub struct Anthropic;

impl Wire for Anthropic {
    fn request(&self, base: &str, model: &str, api_key: &str, prompt: &Prompt) -> UpstreamRequest {
        build(base, model, api_key, prompt)
    }

    fn stream_request(&self, base: &str, model: &str, api_key: &str, prompt: &TextPrompt) -> UpstreamRequest {
        build_stream(base, model, api_key, prompt)
    }

    fn answer(&self, value: &Value) -> (Result<String, AnswerError>, Option<Usage>) {
        (text(value), usage(value))
    }

    /// Anthropic Messages: `message_start` (input usage, cache reads and writes),
    /// `content_block_delta` text, `message_delta` (cumulative output tokens), `message_stop`,
    /// `ping`, `error`.
    fn stream_event(&self, reader: &mut StreamReader, event: &SseEvent) -> Result<Vec<Step>, StreamFormatError> {
        let value = json(&event.data)?;
        let ty = value.get("type").and_then(Value::as_str).or(event.event.as_deref()).unwrap_or("");
        Ok(match ty {
            "message_start" => {
                if let Some(usage) = value.pointer("/message/usage") {
                    reader.usage.input_tokens = u64_at(usage, "/input_tokens").unwrap_or(0);
                    reader.usage.cache_write_tokens = u64_at(usage, "/cache_creation_input_tokens").unwrap_or(0);
                    reader.usage.cache_read_tokens = u64_at(usage, "/cache_read_input_tokens").unwrap_or(0);
                    reader.input_reported = usage.get("input_tokens").is_some();
                    if let Some(out) = u64_at(usage, "/output_tokens") {
                        reader.usage.output_tokens = out;
                    }
                }
                vec![]
            }
            "content_block_delta" => match value.pointer("/delta/type").and_then(Value::as_str) {
                Some("text_delta") => {
                    let text = value.pointer("/delta/text").and_then(Value::as_str).unwrap_or("");
                    if text.is_empty() {
                        vec![]
                    } else {
                        vec![Step::Text(text.to_owned())]
                    }
                }
                _ => vec![],
            },
            "message_delta" => {
                // Cumulative: the latest count replaces the earlier one.
                if let Some(out) = u64_at(&value, "/usage/output_tokens") {
                    reader.usage.output_tokens = out;
                    reader.output_reported = true;
                }
                if let Some(input) = u64_at(&value, "/usage/input_tokens") {
                    reader.usage.input_tokens = input;
                    reader.input_reported = true;
                }
                vec![]
            }
            "message_stop" => vec![Step::Finished],
            "error" => vec![failed(&value, "/error/message", "/error/type")],
            _ => vec![],
        })
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
