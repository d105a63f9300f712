//! Content items: one row per (kind, subject_id, owner) (owner 0: shared), created `pending` together with its job, and
//! finished with the job's removal in one transaction. Never decides an item's text.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::ending::{self, Ending};
use super::jobs::{self, Ended, JobKind, JobRow, Place};
use super::notify;
use super::place::{self, Placed, Placing};
use super::schema::{content, jobs as jobs_t};
use super::{ahead, behind};
use super::{DbConn, Kept, StoreError, StoreResult};
use crate::domain::content::{ContentKind, ContentStatus, FallbackReason};
use crate::domain::events::Event;
use crate::on_backend;

pub use super::content_row::ContentRow;
use super::content_row::PENDING;

#[derive(Insertable)]
#[diesel(table_name = content)]
struct NewContent<'a> {
    kind: &'a str,
    subject_id: i64,
    status: &'a str,
    fields: &'a str,
    context: &'a str,
    version: i64,
    created_at: NaiveDateTime,
    updated_at: NaiveDateTime,
    owner_id: i64,
}

/// What a request did.
#[derive(Debug, Clone)]
pub enum Requested {
    /// The item existed and was left as it is (no upstream call).
    Existing(ContentRow),
    /// The item was created pending, with its job.
    Created(ContentRow),
    /// The item was put back to pending (new version), with its job.
    Regenerating(ContentRow),
}

impl Requested {
    pub fn row(&self) -> &ContentRow {
        match self {
            Requested::Existing(r) | Requested::Created(r) | Requested::Regenerating(r) => r,
        }
    }
    /// `true` when a job was enqueued.
    pub fn enqueued(&self) -> bool {
        !matches!(self, Requested::Existing(_))
    }
}

pub struct RequestItem<'a> {
    /// The process making the change (for cross-process notifications).
    pub origin: &'a str,
    pub kind: ContentKind,
    pub subject_id: i64,
    /// The player whose own item is asked for, or [`SHARED_OWNER`](crate::domain::content::SHARED_OWNER).
    pub owner: i64,
    /// The player asking (its job's fair share), 0 for the game server's admin token.
    pub player: i64,
    /// Sanitized context as JSON; `None` keeps the stored one on regenerate.
    pub context: Option<&'a str>,
    pub empty_fields: &'a str,
    pub regenerate: bool,
    /// Whether the requester may change an existing item (regenerate it, or ask with another
    /// context): else such a request is refused with [`StoreError::ServerOnly`].
    pub may_change: bool,
    /// The worker that has a slot for the item's new job: the job is written claimed by it
    /// (answered beside what the request did); `None` queues the job for any worker.
    pub claim_for: Option<&'a str>,
    /// A job to be queued (not claimed) is refused with [`StoreError::QueueFull`] when this
    /// many player jobs are queued already ([`jobs::check_player_queue`]).
    pub queue_limit: i64,
}

/// The item of `owner` ([`SHARED_OWNER`](crate::domain::content::SHARED_OWNER) for the shared one).
pub fn find(conn: &mut DbConn, kind: ContentKind, subject_id: i64, owner: i64) -> StoreResult<Option<ContentRow>> {
    Ok(on_backend!(conn, |c| content::table
        .filter(content::kind.eq(kind.as_str()))
        .filter(content::subject_id.eq(subject_id))
        .filter(content::owner_id.eq(owner))
        .first(c)
        .optional())?)
}

pub fn find_by_id(conn: &mut DbConn, id: i64) -> StoreResult<Option<ContentRow>> {
    Ok(on_backend!(conn, |c| content::table.find(id).first(c).optional())?)
}

/// Returns the item, creating it (pending + job) when it does not exist, or putting it back
/// to pending when `regenerate` is set and it is not pending already. Concurrent requests for
/// one item, on any process, end with one row and one job. With `claim_for`, the new job is
/// answered too, claimed by that worker. A whole write of its own (the writer's request is all
/// of it or none): nothing may go on after it fails in the same transaction.
///
/// On PostgreSQL a request whose job is claimed at once and that does not regenerate finds or
/// creates the item and its job in one statement ([`place::place`]), or finds them made ahead
/// of its batch ([`ahead`]).
pub fn request(
    conn: &mut DbConn,
    item: &RequestItem<'_>,
    now: NaiveDateTime,
) -> StoreResult<(Requested, Option<JobRow>)> {
    if let (DbConn::Pg(c), Some(worker), false) = (&mut *conn, item.claim_for, item.regenerate) {
        let placing = Placing {
            kind: item.kind.as_str(),
            subject_id: item.subject_id,
            owner: item.owner,
            fields: item.empty_fields,
            context: item.context.unwrap_or("{}"),
            player: item.player,
            worker,
            at: now,
        };
        let placed = match ahead::take_placed(&placing) {
            Some(placed) => Some(placed),
            None => place::place(c, &[placing])?.pop().map(|(_, placed)| placed),
        };
        return match placed {
            Some(Placed::Made(row, job)) => Ok((Requested::Created(row), Some(job))),
            Some(Placed::There(row)) => {
                check_change(&row, item)?;
                Ok((Requested::Existing(row), None))
            }
            // Created meanwhile by a transaction that committed after the statement began.
            None => request_once(conn, item, now, false),
        };
    }
    request_once(conn, item, now, true)
}

