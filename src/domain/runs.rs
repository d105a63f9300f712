//! Generation runs as rules: the actions, statuses and error codes, token usage and its
//! estimates, the validation of a request, and the run as REST clients see it. Pure; never
//! does I/O (prompts are the runs feature's, `runs::prompts`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Longest accepted `input`, in characters (a frame is at most 64 KiB).
pub const MAX_INPUT_CHARS: usize = 16_000;
/// Longest accepted `project_id`.
pub const MAX_PROJECT_CHARS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[cfg_attr(test, derive(ts_rs::TS))]
#[serde(rename_all = "UPPERCASE")]
pub enum Action {
    Write,
    Rewrite,
    Describe,
}

impl Action {
    pub const fn as_str(self) -> &'static str {
        match self {
            Action::Write => "WRITE",
            Action::Rewrite => "REWRITE",
            Action::Describe => "DESCRIBE",
        }
    }
    pub fn parse(s: &str) -> Option<Action> {
        match s {
            "WRITE" => Some(Action::Write),
            "REWRITE" => Some(Action::Rewrite),
            "DESCRIBE" => Some(Action::Describe),
            _ => None,
        }
    }
    /// Queue priority (higher first). Below content and mood jobs (priority 0), which players
    /// wait on interactively; among runs REWRITE > WRITE > DESCRIBE.
    pub fn priority(self) -> i32 {
        match self {
            Action::Rewrite => -1,
            Action::Write => -2,
            Action::Describe => -3,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[cfg_attr(test, derive(ts_rs::TS))]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Queued,
    Running,
    Done,
    Dead,
    Aborted,
}

impl RunStatus {
    /// The statuses of a run that has not ended.
    pub const ACTIVE: [RunStatus; 2] = [RunStatus::Queued, RunStatus::Running];
    pub const ALL: [RunStatus; 5] =
        [RunStatus::Queued, RunStatus::Running, RunStatus::Done, RunStatus::Dead, RunStatus::Aborted];

    pub const fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Done => "done",
            RunStatus::Dead => "dead",
            RunStatus::Aborted => "aborted",
        }
    }
    pub fn parse(s: &str) -> Option<RunStatus> {
        match s {
            "queued" => Some(RunStatus::Queued),
            "running" => Some(RunStatus::Running),
            "done" => Some(RunStatus::Done),
            "dead" => Some(RunStatus::Dead),
            "aborted" => Some(RunStatus::Aborted),
            _ => None,
        }
    }
    pub fn is_active(self) -> bool {
        matches!(self, RunStatus::Queued | RunStatus::Running)
    }
}

/// Why a run ended without its text (`run:error.code`, the `runs.error_code` column). Its
/// names are its `Display` and `RunErrorCode::parse`; serde uses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(test, derive(ts_rs::TS), ts(rename_all = "snake_case"))]
pub enum RunErrorCode {
    NoConfig,
    Aborted,
    BudgetExceeded,
    RateLimited,
    #[cfg_attr(test, ts(untagged, type = "`api_error_${number}`"))]
    ApiError(u16),
    NetworkError,
    Timeout,
    InvalidResponse,
    /// The stream ended before the provider said it was complete.
    StreamCut,
    /// The provider reported an error inside the stream.
    StreamError,
    /// Lorewire could not run it (its attempts went to failures on lorewire's side).
    #[cfg_attr(test, ts(rename = "internal_error"))]
    Internal,
    /// Moderation flagged the text (PROTOCOL §6); what was released before it stands.
    Moderated,
}

impl std::fmt::Display for RunErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunErrorCode::NoConfig => f.write_str("no_config"),
            RunErrorCode::Aborted => f.write_str("aborted"),
            RunErrorCode::BudgetExceeded => f.write_str("budget_exceeded"),
            RunErrorCode::RateLimited => f.write_str("rate_limited"),
            RunErrorCode::ApiError(status) => write!(f, "api_error_{status}"),
            RunErrorCode::NetworkError => f.write_str("network_error"),
            RunErrorCode::Timeout => f.write_str("timeout"),
            RunErrorCode::InvalidResponse => f.write_str("invalid_response"),
            RunErrorCode::StreamCut => f.write_str("stream_cut"),
            RunErrorCode::StreamError => f.write_str("stream_error"),
            RunErrorCode::Internal => f.write_str("internal_error"),
            RunErrorCode::Moderated => f.write_str("moderated"),
        }
    }
}

