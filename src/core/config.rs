//! Configuration: flags, then environment (`.env` is read by `main`), then defaults.
//! Owns the typed settings every actor reads; never prints a secret (see [`Secret`]).

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

pub use crate::core::secret::Secret;

use crate::core::identity::{IdentityConfig, IdentitySettings};
use crate::core::logging::LogFormat;
use crate::core::moderation::{ModerationConfig, ModerationSettings};
use crate::core::provider::Provider;
use crate::core::rate_limit::Rate;
use crate::core::usage::{UsageConfig, UsageSettings};

#[derive(Debug, Parser)]
#[command(
    name = "lorewire",
    version,
    about = "Realtime game backend with an LLM content pipeline",
    long_about = "Realtime game backend with an LLM content pipeline.\n\n\
        Every flag can also be given as the environment variable shown next to it; \
        a .env file in the working directory is read at start. Flags go before or after the \
        subcommand.",
    after_help = "Logging: RUST_LOG sets the log filter (default: info), e.g. RUST_LOG=lorewire=debug; \
        LOREWIRE_LOG_FORMAT=json writes one JSON object a line."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub settings: Settings,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run pending migrations, then serve HTTP and WebSocket (the default).
    Serve,
    /// Run pending migrations and exit.
    Migrate,
}

/// Every setting (README "Configuration"), as flags with their environment variables.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// Database: a path or sqlite:// URL selects SQLite, postgres:// selects PostgreSQL.
    #[arg(long, env = "DATABASE_URL", default_value = "lorewire.db", global = true)]
    pub database_url: String,
    /// Listen address.
    #[arg(long, global = true, env = "LOREWIRE_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,
    /// Admin bearer token; when unset a random one is generated and printed once.
    #[arg(long, global = true, env = "LOREWIRE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<Secret>,
    /// Upstream LLM provider: anthropic, openai (Responses API) or openai-chat (Chat Completions).
    #[arg(long, global = true, env = "LOREWIRE_LLM_PROVIDER", default_value = "anthropic")]
    pub llm_provider: Provider,
    /// API key; seeds the stored config when none is stored (falls back to ANTHROPIC_API_KEY / OPENAI_API_KEY).
    #[arg(long, global = true, env = "LOREWIRE_LLM_API_KEY", hide_env_values = true)]
    pub llm_api_key: Option<Secret>,
    /// Fallback key for the anthropic provider.
    #[arg(long, global = true, env = "ANTHROPIC_API_KEY", hide_env_values = true, hide = true)]
    pub anthropic_api_key: Option<Secret>,
    /// Fallback key for the openai providers.
    #[arg(long, global = true, env = "OPENAI_API_KEY", hide_env_values = true, hide = true)]
    pub openai_api_key: Option<Secret>,
    /// Default model (claude-haiku-4-5-20251001 for anthropic, gpt-5-mini for openai).
    #[arg(long, global = true, env = "LOREWIRE_LLM_MODEL")]
    pub llm_model: Option<String>,
    /// Provider API root, as the provider's SDKs take it (e.g. http://127.0.0.1:11434/v1 for Ollama).
    #[arg(long, global = true, env = "LOREWIRE_LLM_BASE_URL")]
    pub llm_base_url: Option<String>,
    /// Timeout of one upstream call, in seconds.
    #[arg(long, global = true, env = "LOREWIRE_LLM_TIMEOUT_SECS", default_value_t = 30)]
    pub llm_timeout_secs: u64,
    /// Upstream calls in flight at once.
    #[arg(long, global = true, env = "LOREWIRE_LLM_CONCURRENCY", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub llm_concurrency: u32,
    /// Failures that open the circuit ...
    #[arg(long, global = true, env = "LOREWIRE_CIRCUIT_FAILURES", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub circuit_failures: u32,
    /// Upstreams one structured call may try before it falls back (PROTOCOL §7).
    #[arg(long, global = true, env = "LOREWIRE_LLM_HOPS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub llm_hops: u32,
    /// ... within this window, in seconds.
    #[arg(long, global = true, env = "LOREWIRE_CIRCUIT_WINDOW_SECS", default_value_t = 60)]
    pub circuit_window_secs: u64,
    /// Open -> half-open after this many seconds.
    #[arg(long, global = true, env = "LOREWIRE_CIRCUIT_RESET_SECS", default_value_t = 300)]
    pub circuit_reset_secs: u64,
    /// First retry delay of a generation run, in ms; doubles per attempt, with jitter.
    #[arg(long, global = true, env = "LOREWIRE_RETRY_BASE_MS", default_value_t = 2000)]
    pub retry_base_ms: u64,
    /// Attempts before a run is dead-lettered.
    #[arg(long, global = true, env = "LOREWIRE_MAX_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,
    /// Queued runs before new ones are refused.
    #[arg(long, global = true, env = "LOREWIRE_QUEUE_LIMIT", default_value_t = 10000)]
    pub queue_limit: u64,
    /// Output tokens asked for per run.
    #[arg(long, global = true, env = "LOREWIRE_MAX_OUTPUT_TOKENS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_output_tokens: u32,
    /// Longest a generation run's streamed answer may take, in seconds (the idle limit
    /// between chunks is LOREWIRE_LLM_TIMEOUT_SECS).
    #[arg(long, global = true, env = "LOREWIRE_RUN_TOTAL_SECS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub run_total_secs: u64,
    /// Lobby messages sent on join (at most 500).
    #[arg(long, global = true, env = "LOREWIRE_HISTORY_LIMIT", default_value_t = 50, value_parser = clap::value_parser!(u32).range(0..=500))]
    pub history_limit: u32,
    /// Per-user lobby message rate, as COUNT/WINDOW (e.g. 5/10s, 30/1m).
    #[arg(long, global = true, env = "LOREWIRE_CHAT_RATE", default_value = "5/10s")]
    pub chat_rate: Rate,
    /// Comma list of allowed WebSocket Origins; `*` allows all. Default: same origin only.
    #[arg(long, global = true, env = "LOREWIRE_ALLOWED_ORIGINS", default_value = "")]
    pub allowed_origins: String,
    /// Graceful drain on SIGTERM/SIGINT, in seconds.
    #[arg(long, global = true, env = "LOREWIRE_SHUTDOWN_SECS", default_value_t = 5)]
    pub shutdown_secs: u64,
    /// Writer connections of a process on PostgreSQL (one player's writes always on the same
    /// one): while one waits on a round trip the others run theirs, but each batch is smaller
    /// and what a batch makes ahead of it in one statement is shared by fewer writes (content
    /// does best with one, runs with an instant upstream with two). SQLite always has one.
    #[arg(long, global = true, env = "LOREWIRE_DB_WRITERS", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=16))]
    pub db_writers: u64,
    /// A running job whose worker stopped renewing it for this long is taken over (PostgreSQL, several processes).
    #[arg(long, global = true, env = "LOREWIRE_JOB_LEASE_SECS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..))]
    pub job_lease_secs: u64,
    /// Redis as the cross-process backplane (fan-out, presence, shared rate limits), as
    /// redis://host:port[/db]; needs a PostgreSQL DATABASE_URL. Without it, processes on one
    /// PostgreSQL use LISTEN/NOTIFY.
    #[arg(long, global = true, env = "LOREWIRE_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Prefix of every Redis key and channel lorewire uses.
    #[arg(long, global = true, env = "LOREWIRE_REDIS_PREFIX", default_value = "lorewire:")]
    pub redis_prefix: String,
    /// Most users listed in one presence:state or presence:page; above it, presence:update
    /// carries only the count (at most once a second) and clients page with presence:list.
    #[arg(long, global = true, env = "LOREWIRE_PRESENCE_LIST_MAX", default_value_t = 200, value_parser = parse_list_max)]
    pub presence_list_max: usize,
    /// Open connections one client address may hold; more are answered 429 (players behind
    /// one NAT share an address).
    #[arg(long, global = true, env = "LOREWIRE_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections_per_address: u32,
    /// Seconds a new WebSocket has to send session:start before it is closed with 1008.
    #[arg(long, global = true, env = "LOREWIRE_SESSION_START_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub session_start_secs: u64,
    /// Content items one session may be subscribed to at once; more get error:rate_limited.
    #[arg(long, global = true, env = "LOREWIRE_MAX_SUBSCRIPTIONS", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_subscriptions: u32,
    /// Bearer token GET /metrics requires; when unset /metrics needs none.
    #[arg(long, global = true, env = "LOREWIRE_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<Secret>,
    /// Log output on stderr: text (colour only on a terminal) or json (one object a line).
    #[arg(long, global = true, env = "LOREWIRE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(flatten)]
    pub identity: IdentitySettings,
    #[command(flatten)]
    pub moderation: ModerationSettings,
    #[command(flatten)]
    pub usage: UsageSettings,
}