/// The new item's job: claimed by `item.claim_for` (and answered), else queued.
fn enqueue(
    conn: &mut DbConn,
    item: &RequestItem<'_>,
    target_id: i64,
    now: NaiveDateTime,
) -> StoreResult<Option<JobRow>> {
    let place = Place::new(0, item.player);
    match item.claim_for {
        Some(worker) => jobs::enqueue_claimed(conn, JobKind::Content, target_id, place, worker, now).map(Some),
        None => jobs::enqueue_for(conn, JobKind::Content, target_id, place, now).map(|()| None),
    }
}

/// Refuses ([`StoreError::ServerOnly`]) a request that would regenerate the item `row` or change
/// its context when its requester may not change it.
fn check_change(row: &ContentRow, item: &RequestItem<'_>) -> StoreResult<()> {
    if !item.may_change && (item.regenerate || item.context.is_some_and(|c| !same_context(c, &row.context))) {
        return Err(StoreError::ServerOnly);
    }
    Ok(())
}

/// [`request`] by reading the item first; `first` is false once an INSERT found it there.
fn request_once(
    conn: &mut DbConn,
    item: &RequestItem<'_>,
    now: NaiveDateTime,
    first: bool,
) -> StoreResult<(Requested, Option<JobRow>)> {
    // Checked before anything is written: a refused request stores nothing.
    let check_queue = |conn: &mut DbConn| match item.claim_for {
        Some(_) => Ok(()),
        None => jobs::check_player_queue(conn, item.queue_limit),
    };
    let found = find(conn, item.kind, item.subject_id, item.owner)?;
    if let Some(row) = &found {
        check_change(row, item)?;
    }
    match found {
        Some(row) if !item.regenerate || row.status == PENDING => Ok((Requested::Existing(row), None)),
        Some(row) => {
            check_queue(conn)?;
            let context = item.context.unwrap_or(&row.context);
            let row: ContentRow = on_backend!(conn, |c| diesel::update(content::table.find(row.id))
                .set((
                    content::status.eq(PENDING),
                    content::fields.eq(item.empty_fields),
                    content::context.eq(context),
                    content::model.eq(None::<String>),
                    content::reason.eq(None::<String>),
                    content::version.eq(content::version + 1),
                    content::updated_at.eq(now),
                ))
                .returning(content::all_columns)
                .get_result(c))?;
            let job = enqueue(conn, item, row.id, now)?;
            content_changed(conn, item.origin, &row)?;
            Ok((Requested::Regenerating(row), job))
        }
        None => {
            check_queue(conn)?;
            let new = NewContent {
                kind: item.kind.as_str(),
                subject_id: item.subject_id,
                status: PENDING,
                fields: item.empty_fields,
                context: item.context.unwrap_or("{}"),
                version: 1,
                created_at: now,
                updated_at: now,
                owner_id: item.owner,
            };
            // A conflict leaves the transaction as it was (no savepoint needed to go on). Kept
            // prepared: every new item runs it.
            let row: Option<ContentRow> = on_backend!(conn, |c| Kept(
                diesel::insert_into(content::table)
                    .values(&new)
                    .on_conflict((content::kind, content::subject_id, content::owner_id))
                    .do_nothing()
                    .returning(content::all_columns)
            )
            .get_result(c)
            .optional())?;
            match row {
                Some(row) => {
                    let job = enqueue(conn, item, row.id, now)?;
                    Ok((Requested::Created(row), job))
                }
                // A concurrent transaction (another process) inserted the item first and has
                // committed: it is ours now, as it is.
                None if first => request_once(conn, item, now, false),
                None => Err(StoreError::Corrupt(format!(
                    "content {}:{} conflicts on insert and cannot be found",
                    item.kind.as_str(),
                    item.subject_id
                ))),
            }
        }
    }
}

/// Whether a request's context (sanitized, as JSON) is the one stored: compared as JSON values.
fn same_context(requested: &str, stored: &str) -> bool {
    match (serde_json::from_str::<serde_json::Value>(requested), serde_json::from_str::<serde_json::Value>(stored)) {
        (Ok(requested), Ok(stored)) => requested == stored,
        _ => requested == stored,
    }
}

/// The end of a content job: the result (or fallback) and the job's deletion, committed
/// together, only while the job is this worker's.
pub struct Finish<'a> {
    pub origin: &'a str,
    pub job_id: i64,
    pub worker: &'a str,
    pub content_id: i64,
    pub status: ContentStatus,
    pub fields: &'a str,
    pub model: Option<&'a str>,
    pub reason: Option<FallbackReason>,
    /// The target (`content:<id>`) a settlement later in the writer's batch settles: on
    /// PostgreSQL its holds are taken with the end, for that settlement
    /// ([`super::behind::taken`]); the caller keeps the settlement next, when the end is done.
    pub settles: Option<&'a str>,
}

