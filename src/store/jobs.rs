//! The durable job queue: a row per piece of work that is queued or running, or dead.
//!
//! A job is inserted in the same transaction as the row it works on, claimed with a lease
//! (`locked_by`, `locked_at`), renewed while its worker lives, and deleted in the transaction
//! that commits its result. `attempts` counts the claims that were real attempts: a claim is
//! counted when it is made and given back when the job only waited or was released at a
//! graceful stop. A job whose target could not even be given its final state is buried
//! (`dead`): kept with its last error, never claimed again, left out of the queue depth.
//! Claiming never holds a lock beyond its own short transaction.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::schema::jobs;
use super::{write_tx, DbConn, StoreError, StoreResult};
use crate::on_backend;

pub use crate::domain::jobs::{JobKind, JobStatus};

const QUEUED: &str = JobStatus::Queued.as_str();
const RUNNING: &str = JobStatus::Running.as_str();
const DEAD: &str = JobStatus::Dead.as_str();

/// What the transaction that ends a job found.
#[derive(Debug)]
pub enum Ended<T> {
    /// The job was this worker's and is deleted; `Some` with the target as written, `None` when
    /// the target no longer waited (gone, or final already).
    Done(Option<T>),
    /// Another worker holds the job now: nothing was written.
    TakenOver,
}

#[derive(Debug, Clone, Queryable)]
pub struct JobRow {
    pub id: i64,
    pub kind: String,
    pub target_id: i64,
    pub priority: i32,
    pub status: String,
    pub attempts: i32,
    pub run_after: NaiveDateTime,
    pub locked_by: Option<String>,
    pub locked_at: Option<NaiveDateTime>,
    pub last_error: Option<String>,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

impl JobRow {
    pub fn job_kind(&self) -> StoreResult<JobKind> {
        JobKind::parse(&self.kind).ok_or_else(|| StoreError::Corrupt(format!("unknown job kind `{}`", self.kind)))
    }
}

#[derive(Insertable)]
#[diesel(table_name = jobs)]
struct NewJob<'a> {
    kind: &'a str,
    target_id: i64,
    priority: i32,
    status: &'a str,
    attempts: i32,
    run_after: NaiveDateTime,
    locked_by: Option<&'a str>,
    locked_at: Option<NaiveDateTime>,
    created_at: NaiveDateTime,
    updated_at: NaiveDateTime,
}

impl<'a> NewJob<'a> {
    /// Queued, or running on its first attempt when `claimed_by` a worker.
    fn new(kind: JobKind, target_id: i64, priority: i32, claimed_by: Option<&'a str>, now: NaiveDateTime) -> Self {
        NewJob {
            kind: kind.as_str(),
            target_id,
            priority,
            status: if claimed_by.is_some() { RUNNING } else { QUEUED },
            attempts: i32::from(claimed_by.is_some()),
            run_after: now,
            locked_by: claimed_by,
            locked_at: claimed_by.map(|_| now),
            created_at: now,
            updated_at: now,
        }
    }
}

/// Enqueues work on `target_id`; call inside the transaction that writes the target row.
pub fn enqueue(conn: &mut DbConn, kind: JobKind, target_id: i64, priority: i32, now: NaiveDateTime) -> StoreResult<()> {
    let new = NewJob::new(kind, target_id, priority, None, now);
    on_backend!(conn, |c| diesel::insert_into(jobs::table).values(&new).execute(c))?;
    Ok(())
}

/// Refuses a new player job when `limit` content and mood jobs are queued already
/// (`LOREWIRE_QUEUE_LIMIT`): one client's flood must not bury every other player's items.
/// Counts no further than the limit, so a deep queue costs no more than a full one.
pub fn check_player_queue(conn: &mut DbConn, limit: i64) -> StoreResult<()> {
    let kinds = [JobKind::Content.as_str(), JobKind::Mood.as_str()];
    let at_limit: Option<i64> = jobs::table
        .select(jobs::id)
        .filter(jobs::status.eq(QUEUED))
        .filter(jobs::kind.eq_any(kinds))
        .offset(limit.max(1) - 1)
        .limit(1)
        .first(conn)
        .optional()?;
    match at_limit {
        Some(_) => Err(StoreError::QueueFull(limit)),
        None => Ok(()),
    }
}

