//! Upstream wire formats, one module each implementing [`Wire`]: a [`Prompt`] becomes an
//! [`UpstreamRequest`], a response body or a stream's events become the model's text. Pure functions: no I/O, no secrets in errors.

pub mod anthropic;
pub mod openai;
pub mod openai_chat;
pub mod sse;

use serde_json::Value;

pub use crate::core::provider::Provider;
use crate::domain::runs::Usage;

/// What to ask the model: a static system prompt, the user message, and the JSON schema of
/// the answer. The schema states every cap (`maxLength`); servers that turn a schema into a
/// grammar (llama.cpp, vLLM, Ollama) then always close the answer, and OpenAI's strict mode,
/// which refuses length keywords, gets the schema without them ([`strict_schema`]).
#[derive(Debug, Clone)]
pub struct Prompt {
    pub system: String,
    pub user: String,
    pub schema_name: String,
    pub schema: Value,
    pub max_tokens: u32,
}

/// The most bytes of a refusal's description a re-ask repeats to the model.
pub const REASK_PROBLEM_BYTES: usize = 512;
/// The most bytes a re-ask adds to its prompt (the refusal and the instruction around it).
pub const REASK_EXTRA_BYTES: usize = REASK_PROBLEM_BYTES + 256;

impl Prompt {
    /// The token bound of this call and its possible re-ask together: every prompt byte as a
    /// token, twice, the re-ask's extra bytes, and twice the output asked for.
    pub fn bound_with_reask(&self) -> (i64, i64) {
        let prompt = (self.system.len() + self.user.len()) as i64;
        (2 * prompt + REASK_EXTRA_BYTES as i64, 2 * i64::from(self.max_tokens))
    }

    /// The same prompt asked once more, after its first answer was refused for `problem`.
    pub fn reasked(&self, problem: &str) -> Prompt {
        let mut again = self.clone();
        // Bounded, so a call's reservation can cover its re-ask (see [`REASK_EXTRA_BYTES`]).
        let problem = crate::domain::runs::cut_to(problem, REASK_PROBLEM_BYTES);
        again.user = format!(
            "{}\n\nYour previous answer was refused: {problem}. Answer again with only the JSON \
             object: every key present, every value a string within its length limit.",
            self.user
        );
        again
    }
}

/// Whether `base` is OpenAI's own API (which has its own rules: strict schemas without length
/// keywords, `max_completion_tokens`), not a compatible server.
pub fn is_openai_api(base: &str) -> bool {
    let host = base.split("://").nth(1).unwrap_or(base).split(['/', ':']).next().unwrap_or("");
    host.eq_ignore_ascii_case("api.openai.com")
}

/// `schema` without the keywords OpenAI's strict mode refuses (`maxLength`, `minLength`); the
/// caps stay said in each field's `description` and are checked on the answer.
pub fn strict_schema(schema: &Value) -> Value {
    match schema {
        Value::Object(map) => map
            .iter()
            .filter(|(key, _)| !matches!(key.as_str(), "maxLength" | "minLength"))
            .map(|(key, value)| (key.clone(), strict_schema(value)))
            .collect::<serde_json::Map<_, _>>()
            .into(),
        Value::Array(items) => Value::Array(items.iter().map(strict_schema).collect()),
        other => other.clone(),
    }
}

/// The schema to send to the server at `base`.
pub fn schema_for(base: &str, schema: &Value) -> Value {
    if is_openai_api(base) {
        strict_schema(schema)
    } else {
        schema.clone()
    }
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

/// One upstream wire format: all lorewire says and hears in it, a structured call and a
/// streamed one. A new format is one module with one of these (and its name in [`wire`]).
pub trait Wire: Sync {
    /// A structured call's request (`base` without a trailing `/`).
    fn request(&self, base: &str, model: &str, api_key: &str, prompt: &Prompt) -> UpstreamRequest;
    /// A streamed prose call's request.
    fn stream_request(&self, base: &str, model: &str, api_key: &str, prompt: &TextPrompt) -> UpstreamRequest;
    /// The model's text out of a successful structured answer, and its usage when reported.
    fn answer(&self, value: &Value) -> (Result<String, AnswerError>, Option<Usage>);
    /// One event of a stream: the steps it brings; the usage so far is kept in `reader`.
    fn stream_event(
        &self,
        reader: &mut sse::StreamReader,
        event: &sse::SseEvent,
    ) -> Result<Vec<sse::Step>, sse::StreamFormatError>;
}

/// The wire format `provider` speaks.
pub fn wire(provider: Provider) -> &'static dyn Wire {
    match provider {
        Provider::Anthropic => &anthropic::Anthropic,
        Provider::OpenAi => &openai::OpenAiResponses,
        Provider::OpenAiChat => &openai_chat::OpenAiChat,
    }
}

