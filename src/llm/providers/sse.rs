//! Server-Sent Events: bytes in (split anywhere, even inside a UTF-8 character), events out,
//! and what every provider's reading of those events into text deltas, usage and the end
//! shares (each provider's own reading is in its module's [`super::Wire`]).
//! Pure code: no I/O, no secrets.

use serde_json::Value;

use super::Provider;
use crate::domain::runs::Usage;

/// The most a single event may hold before the stream counts as broken.
const MAX_EVENT_BYTES: usize = 1024 * 1024;

/// One event: its `event:` name (if any) and its `data:` lines joined by `\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

/// Incremental SSE parser (the WHATWG event-stream format: `\n`, `\r\n` or `\r` line ends,
/// `:` comments, `data:` lines joined, a blank line dispatches).
#[derive(Debug, Default)]
pub struct SseParser {
    buffer: Vec<u8>,
    event: Option<String>,
    data: Vec<String>,
    has_data: bool,
}

/// Why a stream cannot be read on; the message goes to the log and `last_error`.
#[derive(Debug, thiserror::Error)]
pub enum StreamFormatError {
    #[error("event stream is not UTF-8")]
    NotUtf8,
    #[error("an event in the stream is over 1 MiB")]
    EventTooLarge,
    #[error("stream event is not JSON: {0}")]
    NotJson(serde_json::Error),
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes; returns the events they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, StreamFormatError> {
        self.buffer.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(end) = self.buffer.iter().position(|b| *b == b'\n' || *b == b'\r') {
            // A lone `\r` at the very end may be the first half of `\r\n`: wait for more.
            if self.buffer[end] == b'\r' && end + 1 == self.buffer.len() {
                break;
            }
            let skip = if self.buffer[end] == b'\r' && self.buffer.get(end + 1) == Some(&b'\n') { 2 } else { 1 };
            let line: Vec<u8> = self.buffer.drain(..end + skip).take(end).collect();
            let line = String::from_utf8(line).map_err(|_| StreamFormatError::NotUtf8)?;
            if let Some(event) = self.line(&line) {
                out.push(event);
            }
        }
        let pending = self.buffer.len() + self.data.iter().map(String::len).sum::<usize>();
        if pending > MAX_EVENT_BYTES {
            return Err(StreamFormatError::EventTooLarge);
        }
        Ok(out)
    }

    fn line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            let event = self.event.take();
            if !std::mem::take(&mut self.has_data) {
                return None;
            }
            let data = std::mem::take(&mut self.data).join("\n");
            return Some(SseEvent { event, data });
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = Some(value.to_owned()),
            "data" => {
                self.data.push(value.to_owned());
                self.has_data = true;
            }
            _ => {}
        }
        None
    }
}

/// What an event meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Text(String),
    /// The provider said the answer is complete.
    Finished,
    /// The provider reported an error inside the stream; `server_side` when it says the error
    /// is its own (overloaded, a server error) or names no kind, as against one about the
    /// request (a prompt it refuses), which never counts for the circuit.
    Failed {
        message: String,
        server_side: bool,
    },
}

/// Whether an in-stream error of this kind (`type` or `code`) is the provider's own failure.
fn server_side(kind: Option<&str>) -> bool {
    kind.is_none_or(|k| matches!(k, "overloaded_error" | "api_error" | "server_error" | "internal_error"))
}

/// An in-stream error: its message (at `message`) and kind (at `kind`, a pointer).
pub(super) fn failed(value: &Value, message: &str, kind: &str) -> Step {
    let kind = value.pointer(kind).and_then(Value::as_str);
    Step::Failed { message: message_of(value, message), server_side: server_side(kind) }
}

/// Reads one provider's events, keeping the usage reported so far (kept when the stream fails).
#[derive(Debug)]
pub struct StreamReader {
    provider: Provider,
    pub usage: Usage,
    /// Whether the provider reported input / output tokens (else they are estimated).
    pub input_reported: bool,
    pub output_reported: bool,
}

/// An event's data as JSON.
pub(super) fn json(data: &str) -> Result<Value, StreamFormatError> {
    serde_json::from_str(data).map_err(StreamFormatError::NotJson)
}

pub(super) fn u64_at(value: &Value, pointer: &str) -> Option<u64> {
    value.pointer(pointer).and_then(Value::as_u64)
}

