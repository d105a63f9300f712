//! The job worker actor: claims due jobs (at most `LOREWIRE_LLM_CONCURRENCY` in flight), hands
//! each to the handler registered for its kind, renews the leases of the jobs it runs, takes
//! over jobs whose worker stopped, and hands jobs back at shutdown. A write that creates a job
//! while a slot is free may claim it for the worker itself ([`Intake`]): the slots are shared.
//!
//! A failure on lorewire's side (a store error, a corrupt row) is retried with the same backoff
//! as an upstream failure and counts against `LOREWIRE_MAX_ATTEMPTS`; after the last attempt the
//! handler gives the target its final state, and a job even that fails for is buried (kept,
//! `dead`, never claimed again), so no job loops. Never holds a DB connection while a handler
//! runs, and never knows what a job does.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use rand::Rng;

use super::handler::{Claim, JobHandler, Loaded, Loader, Outcome};
use crate::core::clock::SharedClock;
use crate::core::config::Config;
use crate::core::metrics::Metrics;
use crate::store::jobs::JobKind;
use crate::store::jobs::{self, JobRow};
use crate::store::{write_tx, DbConn, Store, StoreError, StoreResult};

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

/// Stop claiming (shutdown); answers the number of jobs still in flight.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct Drain;

/// Put the jobs this worker still holds back in the queue (end of shutdown); the attempts they
/// were on are given back.
#[derive(Message)]
#[rtype(result = "Result<usize, StoreError>")]
pub struct ReleaseJobs;

/// Retry `n` (1, 2, ...) waits a random time in [0.5, 1] x base x 2^(n-1).
pub fn backoff(base: Duration, n: u32) -> Duration {
    let full = base.saturating_mul(2u32.saturating_pow(n.saturating_sub(1)));
    full.mul_f64(rand::rng().random_range(0.5..=1.0))
}