/// Why `LOREWIRE_PRESENCE_LIST_MAX` is refused (clap shows the message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListMaxError {
    #[error("must be at least 1: it is how many users one presence:state or presence:page lists")]
    Zero,
    /// The value as given.
    #[error("`{0}` is not a whole number of users (at least 1)")]
    NotANumber(String),
}

/// `LOREWIRE_PRESENCE_LIST_MAX`: a positive number of users.
fn parse_list_max(s: &str) -> Result<usize, ListMaxError> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err(ListMaxError::Zero),
        Ok(n) => Ok(n),
        Err(_) => Err(ListMaxError::NotANumber(s.to_owned())),
    }
}

/// Which WebSocket `Origin`s may connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedOrigins {
    SameOrigin,
    Any,
    List(Vec<String>),
}

impl AllowedOrigins {
    pub fn parse(s: &str) -> Self {
        let list: Vec<String> = s
            .split(',')
            .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
            .filter(|o| !o.is_empty())
            .collect();
        if list.iter().any(|o| o == "*") {
            AllowedOrigins::Any
        } else if list.is_empty() {
            AllowedOrigins::SameOrigin
        } else {
            AllowedOrigins::List(list)
        }
    }

    /// `host` is the request's Host header, used for the same-origin rule.
    pub fn allows(&self, origin: &str, host: Option<&str>) -> bool {
        let origin = origin.trim_end_matches('/').to_ascii_lowercase();
        match self {
            AllowedOrigins::Any => true,
            AllowedOrigins::List(list) => list.contains(&origin),
            AllowedOrigins::SameOrigin => {
                let Some(host) = host else { return false };
                let authority = origin.split_once("://").map(|(_, a)| a).unwrap_or("");
                authority == host.to_ascii_lowercase()
            }
        }
    }
}

