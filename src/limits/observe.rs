//! What the usage limits did, counted into the metrics: refusals by level and reason, and what
//! settlements charged at each level. The features call these once their transaction has
//! committed. Only counts; never decides a call or reads the ledger.

use crate::core::metrics::Metrics;
use crate::domain::limits::{Level, Refusal};

/// What one settlement charged: (tokens, micro-dollars) at each level.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Charged {
    pub player: (i64, i64),
    pub project: (i64, i64),
    pub studio: (i64, i64),
}

impl Charged {
    /// Adds `charge` at `level`.
    pub fn add(&mut self, level: Level, charge: (i64, i64)) {
        let at = match level {
            Level::Player => &mut self.player,
            Level::Project => &mut self.project,
            Level::Studio => &mut self.studio,
        };
        *at = (at.0.saturating_add(charge.0), at.1.saturating_add(charge.1));
    }

    /// Counts the charge into `usage_spent_*_total`.
    pub fn record(&self, metrics: &Metrics) {
        spent(metrics, Level::Player, self.player);
        spent(metrics, Level::Project, self.project);
        spent(metrics, Level::Studio, self.studio);
    }
}

/// Counts `(tokens, micros)` charged at `level`.
pub fn spent(metrics: &Metrics, level: Level, (tokens, micros): (i64, i64)) {
    let level = level.as_str();
    metrics.usage_spent_tokens.with_label_values(&[level]).inc_by(u64::try_from(tokens).unwrap_or(0));
    metrics.usage_spent_micros.with_label_values(&[level]).inc_by(u64::try_from(micros).unwrap_or(0));
}

/// Counts a refusal into `usage_refused_total`.
pub fn refused(metrics: &Metrics, refusal: &Refusal) {
    metrics.usage_refused.with_label_values(&[refusal.level.as_str(), refusal.reason.as_str()]).inc();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::limits::RefusalReason;

    #[test]
    fn charges_and_refusals_land_on_their_labels() {
        let metrics = Metrics::new();
        let mut charged = Charged::default();
        charged.add(Level::Player, (10, 3));
        charged.add(Level::Studio, (10, 3));
        charged.add(Level::Studio, (5, 1));
        charged.record(&metrics);
        assert_eq!(metrics.usage_spent_tokens.with_label_values(&["player"]).get(), 10);
        assert_eq!(metrics.usage_spent_micros.with_label_values(&["studio"]).get(), 4);
        refused(&metrics, &Refusal::over(Level::Studio, "token"));
        refused(&metrics, &Refusal::no_price(Level::Player, "m"));
        assert_eq!(metrics.usage_refused.with_label_values(&["studio", "over_limit"]).get(), 1);
        assert_eq!(metrics.usage_refused.with_label_values(&["player", RefusalReason::UnknownPrice.as_str()]).get(), 1);
        let text = metrics.render();
        assert!(text.contains(r#"lorewire_usage_refused_total{level="project",reason="start_rate"} 0"#), "{text}");
    }
}
