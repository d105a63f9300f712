//! Chat Completions: `POST {base}/chat/completions` with a `json_schema` response format.
//! Spoken by OpenAI and by OpenAI-compatible servers (Ollama, vLLM, llama.cpp), which get the
//! schema with its length caps (they turn it into a grammar, so the answer always closes).

use serde_json::{json, Value};

use super::sse::{failed, json, SseEvent, Step, StreamFormatError, StreamReader};
use super::{AnswerError, Prompt, TextPrompt, UpstreamRequest, Wire};
use crate::domain::runs::Usage;

/// The name of the output cap: OpenAI's own API refuses `max_tokens` for its current models and
/// wants `max_completion_tokens`; Ollama, vLLM and llama.cpp all take `max_tokens`.
fn output_cap_field(base: &str) -> &'static str {
    if super::is_openai_api(base) {
        "max_completion_tokens"
    } else {
        "max_tokens"
    }
}

pub fn build(base: &str, model: &str, api_key: &str, prompt: &Prompt) -> UpstreamRequest {
    let mut headers = Vec::new();
    // Local servers usually run without a key.
    if !api_key.is_empty() {
        headers.push(("authorization", format!("Bearer {api_key}")));
    }
    let mut body = json!({
        "model": model,
        "messages": [
            {"role": "system", "content": prompt.system},
            {"role": "user", "content": prompt.user},
        ],
        "response_format": {"type": "json_schema", "json_schema": {
            "name": prompt.schema_name,
            "schema": super::schema_for(base, &prompt.schema),
            "strict": true,
        }},
    });
    body[output_cap_field(base)] = json!(prompt.max_tokens);
    UpstreamRequest { url: format!("{base}/chat/completions"), headers, body }
}

/// `choices[0].message.content`.
pub fn text(value: &Value) -> Result<String, AnswerError> {
    let message = value.pointer("/choices/0/message").ok_or(AnswerError::NoChoice)?;
    if let Some(refusal) = message.get("refusal").and_then(Value::as_str) {
        return Err(AnswerError::Refused(refusal.chars().take(200).collect()));
    }
    message
        .get("content")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or(AnswerError::NoText("choices[0].message.content"))
}

/// A streamed prose request; `include_usage` makes the server send a last chunk with usage.
pub fn build_stream(base: &str, model: &str, api_key: &str, prompt: &TextPrompt) -> UpstreamRequest {
    let mut headers = Vec::new();
    if !api_key.is_empty() {
        headers.push(("authorization", format!("Bearer {api_key}")));
    }
    let mut body = json!({
        "model": model,
        "stream": true,
        "stream_options": {"include_usage": true},
        "messages": [
            {"role": "system", "content": prompt.system},
            {"role": "user", "content": prompt.user},
        ],
    });
    body[output_cap_field(base)] = json!(prompt.max_tokens);
    UpstreamRequest { url: format!("{base}/chat/completions"), headers, body }
}

/// This wire format (PROTOCOL §7: one provider, one implementation of [`Wire`]).
pub struct OpenAiChat;

impl Wire for OpenAiChat {
    fn request(&self, base: &str, model: &str, api_key: &str, prompt: &Prompt) -> UpstreamRequest {
        build(base, model, api_key, prompt)
    }

    fn stream_request(&self, base: &str, model: &str, api_key: &str, prompt: &TextPrompt) -> UpstreamRequest {
        build_stream(base, model, api_key, prompt)
    }

    fn answer(&self, value: &Value) -> (Result<String, AnswerError>, Option<Usage>) {
        (text(value), super::openai_usage(value, "prompt_tokens", "completion_tokens", "prompt_tokens_details"))
    }

    /// Chat Completions: `choices[].delta.content`, the `include_usage` chunk (empty
    /// `choices`), `[DONE]`; `choices: null` and keep-alive comments are tolerated.
    fn stream_event(&self, reader: &mut StreamReader, event: &SseEvent) -> Result<Vec<Step>, StreamFormatError> {
        if event.data.trim() == "[DONE]" {
            return Ok(vec![Step::Finished]);
        }
        let value = json(&event.data)?;
        if value.get("error").is_some_and(|e| !e.is_null()) {
            let kind =
                if value.pointer("/error/type").is_some_and(|t| !t.is_null()) { "/error/type" } else { "/error/code" };
            return Ok(vec![failed(&value, "/error/message", kind)]);
        }
        if let Some(usage) = value.get("usage").filter(|u| !u.is_null()) {
            reader.openai_usage(usage, "/prompt_tokens", "/completion_tokens", "/prompt_tokens_details/cached_tokens");
        }
        let mut steps = Vec::new();
        for choice in value.get("choices").and_then(Value::as_array).into_iter().flatten() {
            if let Some(text) = choice.pointer("/delta/content").and_then(Value::as_str) {
                if !text.is_empty() {
                    steps.push(Step::Text(text.to_owned()));
                }
            }
        }
        Ok(steps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_cap_is_named_as_the_server_wants() {
        let prompt = super::super::TextPrompt { system: "s".into(), user: "u".into(), max_tokens: 77 };
        let openai = build_stream("https://api.openai.com/v1", "gpt-5-mini", "k", &prompt).body;
        assert_eq!(openai["max_completion_tokens"], 77);
        assert!(openai.get("max_tokens").is_none());
        for local in ["http://127.0.0.1:11434/v1", "http://vllm.internal:8000/v1"] {
            let body = build_stream(local, "llama3", "", &prompt).body;
            assert_eq!(body["max_tokens"], 77, "{local}");
            assert!(body.get("max_completion_tokens").is_none());
        }
    }
}
