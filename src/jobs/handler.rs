//! The contract between the job worker and a job kind's handler: the claimed job as the handler
//! sees it, what its attempt came to, and the give-up when no attempt is left. Never runs a job.

use std::any::Any;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::LocalBoxFuture;

use crate::core::process::ProcessId;
use crate::domain::jobs::JobKind;
use crate::store::jobs::JobRow;
use crate::store::{write_tx, DbConn, Store, StoreError, StoreResult};

/// What a handler's [`Loader`] read for one job, handed to its attempt in [`Claim::loaded`].
#[derive(Clone)]
pub struct Loaded(pub Arc<dyn Any + Send + Sync>);

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Loaded(..)")
    }
}

/// Reads what an attempt needs of its target (`target_id`), inside the transaction that claims
/// the job: on the store's writer, with no hand-off of its own. The attempt must still cope
/// without it (`Claim::loaded` is `None` when the read failed).
pub type Loader = Arc<dyn Fn(&mut DbConn, i64) -> StoreResult<Loaded> + Send + Sync>;

/// Gives a job of the handler's kind to each of its targets left waiting with none (their job
/// was of a kind no handler here runs, and was buried); answers how many. Runs in a write of
/// its own, after a burial and when the worker starts.
pub type Adopter = fn(&mut DbConn, chrono::NaiveDateTime) -> StoreResult<usize>;

/// What each claimed job's loader reads, in one savepoint (a failed read leaves the claim's
/// transaction as it was, on PostgreSQL too); all `None` when any read fails.
pub fn load_targets(conn: &mut DbConn, loaders: &HashMap<JobKind, Loader>, claimed: &[JobRow]) -> Vec<Option<Loaded>> {
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

/// One claimed job, as its handler sees it.
#[derive(Debug, Clone)]
pub struct Claim {
    /// `jobs.id`: commit the job's end only while this worker still holds it.
    pub job_id: i64,
    /// The row the job works on (`content.id`, `messages.id`, `runs.id`).
    pub target_id: i64,
    /// This attempt, counting from 1: every claim counts, a takeover after a crash included,
    /// except claims given back (a run that only waited for the provider, a graceful stop).
    pub attempt: u32,
    /// `LOREWIRE_MAX_ATTEMPTS`.
    pub max_attempts: u32,
    /// The worker holding the job (the `locked_by` its end must match).
    pub worker: ProcessId,
    /// The player the job works for (0: none): its writes go through that player's writer.
    pub player: i64,
    /// What the handler's [`Loader`] read as the job was claimed, if it has one and the read
    /// succeeded.
    pub loaded: Option<Loaded>,
}

impl Claim {
    /// No attempt follows this one: a failure now is final.
    pub fn is_last(&self) -> bool {
        self.attempt >= self.max_attempts
    }
}

/// How an attempt ended, when it did not fail on lorewire's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The target's new state (result or fallback) is committed with the job's removal, and
    /// published.
    Done,
    /// The target no longer waits (gone, or final already): the job is removed.
    Nothing,
    /// The handler put the job back in the queue (a retry, a wait for the provider): the worker
    /// looks for due jobs again after this long.
    Later(Duration),
    /// Another worker holds the job now (this one's lease ran out): nothing was committed.
    TakenOver,
}

/// The target is gone or final already: the job only has to go (if it is still this worker's).
pub async fn nothing_to_do(store: &Store, claim: &Claim) -> JobResult {
    let (job_id, worker) = (claim.job_id, claim.worker.clone());
    let held = store.write(move |conn| crate::store::jobs::complete(conn, job_id, &worker)).await?;
    Ok(if held { Outcome::Nothing } else { Outcome::TakenOver })
}

/// What a handler's attempt gives back: an outcome, or a failure on lorewire's side (a store
/// error, a corrupt row), which the worker retries with backoff and counts as an attempt.
pub type JobResult = Result<Outcome, StoreError>;

/// Runs the jobs of one kind. The futures run on the worker's arbiter thread and need not be
/// `Send`.
pub trait JobHandler {
    /// The jobs this handler runs.
    fn kind(&self) -> JobKind;

    /// One attempt. Every `Ok` path has committed (or found nothing to commit); an `Err`
    /// committed nothing.
    fn run(self: Rc<Self>, claim: Claim) -> LocalBoxFuture<'static, JobResult>;

    /// No attempt is left (the last failed on lorewire's side, or the job came back past the
    /// cap): gives the target its final state (a fallback, a dead run) with the job's removal,
    /// and publishes it like any other.
    fn give_up(self: Rc<Self>, claim: Claim) -> LocalBoxFuture<'static, JobResult>;

    /// Called at every lease renewal, for upkeep of the handler's own state.
    fn tick(&self) {}

    /// Reads the target of each job as it is claimed (see [`Loader`]); none by default.
    fn loader(&self) -> Option<Loader> {
        None
    }

    /// Finds this kind's targets that wait with no job and gives them one (see [`Adopter`]);
    /// none by default.
    fn adopter(&self) -> Option<Adopter> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(attempt: u32, max_attempts: u32) -> Claim {
        Claim { job_id: 1, target_id: 1, attempt, max_attempts, worker: "w".into(), player: 0, loaded: None }
    }

    #[test]
    fn only_the_attempt_at_the_cap_or_past_it_is_the_last() {
        assert!(!claim(1, 3).is_last());
        assert!(!claim(2, 3).is_last());
        assert!(claim(3, 3).is_last());
        // A job that came back past the cap (a takeover after a crash on its last attempt).
        assert!(claim(4, 3).is_last());
        assert!(claim(1, 1).is_last(), "one attempt allowed: the first is the last");
    }
}
