//! Time as a dependency: the circuit breaker and the job queue read the clock through
//! [`Clock`] so tests can move time forward without sleeping. Never sleeps or schedules.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, NaiveDateTime, SubsecRound, Utc};

/// Times are kept to the microsecond, the precision both databases store.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
    fn now_naive(&self) -> NaiveDateTime {
        self.now().naive_utc()
    }
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now().trunc_subsecs(6)
    }
}

/// A clock that moves only when told to (tests).
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Mutex<DateTime<Utc>>>);

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> Self {
        ManualClock(Arc::new(Mutex::new(start.trunc_subsecs(6))))
    }
    pub fn advance(&self, by: std::time::Duration) {
        let mut now = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *now = (*now + chrono::Duration::from_std(by).expect("duration in range")).trunc_subsecs(6);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub type SharedClock = Arc<dyn Clock>;

/// A std duration as chrono's, for arithmetic on stored times; one too long for chrono is
/// as good as forever.
pub fn to_chrono(d: std::time::Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}
