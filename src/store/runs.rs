//! Generation runs: one row per run, admitted `queued` together with its durable job (and its
//! budget reservation) in one transaction after dedup and the queue limit; detaching waiters,
//! queue positions, the admin re-queue of a dead run and the admin's run list. An attempt's own
//! writes are `run_attempts`. Announces a run's end only inside the write that makes it; never
//! decides an attempt's outcome.

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;

use super::billing;
use super::jobs::{self, JobKind, JobStatus};
use super::notify;
use super::schema::{jobs as jobs_t, runs};
use super::{is_unique_violation, write_tx, DbConn, StoreError, StoreResult};
use crate::domain::events::Event;
use crate::domain::money::usd;
use crate::domain::runs::{Action, RunErrorCode, RunFailure, RunStatus, RunView, Usage};

#[derive(Debug, Clone, Queryable)]
pub struct RunRow {
    pub id: i64,
    pub run_id: String,
    pub project_id: String,
    pub action: String,
    pub input: String,
    pub model: String,
    pub dedup_key: String,
    pub status: String,
    /// Started or joined over REST: runs to its end whoever waits.
    pub pinned: bool,
    /// WebSocket sessions waiting on it, over every process.
    pub waiters: i32,
    pub attempts: i32,
    pub text: String,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_read_tokens: i64,
    pub cache_write_tokens: i64,
    pub cost_micros: i64,
    pub reserved_micros: i64,
    pub error_code: Option<String>,
    pub error: Option<String>,
    pub created_at: NaiveDateTime,
    pub started_at: Option<NaiveDateTime>,
    pub finished_at: Option<NaiveDateTime>,
    pub updated_at: NaiveDateTime,
    /// The player who started it (runs from before players were charged have none).
    pub user_id: Option<i64>,
}

impl RunRow {
    pub fn run_status(&self) -> Option<RunStatus> {
        RunStatus::parse(&self.status)
    }
    pub fn is_active(&self) -> bool {
        self.run_status().is_some_and(RunStatus::is_active)
    }
    fn corrupt(&self, what: &str) -> StoreError {
        StoreError::Corrupt(format!("run {}: {what}", self.run_id))
    }
    /// Its action; an unknown one is [`StoreError::Corrupt`], naming the run.
    pub fn action(&self) -> Result<Action, StoreError> {
        Action::parse(&self.action).ok_or_else(|| self.corrupt("unknown action"))
    }
    /// Why it ended without its text (`None` while it has not); an unknown code is
    /// [`StoreError::Corrupt`], naming the run.
    pub fn failure(&self) -> Result<Option<RunFailure>, StoreError> {
        let Some(code) = &self.error_code else { return Ok(None) };
        let code = RunErrorCode::parse(code).ok_or_else(|| self.corrupt("unknown error code"))?;
        Ok(Some(RunFailure { code, message: self.error.clone().unwrap_or_default() }))
    }
    /// The run as REST clients see it; a row that breaks the rules is [`StoreError::Corrupt`].
    pub fn view(&self) -> Result<RunView, StoreError> {
        Ok(RunView {
            run_id: self.run_id.clone(),
            project_id: self.project_id.clone(),
            action: self.action()?,
            status: self.run_status().ok_or_else(|| self.corrupt("unknown status"))?,
            model: self.model.clone(),
            attempts: self.attempts,
            usage: self.usage(),
            cost_usd: usd(self.cost_micros),
            text: self.text.clone(),
            error: self.failure()?,
            created_at: utc(self.created_at),
            finished_at: self.finished_at.map(utc),
        })
    }

    pub fn usage(&self) -> Usage {
        Usage {
            input_tokens: self.input_tokens.max(0) as u64,
            output_tokens: self.output_tokens.max(0) as u64,
            cache_read_tokens: self.cache_read_tokens.max(0) as u64,
            cache_write_tokens: self.cache_write_tokens.max(0) as u64,
        }
    }
}

fn utc(t: NaiveDateTime) -> DateTime<Utc> {
    DateTime::from_naive_utc_and_offset(t, Utc)
}

#[derive(Insertable)]
#[diesel(table_name = runs)]
struct NewRun<'a> {
    run_id: &'a str,
    project_id: &'a str,
    action: &'a str,
    input: &'a str,
    model: &'a str,
    dedup_key: &'a str,
    status: &'a str,
    pinned: bool,
    waiters: i32,
    reserved_micros: i64,
    error_code: Option<&'a str>,
    error: Option<&'a str>,
    created_at: NaiveDateTime,
    finished_at: Option<NaiveDateTime>,
    updated_at: NaiveDateTime,
    user_id: i64,
}

