//! The usage-limit settings (PROTOCOL §5): the studio's and the default player's daily limits
//! that seed the stored ones, and the per-player start rate. Parsing only; the ledger is the
//! store's and the rules are `limits/`.

use clap::Args;

use super::rate_limit::Rate;

/// The usage-limit flags, with their environment variables.
#[derive(Debug, Clone, Args)]
pub struct UsageSettings {
    /// The studio's spend per UTC day, in US dollars (`none` or unset: no limit).
    #[arg(long, global = true, env = "LOREWIRE_STUDIO_DAILY_USD", value_parser = parse_usd_limit)]
    pub studio_daily_usd: Option<Limit>,
    /// The studio's tokens per UTC day (`none` or unset: no limit).
    #[arg(long, global = true, env = "LOREWIRE_STUDIO_DAILY_TOKENS", value_parser = parse_token_limit)]
    pub studio_daily_tokens: Option<Limit>,
    /// Each player's spend per UTC day, in US dollars (`none` or unset: no limit).
    #[arg(long, global = true, env = "LOREWIRE_PLAYER_DAILY_USD", value_parser = parse_usd_limit)]
    pub player_daily_usd: Option<Limit>,
    /// Each player's tokens per UTC day (`none`: no limit).
    #[arg(long, global = true, env = "LOREWIRE_PLAYER_DAILY_TOKENS", default_value = "200000", value_parser = parse_token_limit)]
    pub player_daily_tokens: Limit,
    /// New content items, regenerations and runs one player may start, as COUNT/WINDOW.
    #[arg(long, global = true, env = "LOREWIRE_PLAYER_LLM_RATE", default_value = "60/1m")]
    pub player_llm_rate: Rate,
}

/// A limit as a setting gives it: `None` is `none` (no limit); tokens, or micro-dollars.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit(pub Option<i64>);

/// A limit that is neither `none` nor a number zero or more; holds the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is neither `none` nor a number zero or more")]
pub struct BadLimit(pub String);

fn parse_token_limit(s: &str) -> Result<Limit, BadLimit> {
    match s.trim() {
        "" | "none" => Ok(Limit(None)),
        n => n.parse::<u32>().map(|n| Limit(Some(i64::from(n)))).or_else(|_| {
            n.parse::<i64>().ok().filter(|n| *n >= 0).map(|n| Limit(Some(n))).ok_or_else(|| BadLimit(s.to_owned()))
        }),
    }
}

fn parse_usd_limit(s: &str) -> Result<Limit, BadLimit> {
    match s.trim() {
        "" | "none" => Ok(Limit(None)),
        n => match n.parse::<f64>() {
            Ok(usd) if usd.is_finite() && (0.0..=1e9).contains(&usd) => Ok(Limit(Some((usd * 1e6).round() as i64))),
            _ => Err(BadLimit(s.to_owned())),
        },
    }
}

/// The resolved usage settings: daily limits in tokens and micro-dollars (`None`: none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageConfig {
    pub studio_daily_micros: Option<i64>,
    pub studio_daily_tokens: Option<i64>,
    pub player_daily_micros: Option<i64>,
    pub player_daily_tokens: Option<i64>,
    pub player_llm_rate: Rate,
}

impl UsageSettings {
    pub fn into_config(self) -> UsageConfig {
        UsageConfig {
            studio_daily_micros: self.studio_daily_usd.and_then(|l| l.0),
            studio_daily_tokens: self.studio_daily_tokens.and_then(|l| l.0),
            player_daily_micros: self.player_daily_usd.and_then(|l| l.0),
            player_daily_tokens: self.player_daily_tokens.0,
            player_llm_rate: self.player_llm_rate,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_as_none_tokens_or_micro_dollars() {
        assert_eq!(parse_token_limit("none"), Ok(Limit(None)));
        assert_eq!(parse_token_limit(" 200000 "), Ok(Limit(Some(200_000))));
        assert_eq!(parse_token_limit("-1"), Err(BadLimit("-1".into())));
        assert_eq!(parse_usd_limit("1.5"), Ok(Limit(Some(1_500_000))));
        assert_eq!(parse_usd_limit(""), Ok(Limit(None)));
        assert!(parse_usd_limit("-0.1").unwrap_err().to_string().contains("-0.1"));
        assert!(parse_usd_limit("NaN").is_err());
    }
}
