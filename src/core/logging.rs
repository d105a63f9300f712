//! The log output of the binary: `text` for people (colour only on a terminal) or `json` for
//! shippers (one object a line). Owns the subscriber set-up; never decides what is logged.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// `LOREWIRE_LOG_FORMAT`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines; ANSI colour only when stderr is a terminal.
    #[default]
    Text,
    /// One JSON object a line: timestamp, level, target, fields (with the message) and the span.
    Json,
}

/// Installs the global subscriber writing to stderr, filtered by `RUST_LOG` (default `info`).
/// Records of the `log` crate (r2d2, actix-server) are forwarded into it.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(false).init(),
    }
}