impl RunErrorCode {
    /// Every code but `ApiError`, which carries the upstream's HTTP status.
    pub const NAMED: [RunErrorCode; 11] = [
        RunErrorCode::NoConfig,
        RunErrorCode::Aborted,
        RunErrorCode::BudgetExceeded,
        RunErrorCode::RateLimited,
        RunErrorCode::NetworkError,
        RunErrorCode::Timeout,
        RunErrorCode::InvalidResponse,
        RunErrorCode::StreamCut,
        RunErrorCode::StreamError,
        RunErrorCode::Internal,
        RunErrorCode::Moderated,
    ];

    /// The code a name stands for; `None` for a name this version does not know (a corrupt row).
    /// `api_error_<status>` takes the status as [`Display`](std::fmt::Display) writes it.
    pub fn parse(s: &str) -> Option<RunErrorCode> {
        if let Some(status) = s.strip_prefix("api_error_") {
            let code = RunErrorCode::ApiError(status.parse().ok()?);
            return (code.to_string() == s).then_some(code);
        }
        RunErrorCode::NAMED.into_iter().find(|code| code.to_string() == s)
    }

    /// What a player reads in `run:error.message` for an upstream failure: lorewire's words
    /// for the code, never the provider's own text (that goes to the log and `last_error`).
    pub fn player_message(self) -> String {
        match self {
            RunErrorCode::NoConfig => "no LLM provider is configured".into(),
            RunErrorCode::Aborted => "the run was aborted".into(),
            RunErrorCode::BudgetExceeded => "another attempt could take the project past its budget".into(),
            RunErrorCode::RateLimited => "the model provider is limiting requests; try again later".into(),
            RunErrorCode::ApiError(status) => format!("the model provider answered with an error (HTTP {status})"),
            RunErrorCode::NetworkError => "the model provider could not be reached".into(),
            RunErrorCode::Timeout => "the model provider did not answer in time".into(),
            RunErrorCode::InvalidResponse => "the model provider's answer could not be used".into(),
            RunErrorCode::StreamCut => "the model provider's answer broke off before it was complete".into(),
            RunErrorCode::StreamError => "the model provider reported an error while answering".into(),
            RunErrorCode::Internal => "the run failed on the server's side and its attempts are spent".into(),
            RunErrorCode::Moderated => "the text was stopped by moderation".into(),
        }
    }
}

impl Serialize for RunErrorCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RunErrorCode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        RunErrorCode::parse(&name).ok_or_else(|| serde::de::Error::custom(format!("unknown run error code `{name}`")))
    }
}

/// Tokens one attempt (or a whole run) consumed. `input_tokens` excludes cache reads and
/// cache writes, so each count is priced once at its own rate (OpenAI's `input_tokens`
/// include `cached_tokens`; the parsers subtract them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[cfg_attr(test, derive(ts_rs::TS))]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
}

impl Usage {
    pub fn is_zero(&self) -> bool {
        *self == Usage::default()
    }
    pub fn add(&self, other: &Usage) -> Usage {
        Usage {
            input_tokens: self.input_tokens + other.input_tokens,
            output_tokens: self.output_tokens + other.output_tokens,
            cache_read_tokens: self.cache_read_tokens + other.cache_read_tokens,
            cache_write_tokens: self.cache_write_tokens + other.cache_write_tokens,
        }
    }
}

/// Output tokens estimated from text when the provider did not report them (a cut or
/// aborted stream): one token per 4 characters, rounded up. Errs high, as a charge should.
pub fn estimate_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

/// UTF-8 bytes a run's text may take per output token asked for: an answer averages about 4
/// bytes a token, so only an upstream that ignores the token limit reaches 16.
pub const TEXT_BYTES_PER_TOKEN: usize = 16;

/// The most a run's text may hold (in memory, streamed and stored), in UTF-8 bytes.
pub fn max_text_bytes(max_output_tokens: u32) -> usize {
    (max_output_tokens as usize).saturating_mul(TEXT_BYTES_PER_TOKEN)
}

