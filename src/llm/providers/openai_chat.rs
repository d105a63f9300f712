//! Chat Completions: `POST {base}/chat/completions` with a `json_schema` response format.
//! Spoken by OpenAI and by OpenAI-compatible servers (Ollama, vLLM, llama.cpp).

use serde_json::{json, Value};

use super::{Prompt, UpstreamRequest};

pub fn build(base: &str, model: &str, api_key: &str, prompt: &Prompt) -> UpstreamRequest {
    let mut headers = Vec::new();
    // Local servers usually run without a key.
    if !api_key.is_empty() {
        headers.push(("authorization", format!("Bearer {api_key}")));
    }
    UpstreamRequest {
        url: format!("{base}/chat/completions"),
        headers,
        body: json!({
            "model": model,
            "max_tokens": prompt.max_tokens,
            "messages": [
                {"role": "system", "content": prompt.system},
                {"role": "user", "content": prompt.user},
            ],
            "response_format": {"type": "json_schema", "json_schema": {
                "name": prompt.schema_name,
                "schema": prompt.schema,
                "strict": true,
            }},
        }),
    }
}

/// `choices[0].message.content`.
pub fn text(value: &Value) -> Result<String, String> {
    let message = value.pointer("/choices/0/message").ok_or("response has no choices[0].message")?;
    if let Some(refusal) = message.get("refusal").and_then(Value::as_str) {
        return Err(format!("the model refused: {}", refusal.chars().take(200).collect::<String>()));
    }
    message
        .get("content")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| "choices[0].message.content is missing".into())
}

/// A streamed prose request; `include_usage` makes the server send a last chunk with usage.
pub fn build_stream(base: &str, model: &str, api_key: &str, prompt: &super::TextPrompt) -> UpstreamRequest {
    let mut headers = Vec::new();
    if !api_key.is_empty() {
        headers.push(("authorization", format!("Bearer {api_key}")));
    }
    UpstreamRequest {
        url: format!("{base}/chat/completions"),
        headers,
        body: json!({
            "model": model,
            "max_tokens": prompt.max_tokens,
            "stream": true,
            "stream_options": {"include_usage": true},
            "messages": [
                {"role": "system", "content": prompt.system},
                {"role": "user", "content": prompt.user},
            ],
        }),
    }
}
