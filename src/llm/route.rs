//! Which upstream takes the next call (PROTOCOL §7), for structured calls and streamed runs
//! alike: the lowest `priority` with a usable upstream (enabled, with a key or a server of its
//! own, its circuit permitting: not open, not inside a `retry-after`), chosen by `weight`
//! within it; a parked upstream only when no other is usable. Also where an upstream's failure
//! is recorded (its `last_error`, parked on a 401/403) the same way for both.
//!
//! Asks the circuits for a permit and nothing else; never calls an upstream.

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
    loop {
        let unparked: Vec<usize> = (0..left.len()).filter(|i| left[*i].parked.is_none()).collect();
        // A parked upstream is the last resort: tried only when no other is usable.
        let pool = if unparked.is_empty() { (0..left.len()).collect() } else { unparked };
        let tiers: Vec<(i32, i32)> = pool.iter().map(|i| (left[*i].priority, left[*i].weight)).collect();
        let Some(chosen) = choose(&tiers, rand::random::<f64>()) else { return Err(untried) };
        let row = left.remove(pool[chosen]);
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

/// Stores upstream `id`'s last error (`None` clears it, and unparks it) and parks it for
/// `parked_by` when that failure parks; `error` has been through
/// [`redact`](super::redact::redact) already.
pub async fn record(
    store: &Store,
    clock: &SharedClock,
    id: i64,
    error: Option<String>,
    parked_by: Option<CallFailure>,
) {
    let now = clock.now_naive();
    let parked = match (&error, parked_by) {
        (None, _) => Some(None),
        (Some(_), Some(failure)) if parks(failure) => Some(Some(failure.to_string())),
        _ => None,
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