/// The longest start of `text` that fits in `room` bytes, cut at a character boundary.
pub fn cut_to(text: &str, room: usize) -> &str {
    if text.len() <= room {
        return text;
    }
    let mut end = room;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Upper bound on the prompt's tokens: no tokenizer yields more tokens than UTF-8 bytes, plus a
/// margin for the per-message tokens the provider adds.
pub fn prompt_token_bound(system: &str, user: &str) -> u64 {
    (system.len() + user.len()) as u64 + 64
}

/// A validated `generate:start`.
#[derive(Debug, Clone)]
pub struct RunRequest {
    pub project_id: String,
    pub action: Action,
    pub input: String,
    pub skip_cache: bool,
}

/// Why a run request is refused; the message is shown to the client as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunRequestError {
    #[error(transparent)]
    ProjectId(#[from] InvalidProjectId),
    /// The action as the client wrote it.
    #[error("unknown action `{0}` (expected WRITE, REWRITE or DESCRIBE)")]
    UnknownAction(String),
    #[error("`input` must not be empty")]
    EmptyInput,
    /// The input's length in characters.
    #[error("`input` is {0} characters; at most {max} are accepted", max = MAX_INPUT_CHARS)]
    InputTooLong(usize),
    #[error("`input` must not contain control characters other than newlines and tabs")]
    ControlCharacter,
}

/// A project id that breaks the rule of [`validate_project_id`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("`project_id` must be 1..{max} characters of letters, digits, '-', '_', '.' or ':'", max = MAX_PROJECT_CHARS)]
pub struct InvalidProjectId;

/// Checks a request's fields.
pub fn validate(project_id: &str, action: &str, input: &str, skip_cache: bool) -> Result<RunRequest, RunRequestError> {
    let project_id = validate_project_id(project_id)?;
    let action = Action::parse(action).ok_or_else(|| RunRequestError::UnknownAction(action.to_owned()))?;
    if input.trim().is_empty() {
        return Err(RunRequestError::EmptyInput);
    }
    let chars = input.chars().count();
    if chars > MAX_INPUT_CHARS {
        return Err(RunRequestError::InputTooLong(chars));
    }
    if input.chars().any(|c| c.is_control() && !matches!(c, '\n' | '\t' | '\r')) {
        return Err(RunRequestError::ControlCharacter);
    }
    Ok(RunRequest { project_id, action, input: input.to_owned(), skip_cache })
}

/// Project ids: 1..64 characters of letters, digits, `-`, `_`, `.` and `:`.
pub fn validate_project_id(project_id: &str) -> Result<String, InvalidProjectId> {
    let ok = !project_id.is_empty()
        && project_id.chars().count() <= MAX_PROJECT_CHARS
        && project_id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if ok {
        Ok(project_id.to_owned())
    } else {
        Err(InvalidProjectId)
    }
}

/// A run as REST clients see it (README "Generation runs").
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = Run)]
#[cfg_attr(test, derive(ts_rs::TS), ts(rename = "Run"))]
pub struct RunView {
    pub run_id: String,
    pub project_id: String,
    pub action: Action,
    pub status: RunStatus,
    pub model: String,
    pub attempts: i32,
    pub usage: Usage,
    pub cost_usd: f64,
    pub text: String,
    /// Why the run ended without its text; null while it has not.
    pub error: Option<RunFailure>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// The error of a run that ended without its text: a `run:error` code and what happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[cfg_attr(test, derive(ts_rs::TS))]
pub struct RunFailure {
    /// `no_config`, `aborted`, `budget_exceeded`, `api_error_<status>`, `network_error`, ...
    #[schema(value_type = String)]
    pub code: RunErrorCode,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_cut_at_a_character_boundary() {
        assert_eq!(cut_to("abc", 5), "abc");
        assert_eq!(cut_to("abc", 2), "ab");
        assert_eq!(cut_to("aé", 2), "a", "é takes two bytes");
        assert_eq!(cut_to("日本", 4), "日");
        assert_eq!(max_text_bytes(8), 128);
    }

    #[test]
    fn run_names_round_trip() {
        for action in [Action::Write, Action::Rewrite, Action::Describe] {
            assert_eq!(Action::parse(action.as_str()), Some(action));
            assert_eq!(serde_json::to_value(action).unwrap(), action.as_str());
        }
        assert_eq!(Action::parse("write"), None);
        for status in RunStatus::ALL {
            assert_eq!(RunStatus::parse(status.as_str()), Some(status));
            assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
            assert_eq!(RunStatus::ACTIVE.contains(&status), status.is_active());
        }
        assert_eq!(RunStatus::parse("sleeping"), None);
    }

