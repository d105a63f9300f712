//! Rates as settings take them (`COUNT/WINDOW`, e.g. `5/10s`) and a sliding-window limiter
//! keyed by anything (a user, a client address): at most `count` accepted events in any window
//! of `per`. Refused attempts do not count. Time is passed in, so it is tested without sleeping.
//! Kept per process; the backplane keeps the windows every process shares when it can.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

/// `COUNT/WINDOW`, e.g. `5/10s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub per: Duration,
}

/// A rate that is not `COUNT/WINDOW` with both above zero; holds the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a rate like 5/10s")]
pub struct BadRate(pub String);

impl std::str::FromStr for Rate {
    type Err = BadRate;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadRate(s.to_owned());
        let (count, window) = s.split_once('/').ok_or_else(bad)?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        let window = window.trim();
        let split = window.find(|c: char| !c.is_ascii_digit()).unwrap_or(window.len());
        let (n, unit) = window.split_at(split);
        let n: u64 = if n.is_empty() { 1 } else { n.parse().map_err(|_| bad())? };
        let per = match unit {
            "ms" => Duration::from_millis(n),
            "s" | "" => Duration::from_secs(n),
            "m" => Duration::from_secs(n * 60),
            "h" => Duration::from_secs(n * 3600),
            _ => return Err(bad()),
        };
        if count == 0 || n == 0 {
            return Err(bad());
        }
        Ok(Rate { count, per })
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = self.per.as_millis();
        match ms {
            _ if ms.is_multiple_of(3_600_000) => write!(f, "{}/{}h", self.count, ms / 3_600_000),
            _ if ms.is_multiple_of(60_000) => write!(f, "{}/{}m", self.count, ms / 60_000),
            _ if ms.is_multiple_of(1000) => write!(f, "{}/{}s", self.count, ms / 1000),
            _ => write!(f, "{}/{}ms", self.count, ms),
        }
    }
}

/// The accepted events of each key still inside the window.
pub struct RateLimiter<K = i64> {
    count: usize,
    per: Duration,
    /// Times of the accepted events still inside the window, oldest first.
    hits: HashMap<K, VecDeque<Instant>>,
    last_sweep: Option<Instant>,
}

impl<K: Hash + Eq> RateLimiter<K> {
    pub fn new(rate: Rate) -> Self {
        RateLimiter { count: rate.count.max(1) as usize, per: rate.per, hits: HashMap::new(), last_sweep: None }
    }

    /// Accepts (and counts) an event of `key` at `now`, or says how long until one would be accepted.
    pub fn check(&mut self, key: K, now: Instant) -> Result<(), Duration> {
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

    /// Takes the last accepted event of `key` back (it turned out not to count).
    pub fn forget_last(&mut self, key: &K) {
        if let Some(hits) = self.hits.get_mut(key) {
            hits.pop_back();
        }
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

    #[test]
    fn rates_parse_count_and_window_and_print_back() {
        assert_eq!("5/10s".parse::<Rate>().unwrap(), Rate { count: 5, per: Duration::from_secs(10) });
        assert_eq!("30/1m".parse::<Rate>().unwrap().per, Duration::from_secs(60));
        assert_eq!("60/1h".parse::<Rate>().unwrap().per, Duration::from_secs(3600));
        assert_eq!("2/500ms".parse::<Rate>().unwrap().per, Duration::from_millis(500));
        for bad in ["0/10s", "five/10s", "5/10x", "0/5ms", "5/0ms", "5", "5/0s"] {
            assert_eq!(bad.parse::<Rate>(), Err(BadRate(bad.into())));
        }
        assert_eq!(BadRate("5/0s".into()).to_string(), "`5/0s` is not a rate like 5/10s");
        for s in ["5/10s", "60/1m", "60/1h", "2/500ms"] {
            assert_eq!(s.parse::<Rate>().unwrap().to_string(), s);
        }
    }

    fn limiter(count: u32, secs: u64) -> RateLimiter {
        RateLimiter::new(Rate { count, per: Duration::from_secs(secs) })
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
