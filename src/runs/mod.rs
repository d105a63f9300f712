//! Generation runs (WRITE / REWRITE / DESCRIBE): the run as clients see it, its money
//! (integer micro-dollars, prices per million tokens) and the validation of requests.
//!
//! [`service`] admits runs (dedup, queue limit, budget reservation) and detaches waiters;
//! [`worker`] executes one attempt of a claimed run job, streaming; [`live`] keeps the frames
//! of runs streaming in this process for late subscribers. Nothing here holds a database
//! connection across an upstream call.

pub mod live;
pub mod relay;
pub mod service;
pub mod worker;

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::hub::Topic;
use crate::store::runs::RunRow;
use crate::store::StoreError;

pub use service::RunService;

/// Longest accepted `input`, in characters (a frame is at most 64 KiB).
pub const MAX_INPUT_CHARS: usize = 16_000;
/// Longest accepted `project_id`.
pub const MAX_PROJECT_CHARS: usize = 64;
/// Micro-dollars per dollar.
pub const MICROS: i64 = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Action {
    Write,
    Rewrite,
    Describe,
}

impl Action {
    pub fn as_str(self) -> &'static str {
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
    pub fn system_prompt(self) -> &'static str {
        match self {
            Action::Write => {
                "You are the writing assistant of a game studio. Write the prose the user asks for: \
                 vivid, concise, ready to use in the game. Answer with the prose only."
            }
            Action::Rewrite => {
                "You are the editor of a game studio. Rewrite the text the user gives you so it reads \
                 better, keeping its meaning, names and facts. Answer with the rewritten text only."
            }
            Action::Describe => {
                "You are the lore writer of a game studio. Describe what the user names (a place, a \
                 character, an object) in a short, evocative paragraph. Answer with the description only."
            }
        }
    }
    /// The user message: the input inside labeled delimiters, never in the system prompt.
    pub fn user_message(self, input: &str) -> String {
        let label = match self {
            Action::Write => "Writing request",
            Action::Rewrite => "Text to rewrite",
            Action::Describe => "Subject to describe",
        };
        format!("{label}:\n<<<INPUT\n{input}\nINPUT>>>")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Queued,
    Running,
    Done,
    Dead,
    Aborted,
}

impl RunStatus {
    pub const ACTIVE: [&'static str; 2] = ["queued", "running"];

    pub fn as_str(self) -> &'static str {
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

/// Why a run ended without its text (`run:error.code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunErrorCode {
    NoConfig,
    Aborted,
    BudgetExceeded,
    RateLimited,
    ApiError(u16),
    NetworkError,
    Timeout,
    InvalidResponse,
    /// The stream ended before the provider said it was complete.
    StreamCut,
    /// The provider reported an error inside the stream.
    StreamError,
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
        }
    }
}

/// Tokens one attempt (or a whole run) consumed. `input_tokens` excludes cache reads and
/// cache writes, so each count is priced once at its own rate (OpenAI's `input_tokens`
/// include `cached_tokens`; the parsers subtract them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
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

/// Prices of one model, in micro-dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Price {
    pub input: i64,
    pub output: i64,
    pub cache_read: i64,
    pub cache_write: i64,
}

impl Price {
    /// The cost of `usage` in micro-dollars, rounded up (never under-charged).
    pub fn cost(&self, usage: &Usage) -> i64 {
        let sum = usage.input_tokens as u128 * self.input.max(0) as u128
            + usage.output_tokens as u128 * self.output.max(0) as u128
            + usage.cache_read_tokens as u128 * self.cache_read.max(0) as u128
            + usage.cache_write_tokens as u128 * self.cache_write.max(0) as u128;
        i64::try_from(sum.div_ceil(1_000_000)).unwrap_or(i64::MAX)
    }

    /// The most an attempt can cost: every prompt token at the dearest input rate (a cache
    /// write costs more than plain input) plus `max_output` output tokens.
    pub fn worst_case(&self, prompt_tokens: u64, max_output: u64) -> i64 {
        let dearest_input = self.input.max(self.cache_write).max(self.cache_read);
        let per_token = Price { input: dearest_input, output: self.output, cache_read: 0, cache_write: 0 };
        per_token.cost(&Usage { input_tokens: prompt_tokens, output_tokens: max_output, ..Usage::default() })
    }

    pub fn to_json(&self) -> Value {
        json!({
            "input_usd": usd(self.input),
            "output_usd": usd(self.output),
            "cache_read_usd": usd(self.cache_read),
            "cache_write_usd": usd(self.cache_write),
        })
    }
}

/// Upper bound on the prompt's tokens: no tokenizer yields more tokens than UTF-8 bytes, plus a
/// margin for the per-message tokens the provider adds.
pub fn prompt_token_bound(system: &str, user: &str) -> u64 {
    (system.len() + user.len()) as u64 + 64
}

/// Micro-dollars as dollars (for JSON).
pub fn usd(micros: i64) -> f64 {
    micros as f64 / MICROS as f64
}

