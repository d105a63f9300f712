//! Which upstream an attempt of a run streams from, through `llm::route` like every call: one
//! this run has not failed on first, the model and price it streams at, and what its end tells
//! that upstream (its counters, its `last_error`, parked on a 401/403) and the next attempt.

use std::time::Duration;

use crate::core::clock::SharedClock;
use crate::domain::money::Price;
use crate::domain::upstream::CallFailure;
use crate::llm::route::{self, FailedOn, Picked};
use crate::llm::stream::StreamEnd;
use crate::llm::upstreams::Upstreams;
use crate::runs::RunErrorCode;
use crate::store::runs::RunRow;
use crate::store::upstreams::UpstreamRow;
use crate::store::{billing, Store, StoreResult};

/// How long a run's failed upstreams are remembered (a run's attempts are minutes apart at most).
const FAILED_ON_FOR: Duration = Duration::from_secs(15 * 60);

/// Every upstream's circuit and counters, and the upstreams each run failed on in this process.
pub(super) struct Routing {
    pub(super) upstreams: Upstreams,
    failed_on: FailedOn,
}

/// An attempt's upstream, with the model it streams and that model's price.
pub(super) struct Routed<'a> {
    pub(super) picked: Picked<'a>,
    pub(super) model: String,
    pub(super) price: Option<Price>,
}

impl Routing {
    pub(super) fn new(upstreams: Upstreams) -> Self {
        Routing { upstreams, failed_on: FailedOn::default() }
    }

    /// The upstream for the next attempt of `run` (`price`: its admitted model's), or why none
    /// permits a call. A run keeps the model it was admitted with on the first upstream;
    /// another streams its own, priced as its own (as the admitted one when it has no price).
    pub(super) async fn next<'a>(
        &self,
        store: &Store,
        rows: &'a [UpstreamRow],
        run: &RunRow,
        price: Option<Price>,
    ) -> StoreResult<Result<Routed<'a>, CallFailure>> {
        let picked = route::pick_avoiding(&self.upstreams, rows, &self.failed_on.of(run.id), &run.run_id).await;
        let picked = match picked {
            Ok(picked) => picked,
            Err(refusal) => return Ok(Err(refusal)),
        };
        let model = if picked.row.is_first() { run.model.clone() } else { picked.row.model.clone() };
        let price = if model == run.model {
            price
        } else {
            let priced = model.clone();
            store.run(move |conn| billing::price(conn, &priced)).await?.or(price)
        };
        Ok(Ok(Routed { picked, model, price }))
    }

    /// Remembers how the attempt of run `run_pk` on `upstream` ended: any end but a finished or
    /// cancelled stream sends the run's next attempt elsewhere.
    pub(super) fn ended(&self, run_pk: i64, upstream: i64, end: &StreamEnd) {
        let failed = !matches!(end, StreamEnd::Finished | StreamEnd::Cancelled);
        self.failed_on.note(run_pk, failed.then_some(upstream));
    }

    /// Whether run `run_pk`'s next attempt can go to an upstream it has not failed on (then it
    /// does not wait for the backoff).
    pub(super) fn elsewhere(&self, rows: &[UpstreamRow], run_pk: i64) -> bool {
        route::callable(rows) > self.failed_on.of(run_pk).len()
    }

    /// Counts an answered call on `upstream` and clears its last error.
    pub(super) async fn answered(&self, store: &Store, clock: &SharedClock, upstream: &UpstreamRow) {
        self.upstreams.call_ended(upstream.id, "ok");
        if upstream.last_error.is_some() || upstream.parked.is_some() {
            route::record(store, clock, upstream.id, None, None).await;
        }
    }

    /// Counts a failed call on `upstream` and records why (`detail` redacted already).
    pub(super) async fn failed(
        &self,
        store: &Store,
        clock: &SharedClock,
        upstream: i64,
        code: RunErrorCode,
        detail: &str,
    ) {
        self.upstreams.call_ended(upstream, &code.to_string());
        let parked_by = matches!(code, RunErrorCode::ApiError(401 | 403)).then(|| code.to_string());
        route::record(store, clock, upstream, Some(format!("{code}: {detail}")), parked_by).await;
    }

    pub(super) fn tick(&self) {
        self.failed_on.forget_older_than(FAILED_ON_FOR);
    }
}
