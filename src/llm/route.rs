//! Which upstream takes the next call (PROTOCOL §7), for structured calls and streamed runs
//! alike: the lowest `priority` with a usable upstream (enabled, with a key or a server of its
//! own, its circuit permitting: not open, not inside a `retry-after`; not parked), chosen by
//! `weight` within it. Also where an upstream's failure is recorded (its `last_error`, parked
//! on a 401/403) the same way for both.
//!
//! Asks the circuits for a permit and nothing else; never calls an upstream.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use actix::Addr;

use super::circuit::{Acquire, CircuitBreaker, Permit, Refusal};
use super::credentials::{Credentials, NoCredentials};
use super::upstreams::{choose, Upstreams};
use crate::core::clock::SharedClock;
use crate::domain::upstream::{CallFailure, UpstreamFailure};
use crate::store::upstreams::{self, UpstreamRow};
use crate::store::Store;

/// The upstream chosen, with its permit: `probe` must be reported to `circuit`.
pub struct Picked<'a> {
    pub row: &'a UpstreamRow,
    pub credentials: Credentials,
    pub circuit: Addr<CircuitBreaker>,
    pub probe: bool,
}

/// The usable upstream to call next among `rows`, leaving out `avoid` (those this call tried);
/// or why none can be called: `CircuitOpen` if a circuit refused, else `RateLimited` if a
/// `retry-after` did, else `NoConfig`.
pub async fn pick<'a>(
    circuits: &Upstreams,
    rows: &'a [UpstreamRow],
    avoid: &[i64],
    what: &str,
) -> Result<Picked<'a>, CallFailure> {
    let mut left: Vec<&UpstreamRow> = rows.iter().filter(|row| row.enabled && !avoid.contains(&row.id)).collect();
    let mut untried = CallFailure::NoConfig;
    // A parked upstream (its key or URL was refused) is not called until it is changed or its
    // circuit reset; none left to try then is `circuit_open`, as for an open circuit.
    if left.iter().any(|row| row.parked.is_some()) {
        left.retain(|row| row.parked.is_none());
        untried = CallFailure::CircuitOpen;
    }
    loop {
        let tiers: Vec<(i32, i32)> = left.iter().map(|row| (row.priority, row.weight)).collect();
        let Some(chosen) = choose(&tiers, rand::random::<f64>()) else { return Err(untried) };
        let row = left.remove(chosen);
        let credentials = match super::credentials::credentials(&row.config()) {
            Ok(credentials) => credentials,
            Err(why) => {
                if let NoCredentials::UnknownProvider(_) = why {
                    tracing::warn!(call = what, upstream = row.id, error = %why,
                        "no upstream call: the stored settings cannot be used");
                }
                continue;
            }
        };
        let circuit = circuits.circuit(row);
        match circuit.send(Acquire).await {
            Ok(Permit::Call { probe }) => return Ok(Picked { row, credentials, circuit, probe }),
            Ok(Permit::Refuse(Refusal::CircuitOpen)) | Err(_) => untried = CallFailure::CircuitOpen,
            Ok(Permit::Refuse(Refusal::RateLimited)) if untried != CallFailure::CircuitOpen => {
                untried = UpstreamFailure::RateLimited.into();
            }
            Ok(Permit::Refuse(Refusal::RateLimited)) => {}
        }
    }
}

/// [`pick`], leaving out `avoid` while another upstream can be called, else among them all.
pub async fn pick_avoiding<'a>(
    circuits: &Upstreams,
    rows: &'a [UpstreamRow],
    avoid: &[i64],
    what: &str,
) -> Result<Picked<'a>, CallFailure> {
    match pick(circuits, rows, avoid, what).await {
        Err(_) if !avoid.is_empty() => pick(circuits, rows, &[], what).await,
        picked => picked,
    }
}

/// The upstreams each of a set of calls (a run's attempts, by the run's key) failed on, so the
/// next goes elsewhere; held by one actor (not shared between threads).
#[derive(Default)]
pub struct FailedOn {
    failed: RefCell<HashMap<i64, (Vec<i64>, Instant)>>,
}

impl FailedOn {
    /// Remembers that `key`'s call failed on upstream `upstream` (`None`: not on its side).
    pub fn note(&self, key: i64, upstream: Option<i64>) {
        let Some(id) = upstream else { return };
        let mut failed = self.failed.borrow_mut();
        let (ids, since) = failed.entry(key).or_insert_with(|| (Vec::new(), Instant::now()));
        if !ids.contains(&id) {
            ids.push(id);
        }
        *since = Instant::now();
    }

    /// The upstreams `key`'s calls failed on.
    pub fn of(&self, key: i64) -> Vec<i64> {
        self.failed.borrow().get(&key).map(|(ids, _)| ids.clone()).unwrap_or_default()
    }

    /// Forgets the keys that failed last longer than `keep` ago.
    pub fn forget_older_than(&self, keep: Duration) {
        self.failed.borrow_mut().retain(|_, (_, since)| since.elapsed() < keep);
    }
}

/// How many upstreams could make a call (enabled, with a key or a server of their own).
pub fn callable(rows: &[UpstreamRow]) -> usize {
    rows.iter().filter(|row| row.enabled && super::credentials::credentials(&row.config()).is_ok()).count()
}

/// Why no upstream can make a call (every enabled one lacks a key, or names a provider this
/// version does not speak): the first's reason; `None` when one can.
pub fn no_upstream(rows: &[UpstreamRow]) -> Option<NoCredentials> {
    if callable(rows) > 0 {
        return None;
    }
    let first = rows.iter().find(|row| row.is_first());
    Some(first.and_then(|row| super::credentials::credentials(&row.config()).err()).unwrap_or(NoCredentials::NoKey))
}

/// Whether `failure` parks the upstream that answered it (a 401 or 403: its key or URL is wrong).
pub fn parks(failure: CallFailure) -> bool {
    matches!(failure, CallFailure::Upstream(UpstreamFailure::ApiError(401 | 403)))
}

/// Stores upstream `id`'s last error (`None` clears it, and unparks it) and parks it for the
/// failure named by `parked_by` (a 401 or 403: see [`parks`]); `error` has been through
/// [`redact`](super::redact::redact) already.
pub async fn record(store: &Store, clock: &SharedClock, id: i64, error: Option<String>, parked_by: Option<String>) {
    let now = clock.now_naive();
    let parked = match (&error, parked_by) {
        (None, _) => Some(None),
        (Some(_), Some(failure)) => Some(Some(failure)),
        (Some(_), None) => None,
    };
    let saved = store
        .write(move |conn| {
            upstreams::set_last_error(conn, id, error.as_deref(), now)?;
            match &parked {
                Some(parked) => upstreams::set_parked(conn, id, parked.as_deref(), now),
                None => Ok(()),
            }
        })
        .await;
    if let Err(e) = saved {
        tracing::error!(upstream = id, error = %e, "could not record the last upstream error");
    }
}
