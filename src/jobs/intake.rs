//! How new jobs reach the worker: woken to claim them ([`JobsAvailable`]), or, when it has a
//! free slot, claimed for it by the write that creates them and handed over ([`Intake`]).
//! The worker's slots are shared with those writes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use actix::prelude::*;
use prometheus::IntGauge;

use super::handler::{load_targets, Loaded, Loader};
use crate::core::process::ProcessId;
use crate::domain::jobs::JobKind;
use crate::store::jobs::JobRow;
use crate::store::DbConn;

/// New jobs were committed: claim what the concurrency limit allows.
#[derive(Message)]
#[rtype(result = "()")]
pub struct JobsAvailable;

/// A job a write claimed for this worker as it created it ([`Intake`]): run it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Claimed {
    pub job: JobRow,
    pub loaded: Option<Loaded>,
}

/// A worker's slots (`LOREWIRE_LLM_CONCURRENCY`), shared with the writes that claim their new
/// jobs themselves: a slot is busy from its reservation (by the worker's claim, or by an
/// [`Intake`]) to its job's end.
pub(super) struct Slots {
    pub(super) capacity: usize,
    busy: AtomicUsize,
    /// `busy` as `/metrics` shows it.
    gauge: IntGauge,
    /// The worker drains: no write claims for it any more.
    closed: AtomicBool,
}

impl Slots {
    pub(super) fn new(capacity: usize, gauge: IntGauge) -> Self {
        Slots { capacity, busy: AtomicUsize::new(0), gauge, closed: AtomicBool::new(false) }
    }

    /// Reserves up to `n` free slots; answers how many.
    pub(super) fn take(&self, n: usize) -> usize {
        let taken = self.busy.fetch_update(Ordering::AcqRel, Ordering::Acquire, |busy| {
            let free = self.capacity.saturating_sub(busy).min(n);
            (free > 0).then_some(busy + free)
        });
        let free = taken.map_or(0, |busy| self.capacity.saturating_sub(busy).min(n));
        self.gauge.add(free as i64);
        free
    }

    pub(super) fn give(&self, n: usize) {
        self.busy.fetch_sub(n, Ordering::AcqRel);
        self.gauge.sub(n as i64);
    }

    /// No write claims for the worker any more (it drains).
    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }
}

/// The door for writes that create jobs: when the worker has a free slot, the write claims its
/// new job for it in the same transaction and hands it over once committed, so the job starts
/// without a claim of its own (one write and two thread hand-offs fewer per job). With every
/// slot busy, or the worker draining, the job is queued and the worker woken as before: it then
/// waits its turn behind the jobs already due.
#[derive(Clone)]
pub struct Intake {
    claimed: Recipient<Claimed>,
    wake: Recipient<JobsAvailable>,
    slots: Arc<Slots>,
    claimer: Claimer,
}

impl Intake {
    pub(super) fn new(
        claimed: Recipient<Claimed>,
        wake: Recipient<JobsAvailable>,
        slots: Arc<Slots>,
        name: ProcessId,
        loaders: Arc<HashMap<JobKind, Loader>>,
    ) -> Self {
        Intake { claimed, wake, slots, claimer: Claimer { name, loaders } }
    }

    /// A slot for one new job, if one is free.
    pub fn reserve(&self) -> Option<Reservation> {
        if self.slots.closed.load(Ordering::Acquire) || self.slots.take(1) == 0 {
            return None;
        }
        Some(Reservation { intake: self.clone(), held: true })
    }

    /// Wakes the worker: jobs were queued without a slot.
    pub fn wake(&self) {
        self.wake.do_send(JobsAvailable);
    }
}

/// One reserved slot; given back when dropped unused.
pub struct Reservation {
    intake: Intake,
    held: bool,
}

impl Reservation {
    /// What the write needs to claim a job for the worker (`locked_by`, the loaders).
    pub fn claimer(&self) -> Claimer {
        self.intake.claimer.clone()
    }

    /// Hands the job the committed write claimed to the worker.
    pub fn start(mut self, job: JobRow, loaded: Option<Loaded>) {
        self.held = false;
        self.intake.claimed.do_send(Claimed { job, loaded });
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.held {
            self.intake.slots.give(1);
        }
    }
}

/// Claims inside a write, for the worker that reserved the slot.
#[derive(Clone)]
pub struct Claimer {
    name: ProcessId,
    loaders: Arc<HashMap<JobKind, Loader>>,
}

impl Claimer {
    /// The worker's name: the `locked_by` of the jobs claimed for it.
    pub fn worker(&self) -> &str {
        &self.name
    }

    /// What the loader of `job`'s kind reads of its target, in the caller's write ([`load_targets`]).
    pub fn load(&self, conn: &mut DbConn, job: &JobRow) -> Option<Loaded> {
        load_targets(conn, &self.loaders, std::slice::from_ref(job)).pop().flatten()
    }
}
