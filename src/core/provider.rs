//! Which API lorewire speaks upstream, as configured: names, default models and API roots.
//! Owns no I/O and knows nothing of the wire formats (those are `llm::providers`).

/// Which API lorewire speaks upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provider {
    /// Anthropic Messages API.
    Anthropic,
    /// OpenAI Responses API.
    OpenAi,
    /// Chat Completions (OpenAI, Ollama, vLLM, llama.cpp).
    OpenAiChat,
}

impl Provider {
    pub const ALL: [Provider; 3] = [Provider::Anthropic, Provider::OpenAi, Provider::OpenAiChat];

    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Anthropic => "anthropic",
            Provider::OpenAi => "openai",
            Provider::OpenAiChat => "openai-chat",
        }
    }
    pub fn default_model(self) -> &'static str {
        match self {
            Provider::Anthropic => "claude-haiku-4-5-20251001",
            Provider::OpenAi | Provider::OpenAiChat => "gpt-5-mini",
        }
    }
    pub fn default_base_url(self) -> &'static str {
        match self {
            Provider::Anthropic => "https://api.anthropic.com",
            Provider::OpenAi | Provider::OpenAiChat => "https://api.openai.com/v1",
        }
    }
}

/// A provider name this version does not speak; holds the name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown provider `{0}` (expected anthropic, openai or openai-chat)")]
pub struct UnknownProvider(pub String);

impl std::str::FromStr for Provider {
    type Err = UnknownProvider;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Provider::ALL.into_iter().find(|p| p.as_str() == s).ok_or_else(|| UnknownProvider(s.to_owned()))
    }
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_an_unknown_one_is_named() {
        for provider in Provider::ALL {
            assert_eq!(provider.as_str().parse::<Provider>(), Ok(provider));
        }
        let unknown = "gemini".parse::<Provider>().unwrap_err();
        assert_eq!(unknown, UnknownProvider("gemini".into()));
        assert_eq!(unknown.to_string(), "unknown provider `gemini` (expected anthropic, openai or openai-chat)");
    }
}