fn chrono_dur(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// A worker's slots (`LOREWIRE_LLM_CONCURRENCY`), shared with the writes that claim their new
/// jobs themselves: a slot is busy from its reservation (by the worker's claim, or by an
/// [`Intake`]) to its job's end.
struct Slots {
    capacity: usize,
    busy: AtomicUsize,
    /// The worker drains: no write claims for it any more.
    closed: AtomicBool,
}

impl Slots {
    /// Reserves up to `n` free slots; answers how many.
    fn take(&self, n: usize) -> usize {
        let taken = self.busy.fetch_update(Ordering::AcqRel, Ordering::Acquire, |busy| {
            let free = self.capacity.saturating_sub(busy).min(n);
            (free > 0).then_some(busy + free)
        });
        taken.map_or(0, |busy| self.capacity.saturating_sub(busy).min(n))
    }

    fn give(&self, n: usize) {
        self.busy.fetch_sub(n, Ordering::AcqRel);
    }
}

/// The door for writes that create jobs: when the worker has a free slot, the write claims its
/// new job for it in the same transaction and hands it over once committed, so the job starts
/// without a claim of its own (one write and two thread hand-offs fewer per job). With every
/// slot busy, or the worker draining, the job is queued and the worker woken as before: it then
/// waits its turn behind the jobs already due.
#[derive(Clone)]
pub struct Intake {
    worker: Addr<JobWorker>,
    slots: Arc<Slots>,
    name: Arc<str>,
    loaders: Arc<HashMap<JobKind, Loader>>,
}

impl Intake {
    /// A slot for one new job, if one is free.
    pub fn reserve(&self) -> Option<Reservation> {
        if self.slots.closed.load(Ordering::Acquire) || self.slots.take(1) == 0 {
            return None;
        }
        Some(Reservation { intake: self.clone(), held: true })
    }

    /// Wakes the worker: jobs were queued without a slot.
    pub fn wake(&self) {
        self.worker.do_send(JobsAvailable);
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
        Claimer { name: self.intake.name.clone(), loaders: self.intake.loaders.clone() }
    }

    /// Hands the job the committed write claimed to the worker.
    pub fn start(mut self, job: JobRow, loaded: Option<Loaded>) {
        self.held = false;
        self.intake.worker.do_send(Claimed { job, loaded });
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
    name: Arc<str>,
    loaders: Arc<HashMap<JobKind, Loader>>,
}

impl Claimer {
    /// The worker's name: the `locked_by` of the jobs claimed for it.
    pub fn worker(&self) -> &str {
        &self.name
    }

    /// What the loader of `job`'s kind reads of its target, in the caller's write ([`load`]).
    pub fn load(&self, conn: &mut DbConn, job: &JobRow) -> Option<Loaded> {
        load(conn, &self.loaders, std::slice::from_ref(job)).pop().flatten()
    }
}

pub struct JobWorker {
    store: Store,
    clock: SharedClock,
    metrics: Arc<Metrics>,
    /// Names this worker in job leases (`locked_by`).
    name: Arc<str>,
    concurrency: usize,
    lease: Duration,
    poll: Duration,
    retry_base: Duration,
    max_attempts: u32,
    handlers: HashMap<JobKind, Rc<dyn JobHandler>>,
    /// The handlers' loaders: what a claim reads of each job's target.
    loaders: Arc<HashMap<JobKind, Loader>>,
    /// Jobs this worker is running now: the only ones whose lease it renews.
    in_flight: HashSet<i64>,
    /// Its slots, reserved by its claims and by the writes that claim for it.
    slots: Arc<Slots>,
    claiming: bool,
    claim_again: bool,
    /// Due jobs may be waiting for a free slot: the last claim filled every slot it could
    /// (or failed, or there was none free). Only then does a job's end look for more at once;
    /// otherwise new jobs announce themselves (`JobsAvailable`) and the poll finds the rest.
    saturated: bool,
    draining: bool,
}

impl JobWorker {
    pub fn new(store: Store, clock: SharedClock, metrics: Arc<Metrics>, config: &Config, name: Arc<str>) -> Self {
        JobWorker {
            store,
            clock,
            metrics,
            name,
            concurrency: config.llm_concurrency,
            lease: config.job_lease,
            poll: config.job_poll,
            retry_base: config.retry_base,
            max_attempts: config.max_attempts.max(1),
            handlers: HashMap::new(),
            loaders: Arc::default(),
            in_flight: HashSet::new(),
            slots: Arc::new(Slots {
                capacity: config.llm_concurrency,
                busy: AtomicUsize::new(0),
                closed: AtomicBool::new(false),
            }),
            claiming: false,
            claim_again: false,
            saturated: true,
            draining: false,
        }
    }

    /// Runs the jobs of `handler.kind()` with `handler` (the last one registered for a kind wins).
    pub fn register(mut self, handler: impl JobHandler + 'static) -> Self {
        let loaders = Arc::make_mut(&mut self.loaders);
        match handler.loader() {
            Some(loader) => loaders.insert(handler.kind(), loader),
            None => loaders.remove(&handler.kind()),
        };
        self.handlers.insert(handler.kind(), Rc::new(handler));
        self
    }

    /// Starts the worker; answers its address and the door for writes that create jobs.
    pub fn start_with_intake(self) -> (Addr<JobWorker>, Intake) {
        let (slots, name, loaders) = (self.slots.clone(), self.name.clone(), self.loaders.clone());
        let worker = self.start();
        (worker.clone(), Intake { worker, slots, name, loaders })
    }

    /// Claims as many due jobs as there are free slots, and starts them.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        if self.draining {
            return;
        }
        if self.claiming {
            self.claim_again = true;
            return;
        }
        let free = self.slots.take(self.concurrency.min(64));
        if free == 0 {
            self.saturated = true;
            return;
        }
        self.claiming = true;
        let limit = free as i64;
        let name = self.name.clone();
        let now = self.clock.now_naive();
        let store = self.store.clone();
        let loaders = self.loaders.clone();
        ctx.spawn(
            async move { store.write(move |conn| claim(conn, &name, limit, now, &loaders)).await }
                .into_actor(self)
                .map(move |claimed, act, ctx| {
                    act.claiming = false;
                    let claimed = match claimed {
                        Ok(claimed) => claimed,
                        Err(e) => {
                            act.slots.give(free);
                            act.saturated = true;
                            tracing::error!(error = %e, "could not claim jobs");
                            return;
                        }
                    };
                    let full = claimed.len() as i64 == limit;
                    act.slots.give(free - claimed.len());
                    act.saturated = full;
                    for (job, loaded) in claimed {
                        act.start(job, loaded, ctx);
                    }
                    if full || std::mem::take(&mut act.claim_again) {
                        act.pump(ctx);
                    }
                }),
        );
    }

    /// Runs `job` in a slot already reserved for it.
    fn start(&mut self, job: JobRow, loaded: Option<Loaded>, ctx: &mut Context<Self>) {
        self.in_flight.insert(job.id);
        self.metrics.jobs_claimed.inc();
        let handler = job.job_kind().ok().and_then(|kind| self.handlers.get(&kind).cloned());
        let claim = Claim {
            job_id: job.id,
            target_id: job.target_id,
            attempt: u32::try_from(job.attempts).unwrap_or(0),
            max_attempts: self.max_attempts,
            worker: self.name.clone(),
            loaded,
        };
        let queue = Queue { store: self.store.clone(), clock: self.clock.clone(), retry_base: self.retry_base };
        let job_id = job.id;
        ctx.spawn(queue.process(handler, claim, job.kind).into_actor(self).map(move |again_in, act, ctx| {
            act.in_flight.remove(&job_id);
            act.slots.give(1);
            if let Some(delay) = again_in {
                // A job put back for later: look again when it is due (the poll is slower).
                ctx.run_later(delay, |act, ctx| act.pump(ctx));
            }
            if act.saturated {
                act.pump(ctx);
            }
        }));
    }

    /// Renews this worker's leases and takes over jobs whose worker died.
    fn maintain(&mut self, ctx: &mut Context<Self>) {
        for handler in self.handlers.values() {
            handler.tick();
        }
        let store = self.store.clone();
        let name = self.name.clone();
        let now = self.clock.now_naive();
        let lease = chrono::Duration::from_std(self.lease).unwrap_or(chrono::Duration::seconds(15));
        let running: Vec<i64> = self.in_flight.iter().copied().collect();
        ctx.spawn(
            async move {
                store
                    .write(move |conn| {
                        jobs::renew(conn, &name, &running, now)?;
                        jobs::reclaim_stale(conn, now - lease, now)
                    })
                    .await
            }
            .into_actor(self)
            .map(|result, act, ctx| match result {
                Ok(0) => {}
                Ok(n) => {
                    tracing::warn!(jobs = n, "took over jobs whose worker stopped");
                    act.pump(ctx);
                }
                Err(e) => tracing::error!(error = %e, "could not renew job leases"),
            }),
        );
    }
}