/// Most targets one sweep gives a job ([`adopt`]); a later sweep takes the rest.
pub const ADOPT_BATCH: i64 = 500;

/// Gives each `(target_id, priority)` a queued job of `kind`: targets their feature found
/// waiting (pending, queued) with no job of that kind at all, e.g. because their job was of a
/// kind no handler here runs (a newer version's, buried). A target that has a job of the kind,
/// even a buried one, is never adopted, so a target that cannot be finished is not retried
/// forever. Answers how many jobs were written.
pub fn adopt(
    conn: &mut DbConn,
    kind: JobKind,
    targets: impl IntoIterator<Item = (i64, i32)>,
    now: NaiveDateTime,
) -> StoreResult<usize> {
    let mut adopted = 0;
    for (target_id, priority) in targets {
        let new = NewJob::new(kind, target_id, priority, None, now);
        // Another process may adopt the same target at the same moment: one job stays.
        adopted += on_backend!(conn, |c| diesel::insert_into(jobs::table)
            .values(&new)
            .on_conflict((jobs::kind, jobs::target_id))
            .do_nothing()
            .execute(c))?;
    }
    Ok(adopted)
}

/// Enqueues work on `target_id` already claimed by `worker` (running, on its first attempt),
/// for a worker with a slot free for it; call inside the transaction that writes the target row.
pub fn enqueue_claimed(
    conn: &mut DbConn,
    kind: JobKind,
    target_id: i64,
    priority: i32,
    worker: &str,
    now: NaiveDateTime,
) -> StoreResult<JobRow> {
    let new = NewJob::new(kind, target_id, priority, Some(worker), now);
    Ok(on_backend!(conn, |c| diesel::insert_into(jobs::table).values(&new).returning(jobs::all_columns).get_result(c))?)
}

/// Claims up to `limit` due jobs for `worker`, highest priority first, oldest first.
/// PostgreSQL skips rows other processes hold (`FOR UPDATE SKIP LOCKED`); SQLite has one
/// writer, so its immediate transaction is enough.
pub fn claim(conn: &mut DbConn, worker: &str, limit: i64, now: NaiveDateTime) -> StoreResult<Vec<JobRow>> {
    write_tx(conn, |conn| {
        let due = jobs::table
            .select(jobs::id)
            .filter(jobs::status.eq(QUEUED))
            .filter(jobs::run_after.le(now))
            .order((jobs::priority.desc(), jobs::id.asc()))
            .limit(limit);
        let ids: Vec<i64> = match conn {
            DbConn::Pg(c) => due.for_update().skip_locked().load(c)?,
            DbConn::Sqlite(c) => due.load(c)?,
        };
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // One statement for all of them: Diesel prepares an UPDATE anew on every call.
        let mut claimed: Vec<JobRow> =
            on_backend!(conn, |c| diesel::update(jobs::table.filter(jobs::id.eq_any(&ids)))
                .set((
                    jobs::status.eq(RUNNING),
                    jobs::locked_by.eq(worker),
                    jobs::locked_at.eq(now),
                    jobs::attempts.eq(jobs::attempts + 1),
                    jobs::updated_at.eq(now),
                ))
                .returning(jobs::all_columns)
                .get_results(c))?;
        // RETURNING keeps no order: the claim's own (highest priority first, oldest first).
        claimed.sort_by_key(|job| (std::cmp::Reverse(job.priority), job.id));
        Ok(claimed)
    })
}

/// Extends the lease of the jobs `worker` is actually running (`ids`); a job it gave up on is
/// left to expire and be taken again.
pub fn renew(conn: &mut DbConn, worker: &str, ids: &[i64], now: NaiveDateTime) -> StoreResult<usize> {
    if ids.is_empty() {
        return Ok(0);
    }
    let renewed = on_backend!(conn, |c| diesel::update(
        jobs::table.filter(jobs::status.eq(RUNNING)).filter(jobs::locked_by.eq(worker)).filter(jobs::id.eq_any(ids))
    )
    .set(jobs::locked_at.eq(now))
    .execute(c))?;
    Ok(renewed)
}

/// Hands one job back to the queue, to run again from `run_after`; the attempt it was on counts.
pub fn requeue(
    conn: &mut DbConn,
    job_id: i64,
    worker: &str,
    run_after: NaiveDateTime,
    error: &str,
    now: NaiveDateTime,
) -> StoreResult<bool> {
    put_back(conn, job_id, worker, run_after, error, 0, now)
}

