//! The upstreams' circuits as the other processes change them, heard on the backplane: an
//! upstream's circuit opened or closed elsewhere is opened or closed here too (PROTOCOL §7).
//! After events were lost, every upstream's stored circuit is read back and taken on. Never writes.

use futures_util::future::LocalBoxFuture;
use futures_util::FutureExt;

use super::upstreams::Upstreams;
use crate::backplane::{Event, Family, Sink};
use crate::store::llm_config::CircuitRecord;
use crate::store::{upstreams, Store};

pub struct CircuitsSink {
    pub store: Store,
    pub upstreams: Upstreams,
}

impl Sink for CircuitsSink {
    fn family(&self) -> Family {
        Family::Circuits
    }

    fn deliver(&self, event: Event) -> LocalBoxFuture<'static, ()> {
        if let Event::Circuit { upstream, state, opened_at, resets_at, .. } = event {
            let record = CircuitRecord { state, failures: "[]".into(), opened_at, resets_at, retry_after_until: None };
            self.upstreams.adopt(upstream, record);
        }
        async {}.boxed_local()
    }

    /// Openings and closings announced meanwhile were lost: every upstream's stored circuit
    /// is taken on.
    fn reconnected(&self) -> LocalBoxFuture<'static, ()> {
        let (store, known) = (self.store.clone(), self.upstreams.clone());
        async move {
            match store.run(upstreams::all).await {
                Ok(rows) => rows.iter().for_each(|row| known.adopt(row.id, row.circuit())),
                Err(e) => tracing::error!(error = %e, "could not read the upstreams' circuits"),
            }
        }
        .boxed_local()
    }
}