/// Claims up to `limit` due jobs for `worker` ([`jobs::claim`]) and reads their targets with the
/// `loaders` of their kinds, in the caller's write: each job with what its loader read. When a
/// read fails, the jobs are claimed all the same, with nothing loaded.
pub fn claim(
    conn: &mut DbConn,
    worker: &str,
    limit: i64,
    now: chrono::NaiveDateTime,
    loaders: &HashMap<JobKind, Loader>,
) -> StoreResult<Vec<(JobRow, Option<Loaded>)>> {
    let claimed = jobs::claim(conn, worker, limit, now)?;
    let loaded = load(conn, loaders, &claimed);
    Ok(claimed.into_iter().zip(loaded).collect())
}

/// What each claimed job's loader reads, in one savepoint (a failed read leaves the claim's
/// transaction as it was, on PostgreSQL too); all `None` when any read fails.
fn load(conn: &mut DbConn, loaders: &HashMap<JobKind, Loader>, claimed: &[JobRow]) -> Vec<Option<Loaded>> {
    let loader = |job: &JobRow| job.job_kind().ok().and_then(|kind| loaders.get(&kind));
    if !claimed.iter().any(|job| loader(job).is_some()) {
        return vec![None; claimed.len()];
    }
    let read = write_tx(conn, |conn| {
        claimed
            .iter()
            .map(|job| loader(job).map(|load| load(conn, job.target_id)).transpose())
            .collect::<StoreResult<Vec<_>>>()
    });
    read.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "could not read the targets of the claimed jobs; their attempts read them");
        vec![None; claimed.len()]
    })
}

/// What a claimed job's future needs of the queue, cloned out of the actor.
struct Queue {
    store: Store,
    clock: SharedClock,
    retry_base: Duration,
}

