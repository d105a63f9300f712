//! The upstreams' circuits and counters, and the choice of the next upstream to call
//! (PROTOCOL §7). Each upstream has its own [`CircuitBreaker`] actor, restored from its row the
//! first time a call or an admin asks for it, all on the arbiter the application started on;
//! its calls and failures are counted here since the process started. What the other processes
//! announce of a circuit is handed to this process's breaker of that upstream ([`Upstreams::adopt`]).
//!
//! Owns the circuits' addresses and the counters; never reads or writes a row itself (the
//! breaker persists its own state), never calls an upstream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use actix::prelude::*;

use super::circuit::{Adopt, CircuitBreaker, CircuitSettings};
use crate::core::clock::SharedClock;
use crate::core::metrics::Metrics;
use crate::core::process::ProcessId;
use crate::store::llm_config::CircuitRecord;
use crate::store::upstreams::UpstreamRow;
use crate::store::Store;

/// Every upstream's circuit and counters; cheap to clone (shared).
#[derive(Clone)]
pub struct Upstreams {
    inner: Arc<Inner>,
}

struct Inner {
    settings: CircuitSettings,
    clock: SharedClock,
    store: Store,
    metrics: Arc<Metrics>,
    origin: ProcessId,
    arbiter: ArbiterHandle,
    /// The first upstream's circuit (what `/admin/api/llm` shows).
    first: Addr<CircuitBreaker>,
    known: Mutex<HashMap<i64, Known>>,
}

struct Known {
    circuit: Addr<CircuitBreaker>,
    counters: Counters,
}

/// An upstream's calls and failed calls since this process started, and the time its
/// structured calls (content, moods) took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub calls: u64,
    pub failures: u64,
    timed: u64,
    took_micros: u64,
}

impl Counters {
    /// The mean time of its structured calls, in milliseconds (`None` before the first).
    pub fn latency_ms(&self) -> Option<f64> {
        (self.timed > 0).then(|| self.took_micros as f64 / self.timed as f64 / 1000.0)
    }
}

