//! One attempt of a generation run in the database: the budget reservation it needs, its start,
//! and its end in one transaction (usage, cost event, budget settlement, the job deleted or handed
//! back); a wait that spends no attempt; the abort of a run nobody runs yet. Never decides what an
//! attempt does (that is the run job's) and never holds a transaction across an upstream call.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::billing::{self, NewCostEvent};
use super::jobs::{self, JobKind, JobStatus};
use super::notify;
use super::runs::{find, find_by_id, run_ended, RunRow};
use super::schema::{jobs as jobs_t, runs};
use super::{write_whole, DbConn, StoreResult};
use crate::domain::events::Event;
use crate::domain::runs::{RunErrorCode, RunStatus, Usage};

/// Whether a run may go on to ask the provider.
#[derive(Debug)]
pub enum Reservation {
    /// The run holds what one attempt can cost (or its project has no budget).
    Held,
    /// The run is no longer waiting (finished, aborted): nothing to do.
    Gone,
    /// The project's budget has no room for another attempt.
    NoBudget,
}

/// Makes sure the run holds a reservation for the coming attempt when its project has a
/// budget (the first attempt's was taken at admission; a retry takes a new one).
pub fn ensure_reservation(
    conn: &mut DbConn,
    run_pk: i64,
    worst_case: Option<i64>,
    now: NaiveDateTime,
) -> StoreResult<Reservation> {
    write_whole(conn, |conn| {
        let Some(row) = find_by_id(conn, run_pk)? else { return Ok(Reservation::Gone) };
        if !row.is_active() {
            return Ok(Reservation::Gone);
        }
        if row.reserved_micros > 0 || billing::budget(conn, &row.project_id)?.is_none() {
            return Ok(Reservation::Held);
        }
        match worst_case {
            Some(amount) if billing::reserve(conn, &row.project_id, amount, now)? => {
                diesel::update(runs::table.find(run_pk)).set(runs::reserved_micros.eq(amount)).execute(conn)?;
                Ok(Reservation::Held)
            }
            _ => Ok(Reservation::NoBudget),
        }
    })
}

/// An attempt cut short (its process died, or lost the job's lease) is charged what it held,
/// at restart (PROTOCOL §5): the project's reservation, or `worst_case` when the project has
/// no budget, with a cost event; the run goes back to `queued`, holding the same reservation
/// again if the budget still has room for it (else nothing: the next attempt is refused).
/// `None` when the run is not `running`: nothing was cut.
pub fn charge_cut(conn: &mut DbConn, run_pk: i64, worst_case: i64, now: NaiveDateTime) -> StoreResult<Option<RunRow>> {
    write_whole(conn, |conn| {
        let Some(row) = find_by_id(conn, run_pk)? else { return Ok(None) };
        if row.run_status() != Some(RunStatus::Running) {
            return Ok(None);
        }
        let charge = if row.reserved_micros > 0 { row.reserved_micros } else { worst_case.max(0) };
        billing::settle(conn, &row.project_id, row.reserved_micros, charge, now)?;
        let event = NewCostEvent {
            run_id: &row.run_id,
            project_id: &row.project_id,
            model: &row.model,
            attempt: row.attempts,
            input_tokens: 0,
            output_tokens: 0,
            cache_read_tokens: 0,
            cache_write_tokens: 0,
            cost_micros: charge,
            created_at: now,
        };
        billing::add_cost_event(conn, &event)?;
        let again = row.reserved_micros > 0 && billing::reserve(conn, &row.project_id, row.reserved_micros, now)?;
        let row = diesel::update(runs::table.find(run_pk))
            .set((
                runs::status.eq(RunStatus::Queued.as_str()),
                runs::cost_micros.eq(runs::cost_micros + charge),
                runs::reserved_micros.eq(if again { row.reserved_micros } else { 0 }),
                runs::updated_at.eq(now),
            ))
            .returning(runs::all_columns)
            .get_result::<RunRow>(conn)?;
        Ok(Some(row))
    })
}

