//! The one no-key rule: whether the stored settings can make an upstream call, and as whom.
//! Reads the settings row only; never calls anything.

use super::providers::{Provider, Target};
use crate::core::provider::UnknownProvider;
use crate::store::llm_config::LlmConfigRow;

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

/// Why the stored settings cannot make a call. Every call then falls back with `no_config`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoCredentials {
    #[error("no LLM API key is configured")]
    NoKey,
    /// The stored provider is not one this version speaks (written by a newer version, or by hand).
    #[error(transparent)]
    UnknownProvider(#[from] UnknownProvider),
}

/// The one no-key rule: the stored settings can make a call when they name a known provider
/// and hold an API key, or point an OpenAI-compatible provider at a server of one's own
/// (Ollama, vLLM, llama.cpp), which usually needs none. An error: every call is `no_config`.
pub fn credentials(config: &LlmConfigRow) -> Result<Credentials, NoCredentials> {
    let provider = config.provider()?;
    let api_key = config.api_key.clone().unwrap_or_default();
    let own_server = provider == Provider::OpenAiChat
        && config.base_url.trim_end_matches('/') != Provider::OpenAiChat.default_base_url();
    if api_key.is_empty() && !own_server {
        return Err(NoCredentials::NoKey);
    }
    Ok(Credentials { provider, base_url: config.base_url.clone(), api_key })
}

/// The one sentence that says calls cannot be made and why, for the startup log and the
/// dashboard: `Some` exactly when [`credentials`] fails.
pub fn no_config_notice(config: &LlmConfigRow) -> Option<String> {
    match credentials(config) {
        Ok(_) => None,
        Err(NoCredentials::NoKey) => Some(NO_CONFIG_NOTICE.to_owned()),
        Err(NoCredentials::UnknownProvider(why)) => Some(format!(
            "The stored LLM settings name an {why}, so every content item will fall back with \
             `no_config`: set the provider with PUT /admin/api/llm."
        )),
    }
}

pub const NO_CONFIG_NOTICE: &str = "No API key and no model server of your own are configured, so every content \
item will fall back with `no_config`: set an API key, or see README \"Try it with a local model\".";