/// Hands one job back to the queue, to run again from `run_after`, giving its claim back: it
/// only waited (the circuit is open, the provider asked to wait).
pub fn give_back(
    conn: &mut DbConn,
    job_id: i64,
    worker: &str,
    run_after: NaiveDateTime,
    why: &str,
    now: NaiveDateTime,
) -> StoreResult<bool> {
    put_back(conn, job_id, worker, run_after, why, 1, now)
}

/// Queues a job `worker` holds again from `run_after`, taking `refund` claims off its attempts.
fn put_back(
    conn: &mut DbConn,
    job_id: i64,
    worker: &str,
    run_after: NaiveDateTime,
    why: &str,
    refund: i32,
    now: NaiveDateTime,
) -> StoreResult<bool> {
    let updated = diesel::update(jobs::table.filter(jobs::id.eq(job_id)).filter(jobs::locked_by.eq(worker)))
        .set((
            jobs::status.eq(QUEUED),
            jobs::locked_by.eq(None::<String>),
            jobs::attempts.eq(jobs::attempts - refund),
            jobs::run_after.eq(run_after),
            jobs::last_error.eq(why),
            jobs::updated_at.eq(now),
        ))
        .execute(conn)?;
    Ok(updated == 1)
}

/// Buries a job `worker` holds: `dead` with its last error, never claimed again.
pub fn bury(conn: &mut DbConn, job_id: i64, worker: &str, error: &str, now: NaiveDateTime) -> StoreResult<bool> {
    let updated = diesel::update(jobs::table.filter(jobs::id.eq(job_id)).filter(jobs::locked_by.eq(worker)))
        .set((
            jobs::status.eq(DEAD),
            jobs::locked_by.eq(None::<String>),
            jobs::last_error.eq(error),
            jobs::updated_at.eq(now),
        ))
        .execute(conn)?;
    Ok(updated == 1)
}

/// Puts back running jobs whose lease ran out before `cutoff` (their worker died); the attempts
/// they were on count.
pub fn reclaim_stale(conn: &mut DbConn, cutoff: NaiveDateTime, now: NaiveDateTime) -> StoreResult<usize> {
    Ok(diesel::update(jobs::table.filter(jobs::status.eq(RUNNING)).filter(jobs::locked_at.lt(cutoff)))
        .set((jobs::status.eq(QUEUED), jobs::locked_by.eq(None::<String>), jobs::updated_at.eq(now)))
        .execute(conn)?)
}

/// Puts back every running job. Only for a backend one process owns (SQLite) at start.
pub fn reclaim_all(conn: &mut DbConn, now: NaiveDateTime) -> StoreResult<usize> {
    Ok(diesel::update(jobs::table.filter(jobs::status.eq(RUNNING)))
        .set((jobs::status.eq(QUEUED), jobs::locked_by.eq(None::<String>), jobs::updated_at.eq(now)))
        .execute(conn)?)
}

/// Puts back the jobs `worker` holds (graceful shutdown), giving their claims back: they were
/// interrupted, not failed.
pub fn release(conn: &mut DbConn, worker: &str, now: NaiveDateTime) -> StoreResult<usize> {
    Ok(diesel::update(jobs::table.filter(jobs::status.eq(RUNNING)).filter(jobs::locked_by.eq(worker)))
        .set((
            jobs::status.eq(QUEUED),
            jobs::locked_by.eq(None::<String>),
            jobs::attempts.eq(jobs::attempts - 1),
            jobs::updated_at.eq(now),
        ))
        .execute(conn)?)
}

/// Deletes a finished job if `worker` still holds it; `false` means another worker took it over.
pub fn complete(conn: &mut DbConn, job_id: i64, worker: &str) -> StoreResult<bool> {
    let deleted = on_backend!(conn, |c| diesel::delete(
        jobs::table.filter(jobs::id.eq(job_id)).filter(jobs::locked_by.eq(worker))
    )
    .execute(c))?;
    Ok(deleted == 1)
}

/// Jobs waiting or running (queue depth); buried ones are not.
pub fn depth(conn: &mut DbConn) -> StoreResult<i64> {
    Ok(jobs::table.filter(jobs::status.ne(DEAD)).count().get_result(conn)?)
}
