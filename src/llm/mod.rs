//! Everything upstream: the LLM actor (job claims, bounded concurrency), the circuit
//! breaker, the HTTP client and the provider wire formats.

pub mod actor;
pub mod circuit;
pub mod client;
pub mod providers;
pub mod stream;

pub use actor::{Drain, JobsAvailable, LlmActor, ReleaseJobs};

/// `text` with every occurrence of `secret` replaced, for anything that may reach a log,
/// a response or the stored `last_error`.
pub fn redact(text: &str, secret: &str) -> String {
    if secret.len() < 4 {
        return text.to_owned();
    }
    text.replace(secret, "[redacted]")
}