pub fn build_request(target: &Target<'_>, prompt: &Prompt) -> UpstreamRequest {
    let base = target.base_url.trim_end_matches('/');
    wire(target.provider).request(base, target.model, target.api_key, prompt)
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
    wire(target.provider).stream_request(base, target.model, target.api_key, prompt)
}

/// Why a successful response body holds no usable text (the message goes to the log and
/// `last_error`).
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    #[error("response body is not JSON: {0}")]
    NotJson(serde_json::Error),
    /// Anthropic's `stop_reason: "refusal"`.
    #[error("the model refused to answer (stop_reason `refusal`)")]
    RefusalStop,
    /// OpenAI's refusal, its first 200 characters.
    #[error("the model refused: {0}")]
    Refused(String),
    #[error("response has no content block")]
    NoContentBlock,
    /// Anthropic's first content block is of this other type (or has none).
    #[error("first content block is {0:?}, not text")]
    NotTextBlock(Option<String>),
    /// The path of the text that is missing.
    #[error("{0} is missing")]
    NoText(&'static str),
    /// OpenAI Responses' `status`, neither completed nor incomplete.
    #[error("response status is `{0}`")]
    Status(String),
    #[error("response has no output array")]
    NoOutput,
    #[error("response has no output_text part")]
    NoOutputText,
    #[error("response has no choices[0].message")]
    NoChoice,
    #[error("the model returned no text")]
    Empty,
}

/// The model's text out of a successful response body, with the usage when the body reports
/// it, or why the body is unusable.
pub fn parse_answer(provider: Provider, body: &[u8]) -> Result<(String, Option<Usage>), AnswerError> {
    let value: Value = serde_json::from_slice(body).map_err(AnswerError::NotJson)?;
    let (text, usage) = wire(provider).answer(&value);
    let text = text?;
    if text.trim().is_empty() {
        return Err(AnswerError::Empty);
    }
    Ok((text, usage))
}