/// A request to admit, with everything decided outside the transaction.
pub struct Admission<'a> {
    pub run_id: &'a str,
    /// The player starting it.
    pub user_id: i64,
    pub project_id: &'a str,
    pub action: Action,
    pub priority: i32,
    pub input: &'a str,
    pub model: &'a str,
    pub dedup_key: &'a str,
    pub skip_cache: bool,
    pub pinned: bool,
    /// A WebSocket session asks: it waits on the run (created or joined).
    pub waiter: bool,
    pub queue_limit: i64,
    /// Worst-case cost of one attempt, when the model has a price.
    pub worst_case: Option<i64>,
    /// Why no call can be made (no API key, an unknown provider): the run is stored dead at once.
    pub no_config: Option<&'a str>,
    /// The player starting it (its job's turn).
    pub player_id: i64,
    /// For a REST run: refused while the player has this many REST runs queued or running.
    pub unwatched_cap: Option<i64>,
}

#[derive(Debug)]
pub enum Admitted {
    /// An identical run is queued or running: this request joins it.
    Joined(RunRow),
    /// An identical run finished: its text is replayed.
    Cached(RunRow),
    /// A new run, queued with its job (or dead at once with `no_config`).
    Created(RunRow),
    Overloaded,
    /// The player has this many REST runs queued or running already.
    Unwatched(i64),
    BudgetExceeded,
    /// The project has a budget and the model has no price.
    NoPrice,
}

pub fn find(conn: &mut DbConn, run_id: &str) -> StoreResult<Option<RunRow>> {
    Ok(runs::table.filter(runs::run_id.eq(run_id)).first(conn).optional()?)
}

pub fn find_by_id(conn: &mut DbConn, id: i64) -> StoreResult<Option<RunRow>> {
    Ok(runs::table.find(id).first(conn).optional()?)
}

/// Dedup, queue limit, budget reservation and the insert of run + job, in one transaction.
pub fn admit(conn: &mut DbConn, a: &Admission<'_>, now: NaiveDateTime) -> StoreResult<Admitted> {
    match write_tx(conn, |conn| admit_in_tx(conn, a, now)) {
        // PostgreSQL: a concurrent identical request inserted first; join it.
        Err(e) if is_unique_violation(&e) => write_tx(conn, |conn| admit_in_tx(conn, a, now)),
        other => other,
    }
}

/// Whether a request with `dedup_key` would join a queued or running run, or (`cached`) be
/// answered from a finished one: such a request starts no new run.
pub fn would_reuse(conn: &mut DbConn, dedup_key: &str, cached: bool) -> StoreResult<bool> {
    let mut statuses: Vec<&str> = RunStatus::ACTIVE.map(RunStatus::as_str).to_vec();
    if cached {
        statuses.push(RunStatus::Done.as_str());
    }
    let found: i64 = runs::table
        .filter(runs::dedup_key.eq(dedup_key))
        .filter(runs::status.eq_any(statuses))
        .count()
        .get_result(conn)?;
    Ok(found > 0)
}

fn admit_in_tx(conn: &mut DbConn, a: &Admission<'_>, now: NaiveDateTime) -> StoreResult<Admitted> {
    let active: Option<RunRow> = runs::table
        .filter(runs::dedup_key.eq(a.dedup_key))
        .filter(runs::status.eq_any(RunStatus::ACTIVE.map(RunStatus::as_str)))
        .first(conn)
        .optional()?;
    if let Some(row) = active {
        let row = diesel::update(runs::table.find(row.id))
            .set((runs::pinned.eq(row.pinned || a.pinned), runs::waiters.eq(runs::waiters + i32::from(a.waiter))))
            .returning(runs::all_columns)
            .get_result(conn)?;
        return Ok(Admitted::Joined(row));
    }
    if !a.skip_cache {
        let done: Option<RunRow> = runs::table
            .filter(runs::dedup_key.eq(a.dedup_key))
            .filter(runs::status.eq(RunStatus::Done.as_str()))
            .order(runs::id.desc())
            .first(conn)
            .optional()?;
        if let Some(row) = done {
            return Ok(Admitted::Cached(row));
        }
    }
    if let Some(why) = a.no_config {
        let row = insert(conn, a, RunStatus::Dead, 0, Some((RunErrorCode::NoConfig, why)), now)?;
        return Ok(Admitted::Created(row));
    }
    if let Some(cap) = a.unwatched_cap {
        if unwatched(conn, a.player_id)? >= cap {
            return Ok(Admitted::Unwatched(cap));
        }
    }
    if queued_count(conn)? >= a.queue_limit {
        return Ok(Admitted::Overloaded);
    }
    let mut reserved = 0;
    if billing::budget(conn, a.project_id)?.is_some() {
        let Some(amount) = a.worst_case else { return Ok(Admitted::NoPrice) };
        if !billing::reserve(conn, a.project_id, amount, now)? {
            return Ok(Admitted::BudgetExceeded);
        }
        reserved = amount;
    }
    let row = insert(conn, a, RunStatus::Queued, reserved, None, now)?;
    jobs::enqueue_for(conn, JobKind::Run, row.id, jobs::Place::new(a.priority, a.player_id), now)?;
    Ok(Admitted::Created(row))
}

