//! Usage limits as values (PROTOCOL §5): the three levels a call is charged at, a refusal
//! naming its level, and the token bound of a call. Pure; the ledger is the store's.

use serde::Serialize;
use utoipa::ToSchema;

/// Where a limit sits; refusals are reported for the first level that refuses, in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, ToSchema)]
#[cfg_attr(test, derive(ts_rs::TS))]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Player,
    Project,
    Studio,
}

impl Level {
    pub const ALL: [Level; 3] = [Level::Player, Level::Project, Level::Studio];

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Player => "player",
            Level::Project => "project",
            Level::Studio => "studio",
        }
    }
}

/// Why a limit refused a call (the metrics' `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalReason {
    /// The call could take the level past its token or USD limit.
    OverLimit,
    /// A USD limit applies and the model has no price (fail closed).
    UnknownPrice,
    /// Over the per-player start rate.
    StartRate,
}

impl RefusalReason {
    pub const ALL: [RefusalReason; 3] =
        [RefusalReason::OverLimit, RefusalReason::UnknownPrice, RefusalReason::StartRate];

    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::OverLimit => "over_limit",
            RefusalReason::UnknownPrice => "unknown_price",
            RefusalReason::StartRate => "start_rate",
        }
    }
}

/// A call refused by a limit; the message is shown to the client as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    pub level: Level,
    pub reason: RefusalReason,
    pub message: String,
}

impl Refusal {
    /// The level's limit in `unit` has no room for the call.
    pub fn over(level: Level, unit: &str) -> Refusal {
        let whose = match level {
            Level::Player => "your daily",
            Level::Project => "the project's",
            Level::Studio => "the studio's daily",
        };
        let message = format!("this could take {whose} {unit} limit past it; nothing was stored");
        Refusal { level, reason: RefusalReason::OverLimit, message }
    }

    /// A USD limit applies and the model has no price (fail closed).
    pub fn no_price(level: Level, model: &str) -> Refusal {
        Refusal {
            level,
            reason: RefusalReason::UnknownPrice,
            message: format!(
                "the model `{model}` has no price, so the {} level's USD limit cannot allow it",
                level.as_str()
            ),
        }
    }
}

/// A call's token bound that cannot undercount: its prompt's UTF-8 bytes (a token is at least
/// one byte) plus the output tokens asked for.
pub fn call_token_bound(prompt_parts: &[&str], max_output_tokens: u64) -> i64 {
    let bytes: usize = prompt_parts.iter().map(|p| p.len()).sum();
    i64::try_from(bytes as u64 + max_output_tokens).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_count_bytes_and_refusals_name_their_level() {
        assert_eq!(call_token_bound(&["ab", "é"], 10), 14);
        assert_eq!(Refusal::over(Level::Player, "token").level, Level::Player);
        assert!(Refusal::no_price(Level::Studio, "m1").message.contains("`m1`"));
    }
}
