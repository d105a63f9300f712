//! Money: integer micro-dollars, per-model prices per million tokens, and dollar amounts at the
//! JSON edge. Pure arithmetic; never rounds a charge down.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::runs::Usage;

/// Micro-dollars per dollar.
pub const MICROS: i64 = 1_000_000;

/// Prices of one model, in micro-dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Price {
    pub input: i64,
    pub output: i64,
    pub cache_read: i64,
    pub cache_write: i64,
}

impl Price {
    /// Each of the two prices' rates at its highest: never under either.
    pub fn max(&self, other: &Price) -> Price {
        Price {
            input: self.input.max(other.input),
            output: self.output.max(other.output),
            cache_read: self.cache_read.max(other.cache_read),
            cache_write: self.cache_write.max(other.cache_write),
        }
    }

    /// The cost of `usage` in micro-dollars, rounded up (never under-charged).
    pub fn cost(&self, usage: &Usage) -> i64 {
        let sum = usage.input_tokens as u128 * self.input.max(0) as u128
            + usage.output_tokens as u128 * self.output.max(0) as u128
            + usage.cache_read_tokens as u128 * self.cache_read.max(0) as u128
            + usage.cache_write_tokens as u128 * self.cache_write.max(0) as u128;
        i64::try_from(sum.div_ceil(1_000_000)).unwrap_or(i64::MAX)
    }

    /// The most an attempt can cost: every prompt token at the dearest input rate (a cache
    /// write costs more than plain input) plus `max_output` output tokens.
    pub fn worst_case(&self, prompt_tokens: u64, max_output: u64) -> i64 {
        let dearest_input = self.input.max(self.cache_write).max(self.cache_read);
        let per_token = Price { input: dearest_input, output: self.output, cache_read: 0, cache_write: 0 };
        per_token.cost(&Usage { input_tokens: prompt_tokens, output_tokens: max_output, ..Usage::default() })
    }
}

/// The prices of one model in US dollars per million tokens, as the admin API shows and takes them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PriceUsd {
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    pub input_usd: f64,
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    pub output_usd: f64,
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    pub cache_read_usd: f64,
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    pub cache_write_usd: f64,
}

impl From<&Price> for PriceUsd {
    fn from(p: &Price) -> Self {
        PriceUsd {
            input_usd: usd(p.input),
            output_usd: usd(p.output),
            cache_read_usd: usd(p.cache_read),
            cache_write_usd: usd(p.cache_write),
        }
    }
}

impl PriceUsd {
    /// The price in micro-dollars; the error names the amount at fault.
    pub fn to_price(&self) -> Result<Price, UsdError> {
        Ok(Price {
            input: parse_usd(self.input_usd, "input_usd")?,
            output: parse_usd(self.output_usd, "output_usd")?,
            cache_read: parse_usd(self.cache_read_usd, "cache_read_usd")?,
            cache_write: parse_usd(self.cache_write_usd, "cache_write_usd")?,
        })
    }
}

/// Micro-dollars as dollars (for JSON).
pub fn usd(micros: i64) -> f64 {
    micros as f64 / MICROS as f64
}

/// A dollar amount refused, naming its field; the message is shown to the client as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UsdError {
    /// Negative, or not a finite number.
    #[error("`{field}` must be zero or more")]
    BelowZero { field: &'static str },
    #[error("`{field}` must be at most 1000000000")]
    TooLarge { field: &'static str },
}

/// A dollar amount as micro-dollars: a finite, non-negative number up to one billion.
pub fn parse_usd(n: f64, field: &'static str) -> Result<i64, UsdError> {
    if !n.is_finite() || n < 0.0 {
        return Err(UsdError::BelowZero { field });
    }
    if n > 1e9 {
        return Err(UsdError::TooLarge { field });
    }
    Ok((n * MICROS as f64).round() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_rounds_up_and_prices_each_kind() {
        let haiku = Price { input: 1_000_000, output: 5_000_000, cache_read: 100_000, cache_write: 1_250_000 };
        let usage = Usage { input_tokens: 1000, output_tokens: 200, cache_read_tokens: 5000, cache_write_tokens: 800 };
        // 1000*1 + 200*5 + 5000*0.1 + 800*1.25 = 1000 + 1000 + 500 + 1000 micro-dollars
        assert_eq!(haiku.cost(&usage), 3500);
        assert_eq!(haiku.cost(&Usage { cache_read_tokens: 1, ..Usage::default() }), 1);
        assert_eq!(haiku.cost(&Usage::default()), 0);
        assert!(
            haiku.worst_case(100, 10)
                >= haiku.cost(&Usage { cache_write_tokens: 100, output_tokens: 10, ..Usage::default() })
        );
    }

    #[test]
    fn usd_parsing_refuses_bad_amounts() {
        assert_eq!(parse_usd(1.5, "limit_usd"), Ok(1_500_000));
        assert_eq!(parse_usd(0.0, "limit_usd"), Ok(0));
        assert!(parse_usd(-1.0, "limit_usd").unwrap_err().to_string().contains("limit_usd"));
        assert!(parse_usd(f64::NAN, "limit_usd").is_err());
        assert!(parse_usd(2e9, "limit_usd").is_err());
        let price = PriceUsd { input_usd: 1.0, output_usd: -2.0, cache_read_usd: 0.1, cache_write_usd: 1.25 };
        assert!(price.to_price().unwrap_err().to_string().contains("output_usd"));
    }

    #[test]
    fn each_refusal_names_its_field() {
        let below = UsdError::BelowZero { field: "limit_usd" };
        for n in [-0.5, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert_eq!(parse_usd(n, "limit_usd"), Err(below), "{n}");
        }
        assert_eq!(below.to_string(), "`limit_usd` must be zero or more");
        let large = UsdError::TooLarge { field: "input_usd" };
        assert_eq!(parse_usd(1e9 + 1.0, "input_usd"), Err(large));
        assert_eq!(large.to_string(), "`input_usd` must be at most 1000000000");
        assert_eq!(parse_usd(1e9, "input_usd"), Ok(1_000_000_000_000_000));
        let price = PriceUsd { input_usd: 1.0, output_usd: 1.0, cache_read_usd: 2e9, cache_write_usd: -1.0 };
        assert_eq!(price.to_price(), Err(UsdError::TooLarge { field: "cache_read_usd" }));
    }
}