fn insert(
    conn: &mut DbConn,
    a: &Admission<'_>,
    status: RunStatus,
    reserved: i64,
    error: Option<(RunErrorCode, &str)>,
    now: NaiveDateTime,
) -> StoreResult<RunRow> {
    let code = error.map(|(c, _)| c.to_string());
    Ok(diesel::insert_into(runs::table)
        .values(NewRun {
            run_id: a.run_id,
            project_id: a.project_id,
            action: a.action.as_str(),
            input: a.input,
            model: a.model,
            dedup_key: a.dedup_key,
            status: status.as_str(),
            pinned: a.pinned,
            waiters: i32::from(a.waiter && status.is_active()),
            reserved_micros: reserved,
            error_code: code.as_deref(),
            error: error.map(|(_, e)| e),
            created_at: now,
            finished_at: (!status.is_active()).then_some(now),
            updated_at: now,
            user_id: a.user_id,
        })
        .returning(runs::all_columns)
        .get_result(conn)?)
}

/// A session stops waiting on a run. `Some(row)` when it was the last waiting session of an
/// unfinished WebSocket run (not pinned by REST): the caller aborts it.
pub fn detach(conn: &mut DbConn, run_id: &str) -> StoreResult<Option<RunRow>> {
    let row: Option<RunRow> = diesel::update(runs::table.filter(runs::run_id.eq(run_id)).filter(runs::waiters.gt(0)))
        .set(runs::waiters.eq(runs::waiters - 1))
        .returning(runs::all_columns)
        .get_result(conn)
        .optional()?;
    Ok(row.filter(|r| r.waiters == 0 && !r.pinned && r.is_active()))
}

/// Runs waiting in the queue (not running).
/// The player's REST runs (pinned: they run to their end unwatched) queued or running.
pub fn unwatched(conn: &mut DbConn, player_id: i64) -> StoreResult<i64> {
    let rest_runs = runs::table.select(runs::id).filter(runs::pinned.eq(true));
    Ok(jobs_t::table
        .filter(jobs_t::kind.eq(JobKind::Run.as_str()))
        .filter(jobs_t::player_id.eq(player_id))
        .filter(jobs_t::status.eq_any([JobStatus::Queued.as_str(), JobStatus::Running.as_str()]))
        .filter(jobs_t::target_id.eq_any(rest_runs))
        .count()
        .get_result(conn)?)
}

pub fn queued_count(conn: &mut DbConn) -> StoreResult<i64> {
    Ok(runs::table.filter(runs::status.eq(RunStatus::Queued.as_str())).count().get_result(conn)?)
}

/// Queued run jobs that will be claimed before this run's job, in the claim's order: higher
/// priority, then an earlier turn (players take turns), then older.
pub fn position(conn: &mut DbConn, run_pk: i64) -> StoreResult<i64> {
    let job: Option<(i64, i32, i64)> = jobs_t::table
        .filter(jobs_t::kind.eq(JobKind::Run.as_str()))
        .filter(jobs_t::target_id.eq(run_pk))
        .select((jobs_t::id, jobs_t::priority, jobs_t::turn))
        .first(conn)
        .optional()?;
    let Some((job_id, priority, turn)) = job else { return Ok(0) };
    let same_turn_before = jobs_t::turn.eq(turn).and(jobs_t::id.lt(job_id));
    let same_priority_before = jobs_t::priority.eq(priority).and(jobs_t::turn.lt(turn).or(same_turn_before));
    Ok(jobs_t::table
        .filter(jobs_t::kind.eq(JobKind::Run.as_str()))
        .filter(jobs_t::status.eq(JobStatus::Queued.as_str()))
        .filter(jobs_t::priority.gt(priority).or(same_priority_before))
        .count()
        .get_result(conn)?)
}

