//! The per-player start rate (`LOREWIRE_PLAYER_LLM_RATE`, stored as `player_llm_rate`): new
//! content items, regenerations and runs one player may start in a sliding window, shared by
//! every process through the backplane when it keeps windows, else counted by this process.
//! The caller decides what counts (joins and cached answers do not): a start counted before
//! the caller knew is given back when nothing started after all.
//!
//! Keeps the stored rate as last read for a second, so a request need not read it: a change
//! made on this process applies at once ([`StartRate::remember`]), one made on another within
//! a second.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::backplane::Backplane;
use crate::core::metrics::Metrics;
use crate::core::rate_limit::{Rate, RateLimiter};
use crate::domain::limits::{Level, Refusal, RefusalReason};

/// How long the stored rate as last read is used before it is read again.
const STORED_FOR: Duration = Duration::from_secs(1);

pub struct StartRate {
    backplane: Arc<dyn Backplane>,
    /// Where refusals are counted.
    metrics: Arc<Metrics>,
    /// This process's windows, for the rate they were made with.
    local: Mutex<Option<(Rate, RateLimiter)>>,
    /// The stored rate and when it was read.
    stored: Mutex<Option<(Instant, Rate)>>,
}

/// One start counted, to be given back ([`StartRate::give_back`]) if nothing started.
#[derive(Debug)]
#[must_use]
pub struct Counted {
    user_id: i64,
    /// Its name in the backplane's shared window; `None`: counted by this process.
    member: Option<String>,
}

impl StartRate {
    pub fn new(backplane: Arc<dyn Backplane>, metrics: Arc<Metrics>) -> Self {
        StartRate { backplane, metrics, local: Mutex::new(None), stored: Mutex::new(None) }
    }

    /// The stored rate, if it was read (or set here) within the last second.
    pub fn known(&self) -> Option<Rate> {
        let stored = self.stored.lock().unwrap_or_else(|e| e.into_inner());
        stored.filter(|(at, _)| at.elapsed() < STORED_FOR).map(|(_, rate)| rate)
    }

    /// The stored rate as just read or changed.
    pub fn remember(&self, rate: Rate) {
        *self.stored.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), rate));
    }

    /// Counts one start of `user_id` under `rate`; a refusal (level player, not yet counted in
    /// the metrics: see [`StartRate::refused`]) says how long to wait.
    pub async fn admit(&self, user_id: i64, rate: Rate) -> Result<Counted, Refusal> {
        let member = crate::domain::players::new_token();
        let shared = self.backplane.admit_as(key(user_id), member.clone(), rate.count, rate.per).await;
        let (allowed, member) = match shared {
            Some(allowed) => (allowed, Some(member)),
            None => (self.local_check(user_id, rate), None),
        };
        match allowed {
            Ok(()) => Ok(Counted { user_id, member }),
            Err(wait) => Err(Refusal {
                level: Level::Player,
                reason: RefusalReason::StartRate,
                message: format!(
                    "too many new items and runs ({rate}); try again in {:.1} s",
                    wait.as_secs_f64().max(0.1)
                ),
            }),
        }
    }

    /// A refusal of [`StartRate::admit`] the caller gives its client (counted).
    pub fn refused(&self, refusal: Refusal) -> Refusal {
        super::observe::refused(&self.metrics, &refusal);
        refusal
    }

    /// Takes a counted start back: the request started nothing.
    pub fn give_back(&self, counted: Counted) {
        match counted.member {
            Some(member) => self.backplane.forget(key(counted.user_id), member),
            None => {
                let mut local = self.local.lock().unwrap_or_else(|e| e.into_inner());
                if let Some((_, limiter)) = local.as_mut() {
                    limiter.forget_last(&counted.user_id);
                }
            }
        }
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

/// A player's window in the backplane.
fn key(user_id: i64) -> String {
    format!("llm:{user_id}")
}