    #[test]
    fn error_codes_round_trip_as_the_wire_names_them() {
        let names = [
            (RunErrorCode::NoConfig, "no_config"),
            (RunErrorCode::Aborted, "aborted"),
            (RunErrorCode::BudgetExceeded, "budget_exceeded"),
            (RunErrorCode::RateLimited, "rate_limited"),
            (RunErrorCode::ApiError(529), "api_error_529"),
            (RunErrorCode::ApiError(400), "api_error_400"),
            (RunErrorCode::NetworkError, "network_error"),
            (RunErrorCode::Timeout, "timeout"),
            (RunErrorCode::InvalidResponse, "invalid_response"),
            (RunErrorCode::StreamCut, "stream_cut"),
            (RunErrorCode::StreamError, "stream_error"),
            (RunErrorCode::Internal, "internal_error"),
            (RunErrorCode::Moderated, "moderated"),
        ];
        for code in RunErrorCode::NAMED {
            assert!(names.iter().any(|(c, _)| *c == code), "{code:?} has a name in this test");
        }
        for (code, name) in names {
            assert_eq!(code.to_string(), name);
            assert_eq!(RunErrorCode::parse(name), Some(code), "{name}");
            assert_eq!(serde_json::to_value(code).unwrap(), name);
            assert_eq!(serde_json::from_value::<RunErrorCode>(name.into()).unwrap(), code);
        }
        for unknown in ["unknown", "", "internal", "api_error_", "api_error_x", "api_error_0429", "api_error_70000"] {
            assert_eq!(RunErrorCode::parse(unknown), None, "{unknown}");
            assert!(serde_json::from_value::<RunErrorCode>(unknown.into()).is_err(), "{unknown}");
        }
        let failure = RunFailure { code: RunErrorCode::ApiError(503), message: "m".into() };
        assert_eq!(
            serde_json::to_value(failure).unwrap(),
            serde_json::json!({"code": "api_error_503", "message": "m"})
        );
    }

    #[test]
    fn validation_names_the_problem() {
        assert!(validate("p1", "WRITE", "a dragon", false).is_ok());
        assert!(validate("p1", "SING", "x", false).unwrap_err().to_string().contains("SING"));
        assert!(validate("p1", "WRITE", "  ", false).unwrap_err().to_string().contains("empty"));
        let long = "x".repeat(MAX_INPUT_CHARS + 1);
        assert!(validate("p1", "WRITE", &long, false).unwrap_err().to_string().contains("at most 16000"));
        assert!(validate("", "WRITE", "x", false).is_err());
        assert!(validate("p 1", "WRITE", "x", false).is_err());
    }

    #[test]
    fn each_refusal_is_its_own_variant_with_its_message() {
        let id_rule = "`project_id` must be 1..64 characters of letters, digits, '-', '_', '.' or ':'";
        let long = "x".repeat(MAX_INPUT_CHARS + 1);
        let cases = [
            (("", "WRITE", "x"), RunRequestError::ProjectId(InvalidProjectId), id_rule.to_owned()),
            (("p 1", "WRITE", "x"), RunRequestError::ProjectId(InvalidProjectId), id_rule.to_owned()),
            (
                ("p1", "SING", "x"),
                RunRequestError::UnknownAction("SING".into()),
                "unknown action `SING` (expected WRITE, REWRITE or DESCRIBE)".to_owned(),
            ),
            (("p1", "WRITE", " \n"), RunRequestError::EmptyInput, "`input` must not be empty".to_owned()),
            (
                ("p1", "WRITE", long.as_str()),
                RunRequestError::InputTooLong(16_001),
                "`input` is 16001 characters; at most 16000 are accepted".to_owned(),
            ),
            (
                ("p1", "WRITE", "a\u{7}b"),
                RunRequestError::ControlCharacter,
                "`input` must not contain control characters other than newlines and tabs".to_owned(),
            ),
        ];
        for ((project, action, input), error, message) in cases {
            assert_eq!(validate(project, action, input, false).unwrap_err(), error);
            assert_eq!(error.to_string(), message);
        }
        assert_eq!(validate_project_id(&"p".repeat(65)), Err(InvalidProjectId));
        assert_eq!(validate_project_id("a-b_c.d:e").as_deref(), Ok("a-b_c.d:e"));
    }
}
