//! Everything upstream: the provider wire formats, the HTTP client and the SSE stream, the
//! circuit breaker, and the one structured-call path ([`Llm`]). Knows nothing of content,
//! moods or runs: callers bring their prompts and validators.

pub mod call;
pub mod circuit;
pub mod client;
pub mod providers;
pub mod stream;

pub use call::{Answer, Llm};

use crate::store::llm_config::LlmConfigRow;
use providers::{Provider, Target};

/// Where calls go and as whom, read from the stored settings.
pub struct Credentials {
    pub provider: Provider,
    pub base_url: String,
    pub api_key: String,
}

impl Credentials {
    /// The request target for `model` (runs keep the model they were admitted with).
    pub fn target<'a>(&'a self, model: &'a str) -> Target<'a> {
        Target { provider: self.provider, base_url: &self.base_url, model, api_key: &self.api_key }
    }
}

/// The one no-key rule: the stored settings can make a call when they name a known provider
/// and hold an API key, or point an OpenAI-compatible provider at a server of one's own
/// (Ollama, vLLM, llama.cpp), which usually needs none. `None`: every call is `no_config`.
pub fn credentials(config: &LlmConfigRow) -> Option<Credentials> {
    let provider: Provider = config.provider.parse().ok()?;
    let api_key = config.api_key.clone().unwrap_or_default();
    let own_server = provider == Provider::OpenAiChat
        && config.base_url.trim_end_matches('/') != Provider::OpenAiChat.default_base_url();
    (!api_key.is_empty() || own_server).then(|| Credentials { provider, base_url: config.base_url.clone(), api_key })
}

/// `text` with every occurrence of `secret` replaced, for anything that may reach a log,
/// a response or the stored `last_error`. Provider messages are cut to a length before they
/// get here, so a secret cut at either end of `text` is replaced too.
pub fn redact(text: &str, secret: &str) -> String {
    const MIN_PIECE: usize = 4;
    if secret.len() < MIN_PIECE {
        return text.to_owned();
    }
    let mut out = text.replace(secret, "[redacted]");
    // The longest start of the secret that `out` ends with ...
    if let Some(cut) =
        (MIN_PIECE..secret.len()).rev().filter(|&n| secret.is_char_boundary(n)).find(|&n| out.ends_with(&secret[..n]))
    {
        out.truncate(out.len() - cut);
        out.push_str("[redacted]");
    }
    // ... and the longest end of the secret that it starts with.
    if let Some(cut) =
        (1..=secret.len() - MIN_PIECE).filter(|&n| secret.is_char_boundary(n)).find(|&n| out.starts_with(&secret[n..]))
    {
        out.replace_range(..secret.len() - cut, "[redacted]");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn redacts_whole_and_cut_secrets() {
        let key = "sk-canary-0123456789";
        assert_eq!(redact(&format!("bad key {key} given"), key), "bad key [redacted] given");
        assert_eq!(redact("bad key sk-canary-01", key), "bad key [redacted]");
        assert_eq!(redact("456789 was the key", key), "[redacted] was the key");
        assert_eq!(redact("ends in sk-", key), "ends in sk-", "pieces under four characters stay");
        assert_eq!(redact("nothing here", key), "nothing here");
        assert_eq!(redact("short", "abc"), "short");
    }
}