/// The attempt begins: the run is `running` and the attempt counted. `None` when the run
/// stopped waiting meanwhile (aborted).
pub fn mark_running(conn: &mut DbConn, run_pk: i64, now: NaiveDateTime) -> StoreResult<Option<RunRow>> {
    Ok(diesel::update(runs::table.find(run_pk).filter(runs::status.eq_any(RunStatus::ACTIVE.map(RunStatus::as_str))))
        .set((
            runs::status.eq(RunStatus::Running.as_str()),
            runs::attempts.eq(runs::attempts + 1),
            runs::started_at.eq(now),
            runs::updated_at.eq(now),
        ))
        .returning(runs::all_columns)
        .get_result(conn)
        .optional()?)
}

/// What became of an attempt.
#[derive(Debug, Clone)]
pub enum AttemptEnd {
    Done {
        text: String,
    },
    Aborted,
    /// Failed; the run goes back to the queue from `run_after`.
    Retry {
        run_after: NaiveDateTime,
        code: RunErrorCode,
        message: String,
    },
    /// Failed for good (attempts spent, or it cannot be tried).
    Dead {
        code: RunErrorCode,
        message: String,
    },
}

pub struct Settlement<'a> {
    /// This process, for the cross-process end notification (PostgreSQL).
    pub origin: &'a str,
    pub job_id: i64,
    pub worker: &'a str,
    pub run_pk: i64,
    pub attempt: i32,
    pub usage: Usage,
    pub cost: i64,
    pub end: AttemptEnd,
}

/// Ends an attempt in one transaction: the job is deleted (or handed back for a retry) only if
/// this worker still holds it, the cost event is written, the budget settled (the reservation
/// released; for a retry taken again if it still fits) and the run updated. `None` when the
/// job is no longer this worker's: the result is dropped, so no run completes twice.
pub fn settle(conn: &mut DbConn, s: &Settlement<'_>, now: NaiveDateTime) -> StoreResult<Option<RunRow>> {
    write_whole(conn, |conn| {
        let held = match &s.end {
            AttemptEnd::Retry { run_after, code, message } => {
                jobs::requeue(conn, s.job_id, s.worker, *run_after, &format!("{code}: {message}"), now)?
            }
            _ => jobs::complete(conn, s.job_id, s.worker)?,
        };
        if !held {
            return Ok(None);
        }
        let Some(row) = find_by_id(conn, s.run_pk)? else { return Ok(None) };
        // An attempt is charged at most its reservation, so `spent + reserved` stays within the
        // limit; the cost event and the run record that same charge, so spent always equals the
        // sum of the events (a budget set later starts from that sum). Only usage over the worst
        // case (input beyond the prompt bound) gets here, and it is logged. A run admitted
        // before its project had a budget holds nothing; its cost still counts in full.
        let charge = if row.reserved_micros > 0 { s.cost.min(row.reserved_micros) } else { s.cost };
        if charge < s.cost {
            tracing::warn!(run = %row.run_id, cost = s.cost, reserved = row.reserved_micros,
                "attempt cost more than its worst case; it is charged the reservation");
        }
        billing::settle(conn, &row.project_id, row.reserved_micros, charge, now)?;
        let mut reserved = 0;
        if let AttemptEnd::Retry { .. } = s.end {
            if row.reserved_micros > 0 && billing::reserve(conn, &row.project_id, row.reserved_micros, now)? {
                reserved = row.reserved_micros;
            }
        }
        if s.cost > 0 || !s.usage.is_zero() {
            billing::add_cost_event(
                conn,
                &NewCostEvent {
                    run_id: &row.run_id,
                    project_id: &row.project_id,
                    model: &row.model,
                    attempt: s.attempt,
                    input_tokens: s.usage.input_tokens as i64,
                    output_tokens: s.usage.output_tokens as i64,
                    cache_read_tokens: s.usage.cache_read_tokens as i64,
                    cache_write_tokens: s.usage.cache_write_tokens as i64,
                    cost_micros: charge,
                    created_at: now,
                },
            )?;
        }
        let (status, text, code, message) = match &s.end {
            AttemptEnd::Done { text } => (RunStatus::Done, Some(text.as_str()), None, None),
            AttemptEnd::Aborted => {
                (RunStatus::Aborted, None, Some(RunErrorCode::Aborted.to_string()), Some("the run was aborted"))
            }
            AttemptEnd::Retry { code, message, .. } => {
                (RunStatus::Queued, None, Some(code.to_string()), Some(message.as_str()))
            }
            AttemptEnd::Dead { code, message } => {
                (RunStatus::Dead, None, Some(code.to_string()), Some(message.as_str()))
            }
        };
        let finished_at = (!status.is_active()).then_some(now);
        let row = diesel::update(runs::table.find(s.run_pk))
            .set((
                runs::status.eq(status.as_str()),
                runs::text.eq(text.unwrap_or("")),
                runs::input_tokens.eq(runs::input_tokens + s.usage.input_tokens as i64),
                runs::output_tokens.eq(runs::output_tokens + s.usage.output_tokens as i64),
                runs::cache_read_tokens.eq(runs::cache_read_tokens + s.usage.cache_read_tokens as i64),
                runs::cache_write_tokens.eq(runs::cache_write_tokens + s.usage.cache_write_tokens as i64),
                runs::cost_micros.eq(runs::cost_micros + charge),
                runs::reserved_micros.eq(reserved),
                runs::error_code.eq(code),
                runs::error.eq(message),
                runs::finished_at.eq(finished_at),
                runs::updated_at.eq(now),
            ))
            .returning(runs::all_columns)
            .get_result::<RunRow>(conn)?;
        if !status.is_active() {
            run_ended(conn, s.origin, &row.run_id)?;
        }
        Ok(Some(row))
    })
}

