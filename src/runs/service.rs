//! The run service: admits a validated request (dedup, queue limit, budget reservation, the
//! run row and its job in one transaction), wakes the job worker, tracks which sessions wait on
//! which run, and aborts a WebSocket run nobody waits on any more. Never calls the LLM itself.

use std::sync::Arc;

use actix::prelude::*;
use bytestring::ByteString;

pub use super::admit::run_target;
use super::admit::{self, dedup_key};
use super::live::LiveRuns;
use crate::core::clock::SharedClock;
use crate::core::config::Config;
use crate::core::metrics::Metrics;
use crate::core::process::ProcessId;
use crate::deps::Deps;
use crate::domain::limits::{Level, Refusal, RefusalReason};
use crate::domain::money::usd;
use crate::domain::runs::{prompt_token_bound, RunErrorCode, RunRequest, RunStatus, Usage};
use crate::domain::topic::Topic;
use crate::domain::wire::{ServerFrame, Typed};
use crate::hub::{DropTopic, Hub, Publish, SessionId};
use crate::jobs::JobsAvailable;
use crate::limits::rate::{Counted, StartRate};
use crate::limits::{self, observe, Used};
use crate::store::run_attempts;
use crate::store::runs::{self as rows, Admitted, RunRow};
use crate::store::{billing, llm_config, Store, StoreError};

/// Who is asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiter {
    /// A WebSocket session: the run is aborted once no session waits on it.
    Session(SessionId),
    /// A REST call: the run runs to its end.
    Rest,
}