/// The resolved configuration the application runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub database_url: String,
    pub bind: SocketAddr,
    pub admin_token: Option<Secret>,
    pub llm_provider: Provider,
    pub llm_api_key: Option<Secret>,
    pub llm_model: String,
    pub llm_base_url: String,
    pub llm_timeout: Duration,
    pub llm_concurrency: usize,
    /// Upstreams one call may try (`LOREWIRE_LLM_HOPS`).
    pub llm_hops: usize,
    pub circuit_failures: u32,
    pub circuit_window: Duration,
    pub circuit_reset: Duration,
    pub retry_base: Duration,
    pub max_attempts: u32,
    pub queue_limit: u64,
    pub max_output_tokens: u32,
    /// Total limit of one streamed run attempt.
    pub run_total_limit: Duration,
    /// Lobby messages sent on join, the chat's recent messages (`LOREWIRE_HISTORY_LIMIT`).
    pub lobby_recent: u32,
    pub chat_rate: Rate,
    pub allowed_origins: AllowedOrigins,
    pub shutdown: Duration,
    pub job_lease: Duration,
    /// `LOREWIRE_DB_WRITERS`: writer connections on PostgreSQL.
    pub db_writers: usize,
    /// How often the job queue is polled besides the wake-ups (delayed jobs, other processes).
    pub job_poll: Duration,
    /// WebSocket ping interval and the silence after which a socket is closed.
    pub heartbeat_interval: Duration,
    pub client_timeout: Duration,
    /// HTTP worker threads (0 = one per core).
    pub workers: usize,
    /// Presence changes are gathered this long into one `presence:update` (at most 100 ms).
    pub presence_window: Duration,
    /// Most users in one `presence:state` / `presence:page`; above it updates carry only the count.
    pub presence_list_max: usize,
    /// How often the dashboard's metric history samples the metrics (10 s; 360 samples are kept).
    pub metrics_sample: Duration,
    /// Redis as the backplane (`LOREWIRE_REDIS_URL`), and the prefix of its keys and channels.
    pub redis_url: Option<String>,
    pub redis_prefix: String,
    /// Open connections per client address (`LOREWIRE_MAX_CONNECTIONS_PER_ADDRESS`).
    pub max_connections_per_address: usize,
    /// How long a socket may go without `session:start` (`LOREWIRE_SESSION_START_SECS`).
    pub session_start: Duration,
    /// Content subscriptions per session (`LOREWIRE_MAX_SUBSCRIPTIONS`).
    pub max_subscriptions: usize,
    /// The token `/metrics` requires, if any (`LOREWIRE_METRICS_TOKEN`).
    pub metrics_token: Option<Secret>,
    /// How long a request's body may take to arrive after its head (then 408).
    pub body_timeout: Duration,
    /// Who players are and how they prove it (PROTOCOL §5).
    pub identity: IdentityConfig,
    /// What players and the LLM write is checked against (PROTOCOL §6).
    pub moderation: ModerationConfig,
    /// Usage limits that seed the stored ones, and the per-player start rate (PROTOCOL §5).
    pub usage: UsageConfig,
    /// Pauses that tests put between two steps to hold a race open; all zero outside tests.
    pub test_holds: TestHolds,
}