/// A dollar amount from JSON as micro-dollars: a finite, non-negative number up to one billion.
pub fn parse_usd(value: &Value, field: &str) -> Result<i64, String> {
    let Some(n) = value.as_f64() else {
        return Err(format!("`{field}` must be a number of US dollars, e.g. 12.5"));
    };
    if !n.is_finite() || n < 0.0 {
        return Err(format!("`{field}` must be zero or more"));
    }
    if n > 1e9 {
        return Err(format!("`{field}` must be at most 1000000000"));
    }
    Ok((n * MICROS as f64).round() as i64)
}

/// A validated `generate:start`.
#[derive(Debug, Clone)]
pub struct RunRequest {
    pub project_id: String,
    pub action: Action,
    pub input: String,
    pub skip_cache: bool,
}

/// Checks a request's fields; the message is shown to the client as it is.
pub fn validate(project_id: &str, action: &str, input: &str, skip_cache: bool) -> Result<RunRequest, String> {
    let project_id = validate_project_id(project_id)?;
    let action = Action::parse(action)
        .ok_or_else(|| format!("unknown action `{action}` (expected WRITE, REWRITE or DESCRIBE)"))?;
    if input.trim().is_empty() {
        return Err("`input` must not be empty".into());
    }
    let chars = input.chars().count();
    if chars > MAX_INPUT_CHARS {
        return Err(format!("`input` is {chars} characters; at most {MAX_INPUT_CHARS} are accepted"));
    }
    if input.chars().any(|c| c.is_control() && !matches!(c, '\n' | '\t' | '\r')) {
        return Err("`input` must not contain control characters other than newlines and tabs".into());
    }
    Ok(RunRequest { project_id, action, input: input.to_owned(), skip_cache })
}

/// Project ids: 1..64 characters of letters, digits, `-`, `_`, `.` and `:`.
pub fn validate_project_id(project_id: &str) -> Result<String, String> {
    let ok = !project_id.is_empty()
        && project_id.chars().count() <= MAX_PROJECT_CHARS
        && project_id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if ok {
        Ok(project_id.to_owned())
    } else {
        Err(format!("`project_id` must be 1..{MAX_PROJECT_CHARS} characters of letters, digits, '-', '_', '.' or ':'"))
    }
}

/// A run as REST clients see it (PROTOCOL §3 "Run").
#[derive(Debug, Clone, Serialize)]
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
    pub error: Option<Value>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

fn utc(t: NaiveDateTime) -> DateTime<Utc> {
    DateTime::from_naive_utc_and_offset(t, Utc)
}

impl RunView {
    pub fn from_row(row: &RunRow) -> Result<RunView, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("run {}: {what}", row.run_id));
        Ok(RunView {
            run_id: row.run_id.clone(),
            project_id: row.project_id.clone(),
            action: Action::parse(&row.action).ok_or_else(|| corrupt("unknown action"))?,
            status: RunStatus::parse(&row.status).ok_or_else(|| corrupt("unknown status"))?,
            model: row.model.clone(),
            attempts: row.attempts,
            usage: row.usage(),
            cost_usd: usd(row.cost_micros),
            text: row.text.clone(),
            error: row
                .error_code
                .as_ref()
                .map(|code| json!({"code": code, "message": row.error.clone().unwrap_or_default()})),
            created_at: utc(row.created_at),
            finished_at: row.finished_at.map(utc),
        })
    }
}

pub fn topic(run_id: &str) -> Topic {
    Topic::Run(run_id.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_rounds_up_and_prices_each_kind() {
        let haiku = Price { input: 1_000_000, output: 5_000_000, cache_read: 100_000, cache_write: 1_250_000 };
        let usage = Usage { input_tokens: 1000, output_tokens: 200, cache_read_tokens: 5000, cache_write_tokens: 800 };
        // 1000*1 + 200*5 + 5000*0.1 + 800*1.25 = 1000 + 1000 + 500 + 1000 micro-dollars
        assert_eq!(haiku.cost(&usage), 3500);
        assert_eq!(haiku.cost(&Usage { cache_read_tokens: 1, ..Usage::default() }), 1);
        assert_eq!(haiku.cost(&Usage::default()), 0);
        assert!(
            haiku.worst_case(100, 10)
                >= haiku.cost(&Usage { cache_write_tokens: 100, output_tokens: 10, ..Usage::default() })
        );
    }

    #[test]
    fn usd_parsing_refuses_bad_amounts() {
        assert_eq!(parse_usd(&json!(1.5), "limit_usd"), Ok(1_500_000));
        assert_eq!(parse_usd(&json!(0), "limit_usd"), Ok(0));
        assert!(parse_usd(&json!(-1), "limit_usd").is_err());
        assert!(parse_usd(&json!("5"), "limit_usd").is_err());
        assert!(parse_usd(&json!(null), "limit_usd").is_err());
    }

    #[test]
    fn validation_names_the_problem() {
        assert!(validate("p1", "WRITE", "a dragon", false).is_ok());
        assert!(validate("p1", "SING", "x", false).unwrap_err().contains("SING"));
        assert!(validate("p1", "WRITE", "  ", false).unwrap_err().contains("empty"));
        let long = "x".repeat(MAX_INPUT_CHARS + 1);
        assert!(validate("p1", "WRITE", &long, false).unwrap_err().contains("at most 16000"));
        assert!(validate("", "WRITE", "x", false).is_err());
        assert!(validate("p 1", "WRITE", "x", false).is_err());
    }
}