fn message_of(value: &Value, pointer: &str) -> String {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or("the provider reported an error")
        .chars()
        .take(300)
        .collect()
}

impl StreamReader {
    pub fn new(provider: Provider) -> Self {
        StreamReader { provider, usage: Usage::default(), input_reported: false, output_reported: false }
    }

    pub fn read(&mut self, event: &SseEvent) -> Result<Vec<Step>, StreamFormatError> {
        super::wire(self.provider).stream_event(self, event)
    }

    /// OpenAI's usage (Responses and Chat name the counts differently): the cached input
    /// tokens split out so each count is priced once.
    pub(super) fn openai_usage(&mut self, usage: &Value, input: &str, output: &str, cached: &str) {
        let Some(total_input) = u64_at(usage, input) else { return };
        let cached = u64_at(usage, cached).unwrap_or(0).min(total_input);
        self.usage.input_tokens = total_input - cached;
        self.usage.cache_read_tokens = cached;
        self.input_reported = true;
        if let Some(out) = u64_at(usage, output) {
            self.usage.output_tokens = out;
            self.output_reported = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_unreadable_stream_says_why() {
        let not_utf8 = SseParser::new().feed(b"data: \xff\n").unwrap_err();
        assert!(matches!(not_utf8, StreamFormatError::NotUtf8));
        assert_eq!(not_utf8.to_string(), "event stream is not UTF-8");
        let huge = vec![b'x'; MAX_EVENT_BYTES + 1];
        let too_large = SseParser::new().feed(&huge).unwrap_err();
        assert!(matches!(too_large, StreamFormatError::EventTooLarge));
        assert_eq!(too_large.to_string(), "an event in the stream is over 1 MiB");
        for provider in Provider::ALL {
            let event = SseEvent { event: None, data: "{oops".into() };
            let not_json = StreamReader::new(provider).read(&event).unwrap_err();
            assert!(matches!(not_json, StreamFormatError::NotJson(_)), "{provider:?}");
            assert!(not_json.to_string().starts_with("stream event is not JSON: key must be a string"), "{not_json}");
        }
    }

    fn parse_all(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut p = SseParser::new();
        chunks.iter().flat_map(|c| p.feed(c).unwrap()).collect()
    }

    #[test]
    fn events_split_anywhere() {
        let whole = "event: a\ndata: {\"x\":\"é\"}\n\n: comment\n\ndata: one\ndata: two\r\n\r\n";
        let bytes = whole.as_bytes();
        let expected = vec![
            SseEvent { event: Some("a".into()), data: "{\"x\":\"é\"}".into() },
            SseEvent { event: None, data: "one\ntwo".into() },
        ];
        for split in 0..bytes.len() {
            assert_eq!(parse_all(&[&bytes[..split], &bytes[split..]]), expected, "split at {split}");
        }
        let single: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(parse_all(&single), expected);
    }

    #[test]
    fn anthropic_usage_and_text() {
        let mut r = StreamReader::new(Provider::Anthropic);
        let ev = |data: &str| SseEvent { event: None, data: data.into() };
        r.read(&ev(r#"{"type":"message_start","message":{"usage":{"input_tokens":10,"output_tokens":1,"cache_creation_input_tokens":3,"cache_read_input_tokens":7}}}"#)).unwrap();
        assert_eq!(r.read(&ev(r#"{"type":"ping"}"#)).unwrap(), vec![]);
        assert_eq!(
            r.read(&ev(r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}"#))
                .unwrap(),
            vec![Step::Text("Hi".into())]
        );
        r.read(&ev(r#"{"type":"message_delta","usage":{"output_tokens":5}}"#)).unwrap();
        r.read(&ev(r#"{"type":"message_delta","usage":{"output_tokens":9}}"#)).unwrap();
        assert_eq!(r.usage, Usage { input_tokens: 10, output_tokens: 9, cache_read_tokens: 7, cache_write_tokens: 3 });
        assert_eq!(r.read(&ev(r#"{"type":"message_stop"}"#)).unwrap(), vec![Step::Finished]);
        assert_eq!(
            r.read(&ev(r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#)).unwrap(),
            vec![Step::Failed { message: "Overloaded".into(), server_side: true }]
        );
    }

    #[test]
    fn openai_cached_tokens_are_split_out() {
        let mut r = StreamReader::new(Provider::OpenAi);
        let data = r#"{"type":"response.completed","response":{"usage":{"input_tokens":100,"input_tokens_details":{"cached_tokens":40},"output_tokens":12}}}"#;
        assert_eq!(r.read(&SseEvent { event: None, data: data.into() }).unwrap(), vec![Step::Finished]);
        assert_eq!(
            r.usage,
            Usage { input_tokens: 60, output_tokens: 12, cache_read_tokens: 40, cache_write_tokens: 0 }
        );

        let mut c = StreamReader::new(Provider::OpenAiChat);
        let steps = c.read(&SseEvent { event: None, data: r#"{"choices":null}"#.into() }).unwrap();
        assert!(steps.is_empty());
        let steps =
            c.read(&SseEvent { event: None, data: r#"{"choices":[{"delta":{"content":"a"}}]}"#.into() }).unwrap();
        assert_eq!(steps, vec![Step::Text("a".into())]);
        c.read(&SseEvent { event: None, data: r#"{"choices":[],"usage":{"prompt_tokens":8,"completion_tokens":2,"prompt_tokens_details":{"cached_tokens":8}}}"#.into() }).unwrap();
        assert_eq!(c.usage, Usage { input_tokens: 0, output_tokens: 2, cache_read_tokens: 8, cache_write_tokens: 0 });
        assert_eq!(c.read(&SseEvent { event: None, data: "[DONE]".into() }).unwrap(), vec![Step::Finished]);
    }

    #[test]
    fn openai_incomplete_ends_the_answer_with_its_usage() {
        let mut r = StreamReader::new(Provider::OpenAi);
        let ev = |data: &str| SseEvent { event: None, data: data.into() };
        let delta = r#"{"type":"response.output_text.delta","delta":"Once upon"}"#;
        assert_eq!(r.read(&ev(delta)).unwrap(), vec![Step::Text("Once upon".into())]);
        let incomplete = r#"{"type":"response.incomplete","response":{"status":"incomplete","incomplete_details":{"reason":"max_output_tokens"},"usage":{"input_tokens":50,"input_tokens_details":{"cached_tokens":10},"output_tokens":16}}}"#;
        assert_eq!(r.read(&ev(incomplete)).unwrap(), vec![Step::Finished]);
        assert_eq!(
            r.usage,
            Usage { input_tokens: 40, output_tokens: 16, cache_read_tokens: 10, cache_write_tokens: 0 }
        );
        assert!(r.input_reported && r.output_reported);

        let mut f = StreamReader::new(Provider::OpenAi);
        let failed = r#"{"type":"response.failed","response":{"status":"failed","error":{"code":"server_error","message":"boom"},"usage":null}}"#;
        assert_eq!(f.read(&ev(failed)).unwrap(), vec![Step::Failed { message: "boom".into(), server_side: true }]);
    }

    /// An in-stream error about the request (a prompt the provider refuses) is no failure of
    /// the provider's: a player's text must not count towards opening the circuit.
    #[test]
    fn in_stream_errors_say_whose_failure_they_are() {
        let ev = |data: &str| SseEvent { event: None, data: data.into() };
        let cases = [
            (Provider::Anthropic, r#"{"type":"error","error":{"type":"api_error","message":"m"}}"#, true),
            (Provider::Anthropic, r#"{"type":"error","error":{"type":"invalid_request_error","message":"m"}}"#, false),
            (
                Provider::OpenAi,
                r#"{"type":"response.failed","response":{"error":{"code":"invalid_prompt","message":"m"}}}"#,
                false,
            ),
            (Provider::OpenAi, r#"{"type":"response.failed","response":{"error":{"code":null,"message":"m"}}}"#, true),
            (Provider::OpenAi, r#"{"type":"error","code":"server_error","message":"m"}"#, true),
            (Provider::OpenAiChat, r#"{"error":{"type":"server_error","code":null,"message":"m"}}"#, true),
            (Provider::OpenAiChat, r#"{"error":{"type":null,"code":"content_filter","message":"m"}}"#, false),
        ];
        for (provider, data, server_side) in cases {
            let steps = StreamReader::new(provider).read(&ev(data)).unwrap();
            assert_eq!(steps, vec![Step::Failed { message: "m".into(), server_side }], "{provider}: {data}");
        }
    }
}