/// A whole write of its own, like [`request`]. On PostgreSQL one statement ([`ending::end`]),
/// or none when it was made ahead of its batch ([`ahead`]).
pub fn finish(conn: &mut DbConn, f: &Finish<'_>, now: NaiveDateTime) -> StoreResult<Ended<ContentRow>> {
    let reason = f.reason.map(|r| r.to_string());
    let row = match conn {
        DbConn::Pg(c) => {
            // The holds are taken with the end only where the batch keeps them for the settlement.
            let settles = f.settles.filter(|_| behind::deferring());
            let (ended, holds) = match ahead::take_ended(f.job_id, f.worker, settles) {
                Some(ended) => ended,
                None => {
                    let ending = Ending {
                        job_id: f.job_id,
                        worker: f.worker,
                        content_id: f.content_id,
                        status: f.status.as_str(),
                        fields: f.fields,
                        model: f.model,
                        reason: reason.as_deref(),
                        at: now,
                        settles,
                    };
                    let mut ended = ending::end(c, &[ending])?;
                    ended.pop().map_or((Ended::TakenOver, Vec::new()), |(_, ended, holds)| (ended, holds))
                }
            };
            match ended {
                Ended::Done(row) => {
                    if let Some(target) = settles {
                        behind::taken(target.to_owned(), holds);
                    }
                    row
                }
                Ended::TakenOver => return Ok(Ended::TakenOver),
            }
        }
        DbConn::Sqlite(_) => {
            if !jobs::complete(conn, f.job_id, f.worker)? {
                return Ok(Ended::TakenOver);
            }
            on_backend!(conn, |c| Kept(
                diesel::update(content::table.find(f.content_id).filter(content::status.eq(PENDING)))
                    .set((
                        content::status.eq(f.status.as_str()),
                        content::fields.eq(f.fields),
                        content::model.eq(f.model),
                        content::reason.eq(reason.as_deref()),
                        content::version.eq(content::version + 1),
                        content::updated_at.eq(now),
                    ))
                    .returning(content::all_columns),
            )
            .get_result(c)
            .optional())?
        }
    };
    if let Some(row) = &row {
        content_changed(conn, f.origin, row)?;
    }
    Ok(Ended::Done(row))
}

/// Items by status, for the admin summary and tests.
pub fn count_by_status(conn: &mut DbConn) -> StoreResult<Vec<(String, i64)>> {
    Ok(content::table.group_by(content::status).select((content::status, diesel::dsl::count_star())).load(conn)?)
}

/// Announces a content change to the other processes; call inside the transaction that made it.
/// A just created or regenerated item that may not be generated after all (a usage limit):
/// its job is removed and the item written as `fallback` with `reason` in the same
/// transaction, so it is never seen pending. Returns the item as written.
pub fn fall_back_unqueued(
    conn: &mut DbConn,
    origin: &str,
    content_id: i64,
    fields: &str,
    reason: &str,
    now: NaiveDateTime,
) -> StoreResult<ContentRow> {
    diesel::delete(
        jobs_t::table.filter(jobs_t::kind.eq(JobKind::Content.as_str())).filter(jobs_t::target_id.eq(content_id)),
    )
    .execute(conn)?;
    let row: ContentRow = diesel::update(content::table.find(content_id))
        .set((
            content::status.eq(ContentStatus::Fallback.as_str()),
            content::fields.eq(fields),
            content::reason.eq(Some(reason)),
            content::updated_at.eq(now),
        ))
        .returning(content::all_columns)
        .get_result(conn)?;
    content_changed(conn, origin, &row)?;
    Ok(row)
}

fn content_changed(conn: &mut DbConn, origin: &str, row: &ContentRow) -> StoreResult<()> {
    let event = Event::Content {
        origin: origin.to_owned(),
        kind: row.kind.clone(),
        subject_id: row.subject_id,
        version: row.version,
        owner: row.owner_id,
    };
    notify::send(conn, &event)
}

/// Gives a content job to each pending item that has none of that kind ([`jobs::adopt`]).
pub fn adopt_orphans(conn: &mut DbConn, now: NaiveDateTime) -> StoreResult<usize> {
    let has_job =
        jobs_t::table.filter(jobs_t::kind.eq(JobKind::Content.as_str())).filter(jobs_t::target_id.eq(content::id));
    let orphans: Vec<i64> = on_backend!(conn, |c| content::table
        .filter(content::status.eq(PENDING))
        .filter(diesel::dsl::not(diesel::dsl::exists(has_job)))
        .select(content::id)
        .limit(jobs::ADOPT_BATCH)
        .load(c))?;
    jobs::adopt(conn, JobKind::Content, orphans.into_iter().map(|id| (id, 0)), now)
}