/// Why a run was refused.
#[derive(Debug, thiserror::Error)]
pub enum RunRefused {
    /// A usage limit refused it: the first level that refuses (player, project, studio).
    #[error("{0}")]
    BudgetExceeded(Refusal),
    #[error("{0}")]
    Overloaded(String),
    /// The player's start rate refused it.
    #[error("{0}")]
    RateLimited(Refusal),
    /// The player has `LOREWIRE_PLAYER_UNWATCHED_RUNS` REST runs queued or running.
    #[error("{0}")]
    TooManyUnwatched(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a start request got.
#[derive(Debug)]
pub enum Started {
    /// Queued (or joined, when an identical run was already queued or running).
    Queued { run_id: String, position: i64, estimated_ms: i64, joined: bool },
    /// An identical run finished before: its stored text, at no cost.
    Cached(RunRow),
    /// No API key is configured: the run ended at once.
    NoConfig(RunRow),
}

/// Frames that bring a late subscriber up to date.
pub struct CatchUp {
    /// `(version, frame)`; version `None` for frames rebuilt from the database.
    pub frames: Vec<(Option<i64>, ByteString)>,
    /// The run has ended: nothing more will come.
    pub finished: bool,
}

/// What a session leaving a run led to, once committed.
#[derive(Debug)]
pub enum Left {
    /// Only this session stopped waiting: others still wait, a REST call pinned the run, or it
    /// had ended already.
    Detached,
    /// This session was the last to wait: the run as it ended (`aborted`, or what it ended as
    /// when it finished first).
    Ended(Box<RunRow>),
    /// The run was told to stop; its end was not committed within [`ABORT_WAIT`].
    Stopping,
}

/// Longest wait for an aborted run's end (a run waiting on the circuit looks again within 5 s).
const ABORT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// How often a wait for a run's end reads the run again (an end heard from nowhere, say a
/// process that died, is still seen).
const ABORT_RECHECK: std::time::Duration = std::time::Duration::from_millis(100);

/// Used when no run has finished yet to estimate from.
const DEFAULT_RUN_MS: i64 = 2000;

#[derive(Clone)]
pub struct RunService {
    /// This process (cross-process notifications).
    origin: ProcessId,
    store: Store,
    clock: SharedClock,
    hub: Addr<Hub>,
    jobs: Recipient<JobsAvailable>,
    live: Arc<LiveRuns>,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    /// The per-player start rate, when it is enforced.
    rate: Option<Arc<StartRate>>,
}

fn new_run_id() -> String {
    format!("run_{}", crate::domain::players::new_token().get(..20).unwrap_or("0"))
}

impl RunService {
    /// Runs admitted here are woken on `jobs`; their frames are kept in `live`.
    pub fn new(deps: &Deps, jobs: Recipient<JobsAvailable>, live: Arc<LiveRuns>) -> Self {
        let Deps { process: origin, store, clock, hub, metrics, config } = deps.clone();
        RunService { origin, store, clock, hub, jobs, live, config, metrics, rate: None }
    }

    /// New runs count against the player's start rate `rate`.
    pub fn with_start_rate(mut self, rate: Arc<StartRate>) -> Self {
        self.rate = Some(rate);
        self
    }

    /// Counts a request that would start a new run against the player's start rate; one that
    /// joins a running run or is answered from a finished one costs nothing.
    async fn count_start(&self, req: &RunRequest, by: i64) -> Result<Option<Counted>, RunRefused> {
        let Some(rate) = &self.rate else { return Ok(None) };
        let (config, req) = (self.config.clone(), req.clone());
        let (starts, per_player) = self
            .store
            .run(move |conn| {
                let llm = llm_config::get(conn)?;
                let model = llm.map(|c| c.model).unwrap_or_else(|| config.llm_model.clone());
                let key = dedup_key(&req.project_id, req.action, &model, &req.input);
                let starts = !rows::would_reuse(conn, &key, !req.skip_cache)?;
                Ok((starts, limits::start_rate(&limits::stored_limits(conn, &config.usage)?, &config.usage)))
            })
            .await?;
        rate.remember(per_player);
        if !starts {
            return Ok(None);
        }
        match rate.admit(by, per_player).await {
            Ok(counted) => Ok(Some(counted)),
            Err(refusal) => {
                self.metrics.runs_refused.with_label_values(&["rate_limited"]).inc();
                Err(RunRefused::RateLimited(rate.refused(refusal)))
            }
        }
    }

    /// The project's budget refuses a run (counted).
    fn project_refused(&self, reason: RefusalReason, message: &str) -> RunRefused {
        let refusal = Refusal { level: Level::Project, reason, message: message.into() };
        observe::refused(&self.metrics, &refusal);
        RunRefused::BudgetExceeded(refusal)
    }

    pub fn live(&self) -> &Arc<LiveRuns> {
        &self.live
    }

    /// Admits `player`'s run: its job takes the player's turn, and a REST run is refused while
    /// the player has `LOREWIRE_PLAYER_UNWATCHED_RUNS` REST runs queued or running. A new run
    /// reserves its first attempt's bound for the player and the studio with the project's
    /// budget, in one transaction.
    pub async fn start(&self, req: RunRequest, waiter: Waiter, player: i64) -> Result<Started, RunRefused> {
        let counted = self.count_start(&req, player).await?;
        let started = self.admit(req, waiter, player).await;
        // A start that started nothing (refused with nothing stored, or it joined a run or was
        // answered from one meanwhile) is given back to the player's start rate.
        let new = matches!(started, Ok(Started::Queued { joined: false, .. } | Started::NoConfig(_)));
        if let (Some(rate), Some(counted), false) = (&self.rate, counted, new) {
            rate.give_back(counted);
        }
        started
    }

    async fn admit(&self, req: RunRequest, waiter: Waiter, player: i64) -> Result<Started, RunRefused> {
        let now = self.clock.now_naive();
        let config = self.config.clone();
        let run_id = new_run_id();
        let (admitted, position, avg_ms) = self
            .store
            .write_for(player, move |conn| {
                admit::admit(conn, &config, &req, waiter == Waiter::Rest, player, &run_id, now)
            })
            .await
            .or_else(|e| match e {
                // Over the cap once counted again under the reservation's lock: refused alike.
                StoreError::TooManyUnwatched(cap) => Ok((Admitted::Unwatched(cap), 0, None)),
                other => Err(other),
            })
            .map_err(|e| match e {
                StoreError::OverLimit(refusal) => {
                    self.metrics.runs_refused.with_label_values(&["budget_exceeded"]).inc();
                    observe::refused(&self.metrics, &refusal);
                    RunRefused::BudgetExceeded(refusal)
                }
                other => RunRefused::Store(other),
            })?;
        let (row, joined) = match admitted {
            Admitted::Unwatched(cap) => {
                self.metrics.runs_refused.with_label_values(&["rate_limited"]).inc();
                return Err(RunRefused::TooManyUnwatched(format!(
                    "at most {cap} REST runs of one player may be queued or running at once; wait for one to end"
                )));
            }
            Admitted::Overloaded => {
                self.metrics.runs_refused.with_label_values(&["overloaded"]).inc();
                return Err(RunRefused::Overloaded(format!(
                    "{} runs are queued already; try again later",
                    self.config.queue_limit
                )));
            }
            Admitted::BudgetExceeded => {
                self.metrics.runs_refused.with_label_values(&["budget_exceeded"]).inc();
                return Err(
                    self.project_refused(RefusalReason::OverLimit, "this run could take the project past its budget")
                );
            }
            Admitted::NoPrice => {
                self.metrics.runs_refused.with_label_values(&["no_price"]).inc();
                return Err(self.project_refused(
                    RefusalReason::UnknownPrice,
                    "the model has no price, so a project with a budget cannot use it",
                ));
            }
            Admitted::Cached(row) => {
                tracing::info!(run = %row.run_id, project = %row.project_id, "run answered from cache");
                return Ok(Started::Cached(row));
            }
            Admitted::Created(row) if row.run_status() == Some(RunStatus::Dead) => {
                tracing::warn!(run = %row.run_id, error = row.error.as_deref().unwrap_or(""), "run refused: no usable LLM settings");
                return Ok(Started::NoConfig(row));
            }
            Admitted::Created(row) => (row, false),
            Admitted::Joined(row) => (row, true),
        };
        if !joined {
            self.metrics.runs_queued.inc();
            self.jobs.do_send(JobsAvailable);
        }
        tracing::info!(run = %row.run_id, project = %row.project_id, action = %row.action, joined, position, "run queued");
        let per_slot = avg_ms.unwrap_or(DEFAULT_RUN_MS).max(1);
        let slots = self.config.llm_concurrency.max(1) as i64;
        let estimated_ms = (position / slots + 1) * per_slot;
        Ok(Started::Queued { run_id: row.run_id, position, estimated_ms, joined })
    }

    pub async fn get(&self, run_id: String) -> Result<Option<RunRow>, StoreError> {
        self.store.run(move |conn| rows::find(conn, &run_id)).await
    }

    /// A session stops waiting on a run; the run is aborted when it was started over a
    /// WebSocket and no session (of any process) waits on it any more.
    pub async fn detach(&self, run_id: String, session: SessionId) {
        if let Err(e) = self.leave(run_id.clone(), session, false).await {
            tracing::error!(run = %run_id, session, error = %e, "could not detach from a run");
        }
    }

    /// [`RunService::detach`], answered once what it changed is committed: with `wait_end`, a
    /// run it aborts is waited on until its end is committed (a streaming run ends when its
    /// worker, here or on another process, has settled it).
    pub async fn leave(&self, run_id: String, session: SessionId, wait_end: bool) -> Result<Left, StoreError> {
        tracing::debug!(run = %run_id, session, "session stops waiting on the run");
        let id = run_id.clone();
        if self.store.write(move |conn| rows::detach(conn, &id)).await?.is_none() {
            return Ok(Left::Detached);
        }
        // Heard before the abort is asked for, so an end committed meanwhile is not missed.
        let ends = self.live.ends();
        if let Some(row) = self.abort(run_id.clone()).await? {
            return Ok(Left::Ended(Box::new(row)));
        }
        if !wait_end {
            return Ok(Left::Stopping);
        }
        self.until_ended(run_id, ends).await
    }

    /// Waits (at most [`ABORT_WAIT`]) for a run told to stop to have its end committed.
    async fn until_ended(
        &self,
        run_id: String,
        mut ends: tokio::sync::watch::Receiver<u64>,
    ) -> Result<Left, StoreError> {
        let deadline = tokio::time::Instant::now() + ABORT_WAIT;
        loop {
            ends.mark_unchanged();
            match self.get(run_id.clone()).await? {
                Some(row) if !row.is_active() => return Ok(Left::Ended(Box::new(row))),
                None => return Ok(Left::Detached),
                Some(_) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(run = %run_id, "an aborted run has not ended yet; its session is answered anyway");
                return Ok(Left::Stopping);
            }
            // An end here or heard from another process wakes this; the read again covers any other.
            let _ = tokio::time::timeout(ABORT_RECHECK, ends.changed()).await;
        }
    }

    /// Takes back the count of a session that asked for a run it already waits on.
    pub async fn undo_join(&self, run_id: String, session: SessionId) {
        let id = run_id.clone();
        if let Err(e) = self.store.write(move |conn| rows::detach(conn, &id)).await {
            tracing::error!(run = %run_id, session, error = %e, "could not correct a run's waiters");
        }
    }

    /// Stops a run nobody waits on: `Some` when it was still queued and is now aborted
    /// (committed); else its stream, here or on another process, is told to stop.
    async fn abort(&self, run_id: String) -> Result<Option<RunRow>, StoreError> {
        // Streaming (or about to): the worker sees the signal, stops and charges what it used.
        // A run claimed by another process is told there by `abort_queued` (PostgreSQL).
        self.live.cancel(&run_id);
        let now = self.clock.now_naive();
        let (id, origin) = (run_id.clone(), self.origin.clone());
        let aborted = self
            .store
            .write(move |conn| {
                let row = run_attempts::abort_queued(conn, &origin, &id, now)?;
                if row.is_some() {
                    limits::settle(conn, &run_target(&id), Used::Nothing, now)?;
                }
                Ok(row)
            })
            .await?;
        if let Some(row) = aborted {
            tracing::info!(run = %row.run_id, "queued run aborted: nobody waits on it");
            self.metrics.runs_finished.with_label_values(&[RunStatus::Aborted.as_str()]).inc();
            let frame = Typed::RunError {
                reference: None,
                run_id: row.run_id.clone(),
                code: RunErrorCode::Aborted,
                message: "the run was aborted".into(),
            };
            publish(&self.live, &self.hub, &row.run_id, frame.into());
            finish(&self.live, &self.hub, &row.run_id);
            return Ok(Some(row));
        }
        Ok(None)
    }

    /// Re-queues a dead run (admin), reserving its budget again.
    pub async fn retry_dead(&self, run_id: String) -> Result<rows::Requeued, StoreError> {
        let now = self.clock.now_naive();
        let max_output = u64::from(self.config.max_output_tokens);
        let queue_limit = i64::try_from(self.config.queue_limit).unwrap_or(i64::MAX);
        let result = self
            .store
            .write(move |conn| {
                let Some(row) = rows::find(conn, &run_id)? else { return Ok(rows::Requeued::NotFound) };
                let Ok(action) = row.action() else { return Ok(rows::Requeued::NotDead) };
                let bound = prompt_token_bound(action.system_prompt(), &action.user_message(&row.input));
                let worst_case = billing::price(conn, &row.model)?.map(|p| p.worst_case(bound, max_output));
                rows::retry_dead(conn, &run_id, worst_case, queue_limit, now)
            })
            .await?;
        if let rows::Requeued::Queued(row) = &result {
            tracing::info!(run = %row.run_id, "dead letter re-queued by admin");
            self.jobs.do_send(JobsAvailable);
        }
        Ok(result)
    }

    /// What a late subscriber needs first: the frames of the current attempt when this
    /// process streams the run, else the stored result of a finished run. `None`: no such run.
    pub async fn catch_up(&self, run_id: String) -> Result<Option<CatchUp>, StoreError> {
        let Some(row) = self.get(run_id.clone()).await? else { return Ok(None) };
        if let Some(frames) = self.live.frames(&run_id) {
            let finished = !row.is_active();
            return Ok(Some(CatchUp { frames: frames.into_iter().map(|(v, t)| (Some(v), t)).collect(), finished }));
        }
        if row.is_active() {
            return Ok(Some(CatchUp { frames: Vec::new(), finished: false }));
        }
        Ok(Some(CatchUp { frames: stored_frames(&row, false), finished: true }))
    }
}

/// A finished run rebuilt as frames: started, the text as one delta, then done or error.
/// `cached` answers a duplicate request: no cost, no usage.
pub fn stored_frames(row: &RunRow, cached: bool) -> Vec<(Option<i64>, ByteString)> {
    let frame = |f: ServerFrame| (None, ByteString::from(f.to_json()));
    let mut frames = Vec::new();
    if row.run_status() == Some(RunStatus::Done) {
        frames.push(frame(
            Typed::RunStarted { run_id: row.run_id.clone(), model: row.model.clone(), attempt: None }.into(),
        ));
        if !row.text.is_empty() {
            frames.push(frame(Typed::RunDelta { run_id: row.run_id.clone(), seq: 0, text: row.text.clone() }.into()));
        }
    }
    frames.push(frame(stored_end(row, cached)));
    frames
}

/// The last frame of a finished run (`run:done` or `run:error`), from its row.
pub fn end_frame(row: &RunRow) -> ServerFrame {
    stored_end(row, false)
}

fn stored_end(row: &RunRow, cached: bool) -> ServerFrame {
    match row.run_status() {
        Some(RunStatus::Done) => {
            let (usage, cost) = if cached { (Usage::default(), 0.0) } else { (row.usage(), usd(row.cost_micros)) };
            Typed::RunDone { run_id: row.run_id.clone(), text: row.text.clone(), usage, cost_usd: cost, cached }
        }
        _ => {
            // A row with no readable code (a corrupt one) still ends its subscribers' wait.
            let code = row.failure().ok().flatten().map_or(RunErrorCode::Internal, |f| f.code);
            Typed::RunError {
                reference: None,
                run_id: row.run_id.clone(),
                code,
                message: row.error.clone().unwrap_or_default(),
            }
        }
    }
    .into()
}

/// Records a run frame for late subscribers and sends it to the current ones; returns it as
/// recorded (version, serialized).
pub fn publish(live: &LiveRuns, hub: &Addr<Hub>, run_id: &str, frame: ServerFrame) -> (i64, ByteString) {
    let (version, text) = live.push(run_id, &frame);
    hub.do_send(Publish { topic: Topic::run(run_id), version: Some(version), text: text.clone() });
    (version, text)
}

/// The run ended: its topic goes away after its last frame.
pub fn finish(live: &LiveRuns, hub: &Addr<Hub>, run_id: &str) {
    live.finish(run_id);
    hub.do_send(DropTopic { topic: Topic::run(run_id) });
}