impl Queue {
    /// Runs one claimed job to its end: the handler's attempt, a retry with backoff after a
    /// failure on our side, the give-up after the last attempt, the burial if even that fails.
    /// Answers when to look for due jobs again, for a job put back for later.
    async fn process(self, handler: Option<Rc<dyn JobHandler>>, claim: Claim, kind: String) -> Option<Duration> {
        let (job, target) = (claim.job_id, claim.target_id);
        let Some(handler) = handler else {
            tracing::error!(job, kind, target, "no handler runs jobs of this kind; burying the job");
            self.bury(&claim, &format!("no handler for job kind `{kind}`")).await;
            return None;
        };
        let result = if claim.attempt > claim.max_attempts {
            tracing::warn!(job, kind, target, attempts = claim.attempt - 1, "job came back with its attempts spent");
            handler.give_up(claim.clone()).await
        } else {
            match handler.clone().run(claim.clone()).await {
                Err(e) if !claim.is_last() => {
                    let delay = backoff(self.retry_base, claim.attempt);
                    tracing::error!(job, kind, target, attempt = claim.attempt, retry_in_ms = delay.as_millis() as u64,
                        error = %e, "job failed; it will be retried");
                    return self.retry(&claim, delay, &e.to_string()).await;
                }
                Err(e) => {
                    tracing::error!(job, kind, target, attempt = claim.attempt, error = %e,
                        "job failed on its last attempt; giving its target the final state");
                    handler.give_up(claim.clone()).await
                }
                done => done,
            }
        };
        match result {
            Ok(Outcome::Done | Outcome::Nothing) => None,
            Ok(Outcome::Later(delay)) => Some(delay),
            Ok(Outcome::TakenOver) => {
                tracing::warn!(job, kind, target, "job was taken over by another worker; result dropped");
                None
            }
            Err(e) => {
                tracing::error!(job, kind, target, error = %e, "could not give the target its final state; burying the job");
                self.bury(&claim, &e.to_string()).await;
                None
            }
        }
    }

    /// Puts the job back, to run again after `delay`; the attempt it was on counts.
    async fn retry(&self, claim: &Claim, delay: Duration, error: &str) -> Option<Duration> {
        let (job_id, worker, error) = (claim.job_id, claim.worker.clone(), error.to_owned());
        let now = self.clock.now_naive();
        let run_after = now + chrono_dur(delay);
        match self.store.write(move |conn| jobs::requeue(conn, job_id, &worker, run_after, &error, now)).await {
            Ok(true) => Some(delay),
            Ok(false) => None,
            Err(e) => {
                tracing::error!(job = job_id, error = %e, "could not hand the job back; its lease will run out");
                None
            }
        }
    }

    /// Keeps the job as `dead` with its last error: never claimed again, out of the queue depth.
    async fn bury(&self, claim: &Claim, error: &str) {
        let (job_id, worker, error) = (claim.job_id, claim.worker.clone(), error.to_owned());
        let now = self.clock.now_naive();
        if let Err(e) = self.store.write(move |conn| jobs::bury(conn, job_id, &worker, &error, now)).await {
            tracing::error!(job = job_id, error = %e, "could not bury the job; its lease will run out");
        }
    }
}

impl Actor for JobWorker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.poll, |act, ctx| act.pump(ctx));
        ctx.run_interval(self.lease / 3, |act, ctx| act.maintain(ctx));
        self.pump(ctx);
    }
}

impl Handler<JobsAvailable> for JobWorker {
    type Result = ();
    fn handle(&mut self, _: JobsAvailable, ctx: &mut Context<Self>) {
        self.pump(ctx);
    }
}

impl Handler<Claimed> for JobWorker {
    type Result = ();
    fn handle(&mut self, Claimed { job, loaded }: Claimed, ctx: &mut Context<Self>) {
        if self.draining {
            // Claimed as the worker began to drain: handed back with the others (ReleaseJobs),
            // or taken over once its lease runs out.
            self.slots.give(1);
            return;
        }
        self.start(job, loaded, ctx);
    }
}

impl Handler<Drain> for JobWorker {
    type Result = usize;
    fn handle(&mut self, _: Drain, _: &mut Context<Self>) -> usize {
        self.draining = true;
        self.slots.closed.store(true, Ordering::Release);
        self.in_flight.len()
    }
}

impl Handler<ReleaseJobs> for JobWorker {
    type Result = ResponseFuture<Result<usize, StoreError>>;
    fn handle(&mut self, _: ReleaseJobs, _: &mut Context<Self>) -> Self::Result {
        let store = self.store.clone();
        let name = self.name.clone();
        let now = self.clock.now_naive();
        Box::pin(async move { store.write(move |conn| jobs::release(conn, &name, now)).await })
    }
}

crate::stoppable!(JobWorker);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_stays_within_half_and_full_of_the_doubling_delay() {
        let base = Duration::from_millis(2000);
        for n in 1..=5u32 {
            let full = base * 2u32.pow(n - 1);
            let samples: Vec<Duration> = (0..500).map(|_| backoff(base, n)).collect();
            assert!(samples.iter().all(|d| *d >= full / 2 && *d <= full), "retry {n}: {samples:?}");
            // Jitter: the delays are spread, not one value.
            assert!(samples.iter().any(|d| *d != samples[0]));
        }
    }
}