/// OpenAI's `usage` (Responses and Chat name the counts differently); its input includes the
/// cached tokens, which are split out so each count is priced once.
pub(super) fn openai_usage(value: &Value, input: &str, output: &str, details: &str) -> Option<Usage> {
    let usage = value.get("usage")?;
    let total_input = usage.get(input)?.as_u64()?;
    let cached = usage.get(details).and_then(|d| d.get("cached_tokens")).and_then(Value::as_u64).unwrap_or(0);
    let cached = cached.min(total_input);
    Some(Usage {
        input_tokens: total_input - cached,
        output_tokens: usage.get(output).and_then(Value::as_u64).unwrap_or(0),
        cache_read_tokens: cached,
        cache_write_tokens: 0,
    })
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
    fn each_unusable_answer_says_why() {
        let refusal = |provider: Provider, body: &str| parse_answer(provider, body.as_bytes()).unwrap_err();
        let cases = [
            (
                Provider::Anthropic,
                r#"{"stop_reason":"refusal","content":[{"type":"text","text":"{}"}]}"#,
                "the model refused to answer (stop_reason `refusal`)",
            ),
            (Provider::Anthropic, r#"{"content":[]}"#, "response has no content block"),
            (
                Provider::Anthropic,
                r#"{"content":[{"type":"tool_use"}]}"#,
                r#"first content block is Some("tool_use"), not text"#,
            ),
            (Provider::Anthropic, r#"{"content":[{"text":"x"}]}"#, "first content block is None, not text"),
            (Provider::Anthropic, r#"{"content":[{"type":"text"}]}"#, "content[0].text is missing"),
            (Provider::Anthropic, r#"{"content":[{"type":"text","text":"  "}]}"#, "the model returned no text"),
            (Provider::OpenAi, r#"{"status":"failed","output":[]}"#, "response status is `failed`"),
            (Provider::OpenAi, r#"{"status":"completed"}"#, "response has no output array"),
            (Provider::OpenAi, r#"{"output":[{"type":"reasoning"}]}"#, "response has no output_text part"),
            (
                Provider::OpenAi,
                r#"{"output":[{"type":"message","content":[{"type":"refusal","refusal":"no"}]}]}"#,
                "the model refused: no",
            ),
            (Provider::OpenAiChat, r#"{"choices":[]}"#, "response has no choices[0].message"),
            (Provider::OpenAiChat, r#"{"choices":[{"message":{"refusal":"nope"}}]}"#, "the model refused: nope"),
            (Provider::OpenAiChat, r#"{"choices":[{"message":{}}]}"#, "choices[0].message.content is missing"),
        ];
        for (provider, body, message) in cases {
            assert_eq!(refusal(provider, body).to_string(), message, "{body}");
        }
        assert!(matches!(refusal(Provider::OpenAiChat, "{"), AnswerError::NotJson(_)));
        assert!(refusal(Provider::OpenAi, "[").to_string().starts_with("response body is not JSON: "));
        assert!(matches!(refusal(Provider::Anthropic, r#"{"stop_reason":"refusal"}"#), AnswerError::RefusalStop));
        assert!(matches!(refusal(Provider::Anthropic, r#"{"content":[{"type":"image"}]}"#),
            AnswerError::NotTextBlock(Some(t)) if t == "image"));
        assert!(matches!(refusal(Provider::Anthropic, r#"{"content":[{"type":"text"}]}"#), AnswerError::NoText(_)));
        assert!(matches!(refusal(Provider::OpenAi, r#"{"status":"failed"}"#), AnswerError::Status(s) if s == "failed"));
        assert!(matches!(refusal(Provider::OpenAi, "{}"), AnswerError::NoOutput));
        assert!(matches!(refusal(Provider::OpenAi, r#"{"output":[]}"#), AnswerError::NoOutputText));
        assert!(matches!(refusal(Provider::OpenAiChat, "{}"), AnswerError::NoChoice));
        let long = format!(r#"{{"choices":[{{"message":{{"refusal":"{}"}}}}]}}"#, "r".repeat(300));
        assert!(matches!(refusal(Provider::OpenAiChat, &long), AnswerError::Refused(why) if why.len() == 200));
        assert!(matches!(
            refusal(Provider::OpenAiChat, r#"{"choices":[{"message":{"content":""}}]}"#),
            AnswerError::Empty
        ));
    }

    #[test]
    fn answers_give_their_usage_when_reported() {
        let anthropic = br#"{"content":[{"type":"text","text":"{}"}],"usage":{"input_tokens":12,"output_tokens":5,
            "cache_creation_input_tokens":3,"cache_read_input_tokens":40}}"#;
        let (text, usage) = parse_answer(Provider::Anthropic, anthropic).unwrap();
        assert_eq!(text, "{}");
        assert_eq!(
            usage,
            Some(Usage { input_tokens: 12, output_tokens: 5, cache_read_tokens: 40, cache_write_tokens: 3 })
        );
        let chat = br#"{"choices":[{"message":{"content":"{}"}}],"usage":{"prompt_tokens":10,"completion_tokens":2,
            "prompt_tokens_details":{"cached_tokens":4}}}"#;
        let usage = parse_answer(Provider::OpenAiChat, chat).unwrap().1;
        assert_eq!(
            usage,
            Some(Usage { input_tokens: 6, output_tokens: 2, cache_read_tokens: 4, cache_write_tokens: 0 })
        );
        let responses =
            br#"{"status":"completed","output":[{"type":"message","content":[{"type":"output_text","text":"{}"}]}]}"#;
        assert_eq!(parse_answer(Provider::OpenAi, responses).unwrap().1, None);
    }

    #[test]
    fn openai_strict_mode_gets_the_schema_without_length_keywords() {
        let schema = serde_json::json!({"type": "object", "properties": {
            "a": {"type": "string", "minLength": 1, "maxLength": 300, "description": "at most 300 characters"},
            "b": {"type": "array", "items": [{"type": "string", "maxLength": 5}]},
        }});
        let strict = schema_for("https://api.openai.com/v1", &schema);
        assert!(!strict.to_string().contains("Length"), "{strict}");
        assert_eq!(strict["properties"]["a"]["description"], "at most 300 characters");
        for compatible in ["http://127.0.0.1:8080/v1", "http://vllm.internal:8000/v1", "https://openrouter.ai/api/v1"] {
            assert_eq!(schema_for(compatible, &schema), schema, "{compatible}");
        }
    }

    #[test]
    fn a_reasked_prompt_repeats_the_request_and_says_what_was_wrong() {
        let prompt = Prompt {
            system: "s".into(),
            user: "Write it.".into(),
            schema_name: "n".into(),
            schema: Value::Null,
            max_tokens: 9,
        };
        let again = prompt.reasked("missing field `hookText`");
        assert!(again.user.starts_with("Write it.\n\n"));
        assert!(again.user.contains("refused: missing field `hookText`."));
        assert_eq!((again.system, again.max_tokens), (prompt.system, prompt.max_tokens));
    }

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