impl Upstreams {
    /// The circuits of the upstreams, the first's (`first_id`) already running as `first`; each
    /// announces its opening and closing as `origin`. Must be made on the arbiter the circuits
    /// should live on.
    pub fn new(
        settings: CircuitSettings,
        clock: SharedClock,
        store: Store,
        metrics: Arc<Metrics>,
        origin: ProcessId,
        first_id: i64,
        first: Addr<CircuitBreaker>,
    ) -> Self {
        let known = HashMap::from([(first_id, Known { circuit: first.clone(), counters: Counters::default() })]);
        Upstreams {
            inner: Arc::new(Inner {
                settings,
                clock,
                store,
                metrics,
                origin,
                arbiter: Arbiter::current(),
                first,
                known: Mutex::new(known),
            }),
        }
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Known>> {
        self.inner.known.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The circuit of `row`'s upstream, restored from the row when this process has not
    /// needed it yet.
    pub fn circuit(&self, row: &UpstreamRow) -> Addr<CircuitBreaker> {
        let mut known = self.known();
        let entry = known.entry(row.id).or_insert_with(|| {
            let Inner { settings, clock, store, metrics, origin, arbiter, .. } = &*self.inner;
            let breaker = CircuitBreaker::restore_upstream(
                row.id,
                *settings,
                &row.circuit(),
                clock.clone(),
                store.clone(),
                metrics.clone(),
            )
            .announcing(origin.clone());
            Known {
                circuit: CircuitBreaker::start_in_arbiter(arbiter, move |_| breaker),
                counters: Counters::default(),
            }
        });
        entry.circuit.clone()
    }

    /// Another process changed upstream `id`'s circuit to `record` (or it is what is stored):
    /// this process's breaker takes it on. An upstream not used here yet needs nothing: its
    /// breaker starts from the row.
    pub fn adopt(&self, id: i64, record: CircuitRecord) {
        if let Some(known) = self.known().get(&id) {
            known.circuit.do_send(Adopt(record));
        }
    }

    /// The first upstream's circuit.
    pub fn first(&self) -> &Addr<CircuitBreaker> {
        &self.inner.first
    }

    /// Forgets a removed upstream: its circuit stops.
    pub fn forget(&self, id: i64) {
        if let Some(known) = self.known().remove(&id) {
            known.circuit.do_send(crate::core::shutdown::Stop);
        }
    }

    /// Stops every circuit (the end of a graceful stop).
    pub fn stop_all(&self) {
        for known in self.known().values() {
            known.circuit.do_send(crate::core::shutdown::Stop);
        }
    }

    /// Counts one call to upstream `id` that ended with `outcome` (`ok`, or the failure's
    /// name): in its counters, `upstream_calls_total` and `upstream_calls_by_upstream_total`.
    pub fn call_ended(&self, id: i64, outcome: &str) {
        let metrics = &self.inner.metrics;
        metrics.upstream_calls.with_label_values(&[outcome]).inc();
        metrics.upstream_calls_by_upstream.with_label_values(&[&id.to_string(), outcome]).inc();
        if let Some(known) = self.known().get_mut(&id) {
            known.counters.calls += 1;
            known.counters.failures += u64::from(outcome != "ok");
        }
    }

    /// Counts the time one structured call to upstream `id` took (answered or not).
    pub fn timed(&self, id: i64, took: std::time::Duration) {
        if let Some(known) = self.known().get_mut(&id) {
            known.counters.timed += 1;
            known.counters.took_micros += u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        }
    }

    pub fn counters(&self, id: i64) -> Counters {
        self.known().get(&id).map(|k| k.counters).unwrap_or_default()
    }
}

/// Which of `candidates` (`(priority, weight)` each) to call: one of the lowest priority, with a
/// chance in proportion to its weight; `roll` is uniform in `[0, 1)`. `None` when there is none.
pub fn choose(candidates: &[(i32, i32)], roll: f64) -> Option<usize> {
    let tier = candidates.iter().map(|(priority, _)| *priority).min()?;
    let weight = |w: i32| f64::from(w.max(0));
    let in_tier = || candidates.iter().enumerate().filter(move |(_, (p, _))| *p == tier);
    let total: f64 = in_tier().map(|(_, (_, w))| weight(*w)).sum();
    if total <= 0.0 {
        return in_tier().map(|(i, _)| i).next();
    }
    let mut point = roll.clamp(0.0, 1.0) * total;
    let mut last = None;
    for (i, (_, w)) in in_tier() {
        last = Some(i);
        if point < weight(*w) {
            return Some(i);
        }
        point -= weight(*w);
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lowest_priority_takes_every_call() {
        let candidates = [(1, 100), (0, 1), (2, 100)];
        for roll in [0.0, 0.5, 0.999] {
            assert_eq!(choose(&candidates, roll), Some(1));
        }
        assert_eq!(choose(&[], 0.5), None);
    }

    #[test]
    fn weights_spread_a_thousand_choices_as_configured() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(25);
        let candidates = [(0, 1), (0, 3), (0, 6), (1, 50)];
        let mut chosen = [0u32; 4];
        for _ in 0..1000 {
            chosen[choose(&candidates, rng.random::<f64>()).unwrap()] += 1;
        }
        assert_eq!(chosen[3], 0, "a higher tier gets nothing while the lowest is usable");
        for (i, expected) in [(0, 100.0), (1, 300.0), (2, 600.0)] {
            let got = f64::from(chosen[i]);
            assert!(
                (got - expected).abs() <= expected * 0.2 + 15.0,
                "upstream {i}: {got} of 1000, expected ~{expected}"
            );
        }
    }

    #[test]
    fn every_roll_lands_on_a_candidate() {
        let candidates = [(0, 2), (0, 2)];
        assert_eq!(choose(&candidates, 0.0), Some(0));
        assert_eq!(choose(&candidates, 0.49), Some(0));
        assert_eq!(choose(&candidates, 0.5), Some(1));
        assert_eq!(choose(&candidates, 1.0), Some(1));
        assert_eq!(choose(&[(0, 0), (0, 0)], 0.7), Some(0), "weights all zero: the first");
    }
}
