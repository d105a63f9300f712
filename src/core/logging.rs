//! The log output of the binary: `text` for people (colour only on a terminal) or `json` for
//! shippers (one object a line). Owns the subscriber set-up and the [`Throttle`] of repeatable
//! events; never decides what is logged.

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

/// Lets one log line through per interval and counts the others, for events a client can
/// repeat at will (a refused connection must not cost a line each time).
pub struct Throttle {
    interval_ms: u64,
    start: std::time::Instant,
    next_ms: std::sync::atomic::AtomicU64,
    skipped: std::sync::atomic::AtomicU64,
}

impl Throttle {
    pub fn new(interval: std::time::Duration) -> Self {
        Throttle {
            interval_ms: interval.as_millis() as u64,
            start: std::time::Instant::now(),
            next_ms: Default::default(),
            skipped: Default::default(),
        }
    }

    /// `Some(lines skipped since the last one)` when a line may be written now.
    pub fn pass(&self) -> Option<u64> {
        use std::sync::atomic::Ordering::Relaxed;
        let now = self.start.elapsed().as_millis() as u64;
        let next = self.next_ms.load(Relaxed);
        if now >= next && self.next_ms.compare_exchange(next, now + self.interval_ms, Relaxed, Relaxed).is_ok() {
            Some(self.skipped.swap(0, Relaxed))
        } else {
            self.skipped.fetch_add(1, Relaxed);
            None
        }
    }
}