/// Pauses between two steps of a race, so a test reproduces the race every time instead of
/// now and then. Set only by tests (no flag or variable); zero everywhere else.
#[derive(Debug, Clone, Default)]
pub struct TestHolds {
    /// Between a session's ack and its lobby join reaching the presence actor (which
    /// subscribes it to the lobby's frames).
    pub lobby_join: Duration,
    /// Between a lobby join's subscription and its read of the chat's recent messages.
    pub lobby_recent: Duration,
    /// Between a session start's read of its player's blocked flag and its ack.
    pub session_start: Duration,
}

impl Settings {
    pub fn into_config(self) -> Config {
        let provider = self.llm_provider;
        let fallback_key = match provider {
            Provider::Anthropic => self.anthropic_api_key,
            Provider::OpenAi | Provider::OpenAiChat => self.openai_api_key,
        };
        let llm_api_key = self.llm_api_key.or(fallback_key).filter(|k| !k.is_empty());
        Config {
            database_url: self.database_url,
            bind: self.bind,
            admin_token: self.admin_token.filter(|t| !t.is_empty()),
            llm_provider: provider,
            llm_api_key,
            llm_model: self
                .llm_model
                .filter(|m| !m.trim().is_empty())
                .unwrap_or_else(|| provider.default_model().to_owned()),
            llm_base_url: self
                .llm_base_url
                .filter(|u| !u.trim().is_empty())
                .unwrap_or_else(|| provider.default_base_url().to_owned()),
            llm_timeout: Duration::from_secs(self.llm_timeout_secs.max(1)),
            llm_concurrency: self.llm_concurrency as usize,
            llm_hops: self.llm_hops as usize,
            circuit_failures: self.circuit_failures,
            circuit_window: Duration::from_secs(self.circuit_window_secs),
            circuit_reset: Duration::from_secs(self.circuit_reset_secs),
            retry_base: Duration::from_millis(self.retry_base_ms),
            max_attempts: self.max_attempts,
            queue_limit: self.queue_limit,
            max_output_tokens: self.max_output_tokens,
            run_total_limit: Duration::from_secs(self.run_total_secs),
            lobby_recent: self.history_limit,
            chat_rate: self.chat_rate,
            allowed_origins: AllowedOrigins::parse(&self.allowed_origins),
            shutdown: Duration::from_secs(self.shutdown_secs),
            job_lease: Duration::from_secs(self.job_lease_secs),
            db_writers: self.db_writers as usize,
            job_poll: Duration::from_millis(500),
            heartbeat_interval: Duration::from_secs(10),
            client_timeout: Duration::from_secs(30),
            workers: 0,
            presence_window: Duration::from_millis(95),
            presence_list_max: self.presence_list_max,
            metrics_sample: Duration::from_secs(10),
            redis_url: self.redis_url.filter(|u| !u.trim().is_empty()),
            redis_prefix: self.redis_prefix,
            max_connections_per_address: self.max_connections_per_address as usize,
            session_start: Duration::from_secs(self.session_start_secs),
            max_subscriptions: self.max_subscriptions as usize,
            metrics_token: self.metrics_token.filter(|t| !t.is_empty()),
            body_timeout: Duration::from_secs(10),
            identity: self.identity.into_config(),
            moderation: self.moderation.into_config(),
            usage: self.usage.into_config(),
            test_holds: TestHolds::default(),
        }
    }
}