/// Mean duration of the last runs that finished, in ms (for `estimated_ms`).
pub fn recent_duration_ms(conn: &mut DbConn) -> StoreResult<Option<i64>> {
    let recent: Vec<(Option<NaiveDateTime>, Option<NaiveDateTime>)> = runs::table
        .filter(runs::status.eq(RunStatus::Done.as_str()))
        .order(runs::id.desc())
        .limit(20)
        .select((runs::started_at, runs::finished_at))
        .load(conn)?;
    let spans: Vec<i64> =
        recent.into_iter().filter_map(|(s, f)| Some((f? - s?).num_milliseconds())).filter(|ms| *ms >= 0).collect();
    Ok((!spans.is_empty()).then(|| spans.iter().sum::<i64>() / spans.len() as i64))
}

#[derive(Debug)]
pub enum Requeued {
    Queued(Box<RunRow>),
    NotDead,
    NotFound,
    /// An identical run is queued or running already.
    Duplicate,
    BudgetExceeded,
    /// `queue_limit` runs are queued already.
    Overloaded,
}

/// Re-queues a dead run (admin): attempts start again from zero. The queue limit holds here
/// as it does for new runs.
pub fn retry_dead(
    conn: &mut DbConn,
    run_id: &str,
    worst_case: Option<i64>,
    queue_limit: i64,
    now: NaiveDateTime,
) -> StoreResult<Requeued> {
    let result = write_tx(conn, |conn| {
        let Some(row) = find(conn, run_id)? else { return Ok(Requeued::NotFound) };
        if row.run_status() != Some(RunStatus::Dead) {
            return Ok(Requeued::NotDead);
        }
        // A run whose action this version does not know cannot run again.
        let Ok(action) = row.action() else { return Ok(Requeued::NotDead) };
        if queued_count(conn)? >= queue_limit {
            return Ok(Requeued::Overloaded);
        }
        let mut reserved = 0;
        if billing::budget(conn, &row.project_id)?.is_some() {
            match worst_case {
                Some(amount) if billing::reserve(conn, &row.project_id, amount, now)? => reserved = amount,
                _ => return Ok(Requeued::BudgetExceeded),
            }
        }
        let row = diesel::update(runs::table.find(row.id))
            .set((
                runs::status.eq(RunStatus::Queued.as_str()),
                runs::attempts.eq(0),
                runs::reserved_micros.eq(reserved),
                runs::error_code.eq(None::<String>),
                runs::error.eq(None::<String>),
                runs::finished_at.eq(None::<NaiveDateTime>),
                runs::updated_at.eq(now),
            ))
            .returning(runs::all_columns)
            .get_result::<RunRow>(conn)?;
        jobs::enqueue(conn, JobKind::Run, row.id, action.priority(), now)?;
        Ok(Requeued::Queued(Box::new(row)))
    });
    match result {
        Err(e) if is_unique_violation(&e) => Ok(Requeued::Duplicate),
        other => other,
    }
}

/// The admin's run list, newest first.
pub fn list(
    conn: &mut DbConn,
    project_id: Option<&str>,
    status: Option<RunStatus>,
    limit: i64,
) -> StoreResult<Vec<RunRow>> {
    let mut query = runs::table.order(runs::id.desc()).limit(limit).into_boxed();
    if let Some(p) = project_id {
        query = query.filter(runs::project_id.eq(p.to_owned()));
    }
    if let Some(s) = status {
        query = query.filter(runs::status.eq(s.as_str()));
    }
    Ok(query.load(conn)?)
}

/// A listed row that could not be read: its run id (or `#<row id>` when even that cannot be
/// read) and why.
#[derive(Debug, Clone)]
pub struct Unreadable {
    pub run_id: String,
    pub error: String,
}

