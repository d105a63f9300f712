//! The moderation settings (PROTOCOL §6): the word list, the moderation endpoint, what
//! a flagged chat line does and how many flags block a player.

use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::core::secret::Secret;

/// `LOREWIRE_MODERATION_CHAT`: what a flagged chat line does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ChatModeration {
    /// `error:moderated` to the sender; nothing stored or broadcast.
    Block,
    /// Stored and sent with the matched words as `***` and `"masked":true`.
    Mask,
}

/// The moderation flags, with their environment variables (README "Moderation").
#[derive(Debug, Clone, Args)]
pub struct ModerationSettings {
    /// A file of words and patterns (one a line, `#` comments, `*` at either end for a prefix or suffix).
    #[arg(long, global = true, env = "LOREWIRE_MODERATION_WORDS")]
    pub moderation_words: Option<std::path::PathBuf>,
    /// An endpoint speaking OpenAI's POST /v1/moderations format (the full URL).
    #[arg(long, global = true, env = "LOREWIRE_MODERATION_URL")]
    pub moderation_url: Option<String>,
    /// Bearer key of the moderation endpoint.
    #[arg(long, global = true, env = "LOREWIRE_MODERATION_API_KEY", hide_env_values = true)]
    pub moderation_api_key: Option<Secret>,
    /// How long a check of the endpoint may take before the word list alone decides, in ms.
    #[arg(long, global = true, env = "LOREWIRE_MODERATION_TIMEOUT_MS", default_value_t = 1500, value_parser = clap::value_parser!(u64).range(1..))]
    pub moderation_timeout_ms: u64,
    /// What a flagged chat line does: block or mask.
    #[arg(long, global = true, env = "LOREWIRE_MODERATION_CHAT", value_enum, default_value_t = ChatModeration::Block)]
    pub moderation_chat: ChatModeration,
    /// Characters of run text checked at once at most (a window ends early after a sentence).
    #[arg(long, global = true, env = "LOREWIRE_MODERATION_WINDOW", default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    pub moderation_window: u32,
    /// Flags of one player within 24 h that block it (as the admin's block does); unset: never.
    #[arg(long, global = true, env = "LOREWIRE_MODERATION_BLOCK_AFTER", value_parser = clap::value_parser!(u32).range(1..))]
    pub moderation_block_after: Option<u32>,
}

/// The resolved moderation settings.
#[derive(Debug, Clone)]
pub struct ModerationConfig {
    pub words: Option<std::path::PathBuf>,
    pub url: Option<String>,
    pub api_key: Option<Secret>,
    pub timeout: Duration,
    /// Checks of the endpoint in flight at once; past it the word list alone decides.
    pub concurrency: usize,
    pub chat: ChatModeration,
    /// Most characters of run text in one check.
    pub window: usize,
    /// Flags of one player within 24 h that block it; `None`: flags never block.
    pub block_after: Option<u32>,
}

impl ModerationConfig {
    /// Whether anything is checked (a word list or an endpoint is set).
    pub fn is_on(&self) -> bool {
        self.words.is_some() || self.url.is_some()
    }
}

impl ModerationSettings {
    pub fn into_config(self) -> ModerationConfig {
        ModerationConfig {
            words: self.moderation_words.filter(|p| !p.as_os_str().is_empty()),
            url: self.moderation_url.map(|u| u.trim().to_owned()).filter(|u| !u.is_empty()),
            api_key: self.moderation_api_key.filter(|k| !k.is_empty()),
            timeout: Duration::from_millis(self.moderation_timeout_ms),
            concurrency: 32,
            chat: self.moderation_chat,
            window: self.moderation_window as usize,
            block_after: self.moderation_block_after,
        }
    }
}
