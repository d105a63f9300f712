//! A sliding-window rate limiter keyed by user: at most `count` accepted events in any window
//! of `per`. Refused attempts do not count. Time is passed in, so it is tested without sleeping.
//! Kept per process (several PostgreSQL processes each apply the limit to what they receive).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::core::config::ChatRate;

pub struct RateLimiter {
    count: usize,
    per: Duration,
    /// Times of the accepted events still inside the window, oldest first.
    hits: HashMap<i64, VecDeque<Instant>>,
    last_sweep: Option<Instant>,
}

impl RateLimiter {
    pub fn new(rate: ChatRate) -> Self {
        RateLimiter { count: rate.count.max(1) as usize, per: rate.per, hits: HashMap::new(), last_sweep: None }
    }

    /// Accepts (and counts) an event of `key` at `now`, or says how long until one would be accepted.
    pub fn check(&mut self, key: i64, now: Instant) -> Result<(), Duration> {
        self.sweep(now);
        let hits = self.hits.entry(key).or_default();
        while hits.front().is_some_and(|t| now.saturating_duration_since(*t) >= self.per) {
            hits.pop_front();
        }
        if hits.len() >= self.count {
            let oldest = *hits.front().expect("full window is not empty");
            return Err(self.per.saturating_sub(now.saturating_duration_since(oldest)));
        }
        hits.push_back(now);
        Ok(())
    }

    /// Forgets keys whose window has passed, at most once per window, so memory follows the
    /// active users only.
    fn sweep(&mut self, now: Instant) {
        if self.last_sweep.is_some_and(|last| now.saturating_duration_since(last) < self.per) {
            return;
        }
        self.last_sweep = Some(now);
        let per = self.per;
        self.hits.retain(|_, hits| hits.back().is_some_and(|t| now.saturating_duration_since(*t) < per));
    }

    /// Keys tracked now (tests).
    pub fn tracked(&self) -> usize {
        self.hits.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(count: u32, secs: u64) -> RateLimiter {
        RateLimiter::new(ChatRate { count, per: Duration::from_secs(secs) })
    }

    #[test]
    fn allows_count_per_window_then_refuses() {
        let mut l = limiter(3, 10);
        let t0 = Instant::now();
        for i in 0..3 {
            assert!(l.check(1, t0 + Duration::from_secs(i)).is_ok());
        }
        let wait = l.check(1, t0 + Duration::from_secs(3)).unwrap_err();
        assert_eq!(wait, Duration::from_secs(7));
        // Another user has a window of their own.
        assert!(l.check(2, t0 + Duration::from_secs(3)).is_ok());
        // Refused attempts did not count: the first slot frees at t0 + 10 s.
        assert!(l.check(1, t0 + Duration::from_secs(10)).is_ok());
        assert!(l.check(1, t0 + Duration::from_secs(10)).is_err());
    }

    #[test]
    fn forgets_idle_users() {
        let mut l = limiter(1, 1);
        let t0 = Instant::now();
        for user in 0..100 {
            l.check(user, t0).unwrap();
        }
        assert_eq!(l.tracked(), 100);
        l.check(1000, t0 + Duration::from_secs(2)).unwrap();
        assert_eq!(l.tracked(), 1);
    }
}
