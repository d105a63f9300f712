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
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures_util::future::LocalBoxFuture;
use futures_util::FutureExt;
use rand::Rng;

use super::handler::{load_targets, Adopter, Claim, JobHandler, JobResult, Loaded, Loader, Outcome};
use super::intake::{Claimed, Intake, JobsAvailable, Slots};
use crate::core::clock::{to_chrono, SharedClock};
use crate::core::config::Config;
use crate::core::metrics::Metrics;
use crate::core::process::ProcessId;
use crate::domain::jobs::JobKind;
use crate::store::jobs::{self, JobRow};
use crate::store::{DbConn, Store, StoreError, StoreResult};

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

pub struct JobWorker {
    store: Store,
    clock: SharedClock,
    metrics: Arc<Metrics>,
    /// Names this worker in job leases (`locked_by`).
    name: ProcessId,
    lease: Duration,
    poll: Duration,
    retry_base: Duration,
    max_attempts: u32,
    handlers: HashMap<JobKind, Rc<dyn JobHandler>>,
    /// The handlers' loaders: what a claim reads of each job's target.
    loaders: Arc<HashMap<JobKind, Loader>>,
    /// The handlers' adopters: what gives their targets left without a job a new one.
    adopters: Arc<Vec<Adopter>>,
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
    pub fn new(store: Store, clock: SharedClock, metrics: Arc<Metrics>, config: &Config, name: ProcessId) -> Self {
        let slots = Arc::new(Slots::new(config.llm_concurrency, metrics.job_slots_busy.clone()));
        JobWorker {
            store,
            clock,
            metrics,
            name,
            lease: config.job_lease,
            poll: config.job_poll,
            retry_base: config.retry_base,
            max_attempts: config.max_attempts.max(1),
            handlers: HashMap::new(),
            loaders: Arc::default(),
            adopters: Arc::default(),
            in_flight: HashSet::new(),
            slots,
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
        if let Some(adopter) = handler.adopter() {
            Arc::make_mut(&mut self.adopters).push(adopter);
        }
        self.handlers.insert(handler.kind(), Rc::new(handler));
        self
    }

    /// Starts the worker; answers its address and the door for writes that create jobs.
    pub fn start_with_intake(self) -> (Addr<JobWorker>, Intake) {
        let (slots, name, loaders) = (self.slots.clone(), self.name.clone(), self.loaders.clone());
        let worker = self.start();
        let intake = Intake::new(worker.clone().recipient(), worker.clone().recipient(), slots, name, loaders);
        (worker, intake)
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
        let free = self.slots.take(self.slots.capacity.min(64));
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

    fn queue(&self) -> Queue {
        Queue {
            store: self.store.clone(),
            clock: self.clock.clone(),
            retry_base: self.retry_base,
            adopters: self.adopters.clone(),
        }
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
            player: job.player_id,
            loaded,
        };
        let queue = self.queue();
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
    let loaded = load_targets(conn, loaders, &claimed);
    Ok(claimed.into_iter().zip(loaded).collect())
}

/// A handler's attempt or give-up, with a panic in it turned into a failure on lorewire's side
/// (retried and counted like any other): one job that panics must not stop the worker.
async fn guarded(work: LocalBoxFuture<'static, JobResult>) -> JobResult {
    AssertUnwindSafe(work).catch_unwind().await.unwrap_or(Err(StoreError::HandlerPanicked))
}

/// What a claimed job's future needs of the queue, cloned out of the actor.
struct Queue {
    store: Store,
    clock: SharedClock,
    retry_base: Duration,
    adopters: Arc<Vec<Adopter>>,
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
            // Its target (whichever it was) must not wait forever: the handlers give every
            // target left without a job of theirs a new one, and the worker looks at once.
            return (self.adopt().await > 0).then_some(Duration::ZERO);
        };
        let result = if claim.attempt > claim.max_attempts {
            tracing::warn!(job, kind, target, attempts = claim.attempt - 1, "job came back with its attempts spent");
            guarded(handler.clone().give_up(claim.clone())).await
        } else {
            match guarded(handler.clone().run(claim.clone())).await {
                Err(e) if !claim.is_last() => {
                    let delay = backoff(self.retry_base, claim.attempt);
                    tracing::error!(job, kind, target, attempt = claim.attempt, retry_in_ms = delay.as_millis() as u64,
                        error = %e, "job failed; it will be retried");
                    return self.retry(&claim, delay, &e.to_string()).await;
                }
                Err(e) => {
                    tracing::error!(job, kind, target, attempt = claim.attempt, error = %e,
                        "job failed on its last attempt; giving its target the final state");
                    guarded(handler.give_up(claim.clone())).await
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
        let run_after = now + to_chrono(delay);
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
    /// Runs every handler's [`Adopter`] in one write; answers how many jobs they wrote.
    async fn adopt(&self) -> usize {
        if self.adopters.is_empty() {
            return 0;
        }
        let (adopters, now) = (self.adopters.clone(), self.clock.now_naive());
        let adopted = self.store.write(move |conn| adopters.iter().map(|adopt| adopt(conn, now)).sum()).await;
        match adopted {
            Ok(0) => 0,
            Ok(n) => {
                tracing::warn!(jobs = n, "gave targets left waiting without a job of their kind a new one");
                n
            }
            Err(e) => {
                tracing::error!(error = %e, "could not look for targets left waiting without a job");
                0
            }
        }
    }

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
        // Targets a stopped process (or an older or newer version) left without a job.
        let queue = self.queue();
        ctx.spawn(async move { queue.adopt().await }.into_actor(self).map(|adopted, act, ctx| {
            if adopted > 0 {
                act.pump(ctx);
            }
        }));
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
        self.slots.close();
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
