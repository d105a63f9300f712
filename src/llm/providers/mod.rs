//! Upstream wire formats, one module each: a [`Prompt`] becomes an [`UpstreamRequest`], and
//! a response body becomes the model's text. Pure functions: no I/O, no secrets in errors.

pub mod anthropic;
pub mod openai;
pub mod openai_chat;
pub mod sse;

use serde_json::Value;

pub use crate::core::provider::Provider;

/// What to ask the model: a static system prompt, the user message, and the JSON schema of
/// the answer.
#[derive(Debug, Clone)]
pub struct Prompt {
    pub system: String,
    pub user: String,
    pub schema_name: String,
    pub schema: Value,
    pub max_tokens: u32,
}

/// A request ready for the HTTP client.
#[derive(Clone)]
pub struct UpstreamRequest {
    pub url: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Value,
}

/// Header values are left out: they carry the API key.
impl std::fmt::Debug for UpstreamRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let headers: Vec<_> = self.headers.iter().map(|(name, _)| *name).collect();
        f.debug_struct("UpstreamRequest")
            .field("url", &self.url)
            .field("headers", &headers)
            .field("body", &self.body)
            .finish()
    }
}

/// Where to send it and as whom.
pub struct Target<'a> {
    pub provider: Provider,
    pub base_url: &'a str,
    pub model: &'a str,
    pub api_key: &'a str,
}

pub fn build_request(target: &Target<'_>, prompt: &Prompt) -> UpstreamRequest {
    let base = target.base_url.trim_end_matches('/');
    match target.provider {
        Provider::Anthropic => anthropic::build(base, target.model, target.api_key, prompt),
        Provider::OpenAi => openai::build(base, target.model, target.api_key, prompt),
        Provider::OpenAiChat => openai_chat::build(base, target.model, target.api_key, prompt),
    }
}

/// What to ask for a streamed prose answer (generation runs): no schema.
#[derive(Debug, Clone)]
pub struct TextPrompt {
    pub system: String,
    pub user: String,
    pub max_tokens: u32,
}

pub fn build_stream_request(target: &Target<'_>, prompt: &TextPrompt) -> UpstreamRequest {
    let base = target.base_url.trim_end_matches('/');
    match target.provider {
        Provider::Anthropic => anthropic::build_stream(base, target.model, target.api_key, prompt),
        Provider::OpenAi => openai::build_stream(base, target.model, target.api_key, prompt),
        Provider::OpenAiChat => openai_chat::build_stream(base, target.model, target.api_key, prompt),
    }
}

/// The model's text out of a successful response body, or why the body is unusable.
pub fn parse_text(provider: Provider, body: &[u8]) -> Result<String, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| format!("response body is not JSON: {e}"))?;
    let text = match provider {
        Provider::Anthropic => anthropic::text(&value),
        Provider::OpenAi => openai::text(&value),
        Provider::OpenAiChat => openai_chat::text(&value),
    }?;
    if text.trim().is_empty() {
        return Err("the model returned no text".into());
    }
    Ok(text)
}

/// The provider's error message from an error body (`{"error":{"message":..}}` in every format).
pub fn error_message(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let message = value.pointer("/error/message").and_then(Value::as_str)?;
    Some(message.chars().take(300).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_the_key() {
        let prompt = TextPrompt { system: "s".into(), user: "u".into(), max_tokens: 10 };
        for provider in [Provider::Anthropic, Provider::OpenAi, Provider::OpenAiChat] {
            let target = Target { provider, base_url: "http://127.0.0.1:1", model: "m", api_key: "sk-canary-42" };
            let request = build_stream_request(&target, &prompt);
            assert!(request.headers.iter().any(|(_, v)| v.contains("sk-canary-42")), "the key is sent");
            assert!(!format!("{request:?}").contains("canary"), "{provider:?}");
        }
        let change = crate::store::llm_config::SettingsChange {
            api_key: Some(Some("sk-canary-42".into())),
            ..Default::default()
        };
        assert!(!format!("{change:?}").contains("canary"));
    }
}
