//! The per-player start rate (`LOREWIRE_PLAYER_LLM_RATE`, stored as `player_llm_rate`): new
//! content items, regenerations and runs one player may start in a sliding window, shared by
//! every process through the backplane when it keeps windows, else counted by this process.
//! The caller decides what counts (joins and cached answers do not).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::backplane::Backplane;
use crate::core::metrics::Metrics;
use crate::core::rate_limit::{Rate, RateLimiter};
use crate::domain::limits::{Level, Refusal, RefusalReason};

pub struct StartRate {
    backplane: Arc<dyn Backplane>,
    /// Where refusals are counted.
    metrics: Arc<Metrics>,
    /// This process's windows, for the rate they were made with.
    local: Mutex<Option<(Rate, RateLimiter)>>,
}

impl StartRate {
    pub fn new(backplane: Arc<dyn Backplane>, metrics: Arc<Metrics>) -> Self {
        StartRate { backplane, metrics, local: Mutex::new(None) }
    }

    /// Counts one start of `user_id` under `rate`; a refusal (level player) says how long to wait.
    pub async fn admit(&self, user_id: i64, rate: Rate) -> Result<(), Refusal> {
        let shared = self.backplane.admit(format!("llm:{user_id}"), rate.count, rate.per).await;
        let allowed = match shared {
            Some(allowed) => allowed,
            None => self.local_check(user_id, rate),
        };
        allowed.map_err(|wait| {
            let refusal = Refusal {
                level: Level::Player,
                reason: RefusalReason::StartRate,
                message: format!(
                    "too many new items and runs ({rate}); try again in {:.1} s",
                    wait.as_secs_f64().max(0.1)
                ),
            };
            super::observe::refused(&self.metrics, &refusal);
            refusal
        })
    }

    fn local_check(&self, user_id: i64, rate: Rate) -> Result<(), Duration> {
        let mut local = self.local.lock().unwrap_or_else(|e| e.into_inner());
        if local.as_ref().is_none_or(|(r, _)| *r != rate) {
            *local = Some((rate, RateLimiter::new(rate)));
        }
        let (_, limiter) = local.as_mut().expect("set above");
        limiter.check(user_id, Instant::now())
    }
}