/// Puts a claimed run back without spending an attempt (circuit open, rate limited);
/// `refund` gives back an attempt already counted (a 429 answer).
pub struct Wait<'a> {
    pub job_id: i64,
    pub worker: &'a str,
    pub run_pk: i64,
    pub run_after: NaiveDateTime,
    pub why: &'a str,
    pub refund: bool,
}

pub fn wait(conn: &mut DbConn, w: &Wait<'_>, now: NaiveDateTime) -> StoreResult<bool> {
    write_whole(conn, |conn| {
        if !jobs::give_back(conn, w.job_id, w.worker, w.run_after, w.why, now)? {
            return Ok(false);
        }
        let refund = i32::from(w.refund);
        diesel::update(
            runs::table.find(w.run_pk).filter(runs::status.eq_any(RunStatus::ACTIVE.map(RunStatus::as_str))),
        )
        .set((
            runs::status.eq(RunStatus::Queued.as_str()),
            runs::attempts.eq(runs::attempts - refund),
            runs::updated_at.eq(now),
        ))
        .execute(conn)?;
        Ok(true)
    })
}

/// Aborts a run whose job is still waiting in the queue (nobody runs it): the job is deleted,
/// the reservation released. `None` when the run is not waiting: finished, or claimed by a
/// worker, whose process is then asked to stop it (it ends the run and charges what it used).
pub fn abort_queued(conn: &mut DbConn, origin: &str, run_id: &str, now: NaiveDateTime) -> StoreResult<Option<RunRow>> {
    write_whole(conn, |conn| {
        let Some(row) = find(conn, run_id)? else { return Ok(None) };
        if !row.is_active() {
            return Ok(None);
        }
        let deleted = diesel::delete(
            jobs_t::table
                .filter(jobs_t::kind.eq(JobKind::Run.as_str()))
                .filter(jobs_t::target_id.eq(row.id))
                .filter(jobs_t::status.eq(JobStatus::Queued.as_str())),
        )
        .execute(conn)?;
        if deleted == 0 {
            notify::send(conn, &Event::RunCancel { origin: origin.to_owned(), run_id: row.run_id.clone() })?;
            return Ok(None);
        }
        billing::settle(conn, &row.project_id, row.reserved_micros, 0, now)?;
        let row = diesel::update(runs::table.find(row.id))
            .set((
                runs::status.eq(RunStatus::Aborted.as_str()),
                runs::reserved_micros.eq(0),
                runs::error_code.eq(RunErrorCode::Aborted.to_string()),
                runs::error.eq("the run was aborted"),
                runs::finished_at.eq(now),
                runs::updated_at.eq(now),
            ))
            .returning(runs::all_columns)
            .get_result::<RunRow>(conn)?;
        run_ended(conn, origin, &row.run_id)?;
        Ok(Some(row))
    })
}
