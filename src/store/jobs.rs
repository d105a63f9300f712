//! The durable job queue: a row per piece of work that is queued or running, or dead.
//!
//! A job is inserted in the same transaction as the row it works on, claimed with a lease
//! (`locked_by`, `locked_at`), renewed while its worker lives, and deleted in the transaction
//! that commits its result. `attempts` counts the claims that were real attempts: a claim is
//! counted when it is made and given back when the job only waited or was released at a
//! graceful stop. A job whose target could not even be given its final state is buried
//! (`dead`): kept with its last error, never claimed again, left out of the queue depth.
//! Claiming never holds a lock beyond its own short transaction. Each job names the player it
//! works for (`player_id`, 0 for none): at each priority, queued jobs are claimed round-robin
//! over players (a player's n-th queued job after every other player's (n-1)-th), so one
//! player's flood delays another player's job by at most one job per busy slot.

use chrono::NaiveDateTime;
use diesel::dsl::case_when;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable};

use super::schema::jobs;
use super::sql::coalesce;
use super::{write_whole, DbConn, Kept, StoreError, StoreResult};
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
    /// The player the job works for (0: none).
    pub player_id: i64,
    /// Its turn among the queued jobs of its priority ([`insert_taking_turn`]).
    pub turn: i64,
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
    player_id: i64,
    turn: i64,
}

/// Where a new job goes: its priority and the player it works for (0: none).
#[derive(Debug, Clone, Copy, Default)]
pub struct Place {
    pub priority: i32,
    pub player_id: i64,
}

impl Place {
    pub fn new(priority: i32, player_id: i64) -> Place {
        Place { priority, player_id }
    }
}

impl<'a> NewJob<'a> {
    /// Queued, or running on its first attempt when `claimed_by` a worker.
    fn new(
        kind: JobKind,
        target_id: i64,
        place: Place,
        turn: i64,
        claimed_by: Option<&'a str>,
        now: NaiveDateTime,
    ) -> Self {
        let Place { priority, player_id } = place;
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
            player_id,
            turn,
        }
    }
}

/// Enqueues work on `target_id`; call inside the transaction that writes the target row.
pub fn enqueue(conn: &mut DbConn, kind: JobKind, target_id: i64, priority: i32, now: NaiveDateTime) -> StoreResult<()> {
    enqueue_for(conn, kind, target_id, Place::new(priority, 0), now)
}

/// Enqueues work on `target_id` for a player ([`Place`]); call inside the transaction that
/// writes the target row.
pub fn enqueue_for(
    conn: &mut DbConn,
    kind: JobKind,
    target_id: i64,
    place: Place,
    now: NaiveDateTime,
) -> StoreResult<()> {
    let new = NewJob::new(kind, target_id, place, 0, None, now);
    insert_taking_turn(conn, &new)?;
    Ok(())
}

/// Inserts `new` (its `turn` left aside) with the turn of a new job of its player at its
/// priority: the turn after the player's last job queued or running there, but never before the
/// turn being served (the lowest queued). A player with none there takes the turn of the jobs
/// running now (when one of them is before the lowest queued), so it goes next, after other
/// players that came before it. So at each priority players take turns, and one player's flood
/// delays another's job by at most the jobs already running. Jobs of no player (0) take turns as
/// one player. Concurrent enqueues may share a turn; the older job goes first. One statement
/// (`INSERT ... SELECT`, the turn read in it), kept prepared.
fn insert_taking_turn(conn: &mut DbConn, new: &NewJob<'_>) -> StoreResult<JobRow> {
    use diesel::dsl::{max, min};
    use diesel::sql_types::{Integer, Text, Timestamp};
    let at = jobs::priority.eq(new.priority);
    let serving = || jobs::table.select(min(jobs::turn)).filter(at).filter(jobs::status.eq(QUEUED)).single_value();
    let last = || {
        jobs::table
            .select(max(jobs::turn))
            .filter(at)
            .filter(jobs::player_id.eq(new.player_id))
            // Not `eq_any`: an `IN` list is prepared again at every call.
            .filter(jobs::status.eq(QUEUED).or(jobs::status.eq(RUNNING)))
            .single_value()
    };
    let running = || jobs::table.select(max(jobs::turn)).filter(at).filter(jobs::status.eq(RUNNING)).single_value();
    // After the player's last (not before the one served); else the earlier of the running and
    // the served; else 0.
    let after_last = case_when(serving().gt(last() + 1_i64), serving()).otherwise(last() + 1_i64);
    let with_last = case_when(last().is_not_null(), after_last);
    let first = case_when(running().lt(serving()), running()).otherwise(coalesce(serving(), running()));
    let turn = coalesce(with_last, coalesce(first, 0_i64.into_sql::<Nullable<BigInt>>())).assume_not_null();
    let values = diesel::select((
        new.kind.into_sql::<Text>(),
        new.target_id.into_sql::<BigInt>(),
        new.priority.into_sql::<Integer>(),
        new.status.into_sql::<Text>(),
        new.attempts.into_sql::<Integer>(),
        new.run_after.into_sql::<Timestamp>(),
        new.locked_by.into_sql::<Nullable<Text>>(),
        new.locked_at.into_sql::<Nullable<Timestamp>>(),
        new.created_at.into_sql::<Timestamp>(),
        new.updated_at.into_sql::<Timestamp>(),
        new.player_id.into_sql::<BigInt>(),
        turn,
    ));
    let columns = (
        jobs::kind,
        jobs::target_id,
        jobs::priority,
        jobs::status,
        jobs::attempts,
        jobs::run_after,
        jobs::locked_by,
        jobs::locked_at,
        jobs::created_at,
        jobs::updated_at,
        jobs::player_id,
        jobs::turn,
    );
    Ok(on_backend!(conn, |c| Kept(
        diesel::insert_into(jobs::table).values(values).into_columns(columns).returning(jobs::all_columns)
    )
    .get_result(c))?)
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
        // A target left without its job has waited already: it goes first.
        let new = NewJob::new(kind, target_id, Place::new(priority, 0), 0, None, now);
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
    place: Place,
    worker: &str,
    now: NaiveDateTime,
) -> StoreResult<JobRow> {
    let new = NewJob::new(kind, target_id, place, 0, Some(worker), now);
    insert_taking_turn(conn, &new)
}

