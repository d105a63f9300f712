//! OpenAI Responses API: `POST {base}/responses` with `instructions`, `input` and a strict
//! `json_schema` text format. The raw JSON has no `output_text` shortcut (the SDKs add it):
//! the text is the `output_text` parts of the `message` items in `output`.

use serde_json::{json, Value};

use super::sse::{failed, json, SseEvent, Step, StreamFormatError, StreamReader};
use super::{AnswerError, Prompt, TextPrompt, UpstreamRequest, Wire};
use crate::domain::runs::Usage;

pub fn build(base: &str, model: &str, api_key: &str, prompt: &Prompt) -> UpstreamRequest {
    UpstreamRequest {
        url: format!("{base}/responses"),
        headers: vec![("authorization", format!("Bearer {api_key}"))],
        body: json!({
            "model": model,
            "instructions": prompt.system,
            "input": prompt.user,
            "max_output_tokens": prompt.max_tokens,
            "text": {"format": {
                "type": "json_schema",
                "name": prompt.schema_name,
                "schema": super::schema_for(base, &prompt.schema),
                "strict": true,
            }},
        }),
    }
}

pub fn text(value: &Value) -> Result<String, AnswerError> {
    if let Some(status) = value.get("status").and_then(Value::as_str) {
        // `incomplete` (cut at `max_output_tokens`) still carries the text so far; the
        // caller's validation decides whether it is usable.
        if status != "completed" && status != "incomplete" {
            return Err(AnswerError::Status(status.to_owned()));
        }
    }
    let output = value.get("output").and_then(Value::as_array).ok_or(AnswerError::NoOutput)?;
    let mut text = String::new();
    let mut found = false;
    for item in output.iter().filter(|i| i.get("type").and_then(Value::as_str) == Some("message")) {
        let parts = item.get("content").and_then(Value::as_array).into_iter().flatten();
        for part in parts {
            match part.get("type").and_then(Value::as_str) {
                Some("output_text") => {
                    if let Some(t) = part.get("text").and_then(Value::as_str) {
                        text.push_str(t);
                        found = true;
                    }
                }
                Some("refusal") => {
                    let why = part.get("refusal").and_then(Value::as_str).unwrap_or("");
                    return Err(AnswerError::Refused(why.chars().take(200).collect()));
                }
                _ => {}
            }
        }
    }
    if !found {
        return Err(AnswerError::NoOutputText);
    }
    Ok(text)
}

/// A streamed prose request (`stream: true`, plain text output).
pub fn build_stream(base: &str, model: &str, api_key: &str, prompt: &TextPrompt) -> UpstreamRequest {
    UpstreamRequest {
        url: format!("{base}/responses"),
        headers: vec![("authorization", format!("Bearer {api_key}"))],
        body: json!({
            "model": model,
            "instructions": prompt.system,
            "input": prompt.user,
            "max_output_tokens": prompt.max_tokens,
            "stream": true,
        }),
    }
}

/// This wire format (PROTOCOL §7: one provider, one implementation of [`Wire`]).
pub struct OpenAiResponses;

impl Wire for OpenAiResponses {
    fn request(&self, base: &str, model: &str, api_key: &str, prompt: &Prompt) -> UpstreamRequest {
        build(base, model, api_key, prompt)
    }

    fn stream_request(&self, base: &str, model: &str, api_key: &str, prompt: &TextPrompt) -> UpstreamRequest {
        build_stream(base, model, api_key, prompt)
    }

    fn answer(&self, value: &Value) -> (Result<String, AnswerError>, Option<Usage>) {
        (text(value), super::openai_usage(value, "input_tokens", "output_tokens", "input_tokens_details"))
    }

    /// OpenAI Responses: `response.output_text.delta`, `response.completed` and
    /// `response.incomplete` (usage with `input_tokens_details.cached_tokens`),
    /// `response.failed` / `error`.
    fn stream_event(&self, reader: &mut StreamReader, event: &SseEvent) -> Result<Vec<Step>, StreamFormatError> {
        let value = json(&event.data)?;
        let ty = value.get("type").and_then(Value::as_str).or(event.event.as_deref()).unwrap_or("");
        Ok(match ty {
            "response.output_text.delta" => {
                let text = value.get("delta").and_then(Value::as_str).unwrap_or("");
                if text.is_empty() {
                    vec![]
                } else {
                    vec![Step::Text(text.to_owned())]
                }
            }
            "response.completed" => {
                response_usage(reader, &value);
                vec![Step::Finished]
            }
            // Cut short by the provider (`max_output_tokens`, a content filter): the answer
            // ends with the text so far, as Anthropic's `max_tokens` and Chat's `length` do.
            "response.incomplete" => {
                response_usage(reader, &value);
                vec![Step::Finished]
            }
            "response.failed" => {
                response_usage(reader, &value);
                vec![failed(&value, "/response/error/message", "/response/error/code")]
            }
            "error" => vec![failed(&value, "/message", "/code")],
            _ => vec![],
        })
    }
}

/// The usage a Responses event carries at `response.usage` (null or missing: none yet).
fn response_usage(reader: &mut StreamReader, value: &Value) {
    if let Some(usage) = value.pointer("/response/usage").filter(|u| !u.is_null()) {
        reader.openai_usage(usage, "/input_tokens", "/output_tokens", "/input_tokens_details/cached_tokens");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incomplete_answer_gives_its_text_and_failed_does_not() {
        let output =
            json!([{"type": "message", "content": [{"type": "output_text", "text": "{\"flavorText\": \"Cut"}]}]);
        let incomplete = json!({"status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"},
                                "output": output});
        assert_eq!(text(&incomplete).unwrap(), "{\"flavorText\": \"Cut");
        let failed = json!({"status": "failed", "output": []});
        assert!(text(&failed).unwrap_err().to_string().contains("failed"));
        let refused = json!({"status": "completed", "output": [{"type": "message", "content": [
            {"type": "refusal", "refusal": "I can't help with that."}]}]});
        assert!(text(&refused).unwrap_err().to_string().contains("refused: I can't help"));
    }
}