/// [`list`], which a row Diesel cannot read does not break: then every row is read alone, and
/// those that fail are named instead.
pub fn list_readable(
    conn: &mut DbConn,
    project_id: Option<&str>,
    status: Option<RunStatus>,
    limit: i64,
) -> StoreResult<(Vec<RunRow>, Vec<Unreadable>)> {
    match list(conn, project_id, status, limit) {
        Err(StoreError::Query(diesel::result::Error::DeserializationError(_))) => {}
        other => return other.map(|rows| (rows, Vec::new())),
    }
    let mut query = runs::table.select(runs::id).order(runs::id.desc()).limit(limit).into_boxed();
    if let Some(p) = project_id {
        query = query.filter(runs::project_id.eq(p.to_owned()));
    }
    if let Some(s) = status {
        query = query.filter(runs::status.eq(s.as_str()));
    }
    let (mut rows, mut unreadable) = (Vec::new(), Vec::new());
    for id in query.load::<i64>(conn)? {
        match runs::table.find(id).first::<RunRow>(conn) {
            Ok(row) => rows.push(row),
            Err(diesel::result::Error::DeserializationError(e)) => {
                let run_id = runs::table.find(id).select(runs::run_id).first::<String>(conn);
                let run_id = run_id.unwrap_or_else(|_| format!("#{id}"));
                unreadable.push(Unreadable { run_id, error: e.to_string() });
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok((rows, unreadable))
}

/// Runs by status (admin summary).
pub fn count_by_status(conn: &mut DbConn) -> StoreResult<Vec<(String, i64)>> {
    Ok(runs::table.group_by(runs::status).select((runs::status, diesel::dsl::count_star())).load(conn)?)
}

/// Announces a run's end to the other processes; call inside the transaction that commits it.
pub(super) fn run_ended(conn: &mut DbConn, origin: &str, run_id: &str) -> StoreResult<()> {
    notify::send(conn, &Event::RunEnded { origin: origin.to_owned(), run_id: run_id.to_owned() })
}

/// Gives a run job to each queued or running run that has none ([`jobs::adopt`]), at its
/// action's priority.
pub fn adopt_orphans(conn: &mut DbConn, now: NaiveDateTime) -> StoreResult<usize> {
    let has_job = jobs_t::table.filter(jobs_t::kind.eq(JobKind::Run.as_str())).filter(jobs_t::target_id.eq(runs::id));
    let orphans: Vec<(i64, String)> = crate::on_backend!(conn, |c| runs::table
        .filter(runs::status.eq_any(RunStatus::ACTIVE.map(RunStatus::as_str)))
        .filter(diesel::dsl::not(diesel::dsl::exists(has_job)))
        .select((runs::id, runs::action))
        .limit(jobs::ADOPT_BATCH)
        .load(c))?;
    let priority = |action: &str| Action::parse(action).map_or(Action::Describe.priority(), Action::priority);
    jobs::adopt(conn, JobKind::Run, orphans.iter().map(|(id, action)| (*id, priority(action))), now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(action: &str, status: &str, error_code: Option<&str>) -> RunRow {
        let t = chrono::DateTime::from_timestamp(0, 0).unwrap().naive_utc();
        RunRow {
            id: 1,
            run_id: "r1".into(),
            project_id: "p1".into(),
            action: action.into(),
            input: "a dragon".into(),
            model: "m".into(),
            dedup_key: "k".into(),
            status: status.into(),
            pinned: false,
            waiters: 0,
            attempts: 1,
            text: String::new(),
            input_tokens: 0,
            output_tokens: 0,
            cache_read_tokens: 0,
            cache_write_tokens: 0,
            cost_micros: 0,
            reserved_micros: 0,
            error_code: error_code.map(str::to_owned),
            error: error_code.map(|_| "why".to_owned()),
            created_at: t,
            started_at: None,
            finished_at: None,
            updated_at: t,
            user_id: None,
        }
    }

    fn corrupt_message(e: StoreError) -> String {
        match e {
            StoreError::Corrupt(why) => why,
            other => panic!("not corrupt: {other:?}"),
        }
    }

    #[test]
    fn a_row_reads_as_its_domain_types() {
        let dead = row("REWRITE", "dead", Some("api_error_503"));
        assert_eq!(dead.action().unwrap(), Action::Rewrite);
        assert_eq!(dead.run_status(), Some(RunStatus::Dead));
        assert!(!dead.is_active());
        let failure = RunFailure { code: RunErrorCode::ApiError(503), message: "why".into() };
        assert_eq!(dead.failure().unwrap(), Some(failure.clone()));
        let view = dead.view().unwrap();
        assert_eq!((view.action, view.status, view.error), (Action::Rewrite, RunStatus::Dead, Some(failure)));
        assert_eq!(row("WRITE", "running", None).failure().unwrap(), None);
        assert!(row("WRITE", "queued", None).is_active());
    }

    #[test]
    fn a_corrupt_value_is_an_error_naming_the_run() {
        assert_eq!(corrupt_message(row("SING", "done", None).action().unwrap_err()), "run r1: unknown action");
        assert_eq!(corrupt_message(row("SING", "done", None).view().unwrap_err()), "run r1: unknown action");
        assert_eq!(corrupt_message(row("WRITE", "sleeping", None).view().unwrap_err()), "run r1: unknown status");
        let odd_code = row("WRITE", "dead", Some("gremlins"));
        assert_eq!(corrupt_message(odd_code.failure().unwrap_err()), "run r1: unknown error code");
        assert_eq!(corrupt_message(odd_code.view().unwrap_err()), "run r1: unknown error code");
    }
}