/// The row of a job written claimed by `worker` (as [`enqueue_claimed`] writes it) by a
/// statement that answered only its `id` and `turn` ([`super::place`]).
pub(super) fn claimed_row(
    id: i64,
    kind: JobKind,
    target_id: i64,
    place: Place,
    worker: &str,
    turn: i64,
    now: NaiveDateTime,
) -> JobRow {
    let new = NewJob::new(kind, target_id, place, turn, Some(worker), now);
    JobRow {
        id,
        kind: new.kind.to_owned(),
        target_id,
        priority: new.priority,
        status: new.status.to_owned(),
        attempts: new.attempts,
        run_after: new.run_after,
        locked_by: new.locked_by.map(str::to_owned),
        locked_at: new.locked_at,
        last_error: None,
        created_at: new.created_at,
        updated_at: new.updated_at,
        player_id: new.player_id,
        turn: new.turn,
    }
}

/// Claims up to `limit` due jobs for `worker`, highest priority first, then by turn (players
/// take turns, [`insert_taking_turn`]), oldest first. PostgreSQL skips rows other processes hold (`FOR
/// UPDATE SKIP LOCKED`); SQLite has one writer, so its immediate transaction is enough.
pub fn claim(conn: &mut DbConn, worker: &str, limit: i64, now: NaiveDateTime) -> StoreResult<Vec<JobRow>> {
    write_whole(conn, |conn| {
        let due = jobs::table
            .select(jobs::id)
            .filter(jobs::status.eq(QUEUED))
            .filter(jobs::run_after.le(now))
            .order((jobs::priority.desc(), jobs::turn.asc(), jobs::id.asc()))
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
        // RETURNING keeps no order: the claim's own (highest priority first, by turn, oldest first).
        claimed.sort_by_key(|job| (std::cmp::Reverse(job.priority), job.turn, job.id));
        Ok(claimed)
    })
}

/// Extends the lease of the jobs `worker` is actually running (`ids`); a job it gave up on is
/// left to expire and be taken again. On PostgreSQL a job whose row another transaction holds
/// (its end being written by another writer of this process) is skipped, not waited for: the
/// renewal locks many rows at once, and waiting on one while holding the others could close a
/// circle with a batch that ends several of them.
pub fn renew(conn: &mut DbConn, worker: &str, ids: &[i64], now: NaiveDateTime) -> StoreResult<usize> {
    if ids.is_empty() {
        return Ok(0);
    }
    let running = jobs::table.filter(jobs::status.eq(RUNNING)).filter(jobs::locked_by.eq(worker));
    let renewed = match conn {
        DbConn::Pg(c) => {
            let free: Vec<i64> =
                running.filter(jobs::id.eq_any(ids)).select(jobs::id).for_update().skip_locked().load(c)?;
            diesel::update(jobs::table.filter(jobs::id.eq_any(free))).set(jobs::locked_at.eq(now)).execute(c)?
        }
        DbConn::Sqlite(c) => {
            diesel::update(running.filter(jobs::id.eq_any(ids))).set(jobs::locked_at.eq(now)).execute(c)?
        }
    };
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