impl Config {
    /// The documented defaults with the given database (what tests and benches start from).
    pub fn with_database(database_url: impl Into<String>) -> Config {
        let mut config = Cli::parse_from(["lorewire"]).settings.into_config();
        config.database_url = database_url.into();
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_setting_refusal_says_what_is_wrong() {
        assert_eq!(parse_list_max(" 25 "), Ok(25));
        assert_eq!(parse_list_max("0"), Err(ListMaxError::Zero));
        assert_eq!(
            ListMaxError::Zero.to_string(),
            "must be at least 1: it is how many users one presence:state or presence:page lists"
        );
        assert_eq!(parse_list_max("many"), Err(ListMaxError::NotANumber("many".into())));
        assert_eq!(parse_list_max("-3").unwrap_err().to_string(), "`-3` is not a whole number of users (at least 1)");
    }

    #[test]
    fn origins_same_origin_list_and_any() {
        let same = AllowedOrigins::parse("");
        assert!(same.allows("http://127.0.0.1:8080", Some("127.0.0.1:8080")));
        assert!(!same.allows("http://evil.example", Some("127.0.0.1:8080")));
        let list = AllowedOrigins::parse("https://game.example, http://localhost:3000/");
        assert!(list.allows("http://localhost:3000", None));
        assert!(!list.allows("http://localhost:3001", None));
        assert!(AllowedOrigins::parse("*").allows("http://anything", None));
    }

    #[test]
    fn presence_list_max_refuses_zero() {
        let cli = |v: &str| Cli::try_parse_from(["lorewire", "--presence-list-max", v]);
        assert_eq!(Cli::parse_from(["lorewire"]).settings.presence_list_max, 200);
        assert_eq!(cli("3").unwrap().settings.presence_list_max, 3);
        let zero = cli("0").unwrap_err().to_string();
        assert!(zero.contains("at least 1"), "{zero}");
        assert!(cli("-2").is_err() && cli("many").is_err());
    }

    #[test]
    fn moderation_block_after_is_unset_by_default_and_refuses_zero() {
        let cli = |v: &str| Cli::try_parse_from(["lorewire", "--moderation-block-after", v]);
        assert_eq!(Cli::parse_from(["lorewire"]).settings.into_config().moderation.block_after, None);
        assert_eq!(cli("3").unwrap().settings.into_config().moderation.block_after, Some(3));
        let zero = cli("0").unwrap_err().to_string();
        assert!(zero.contains("moderation-block-after") && zero.contains("1.."), "{zero}");
        let words = cli("many").unwrap_err().to_string();
        assert!(words.contains("many"), "{words}");
    }
}
