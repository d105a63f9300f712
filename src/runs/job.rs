//! The run job: one attempt of a generation run for a claimed `run` job.
//!
//! Order: the budget reservation is made sure of, the attempt routed to an upstream whose circuit
//! permits it (`llm::route`: one this run has not failed on first; no permit anywhere puts the
//! run back without counting an attempt), the attempt counted, the answer streamed (every delta
//! recorded for late subscribers and published), and the attempt's end committed in one
//! transaction (usage, cost event, budget settlement, job deleted or handed back with backoff)
//! before any client hears of it. When no attempt is left after failures on lorewire's side,
//! the run goes `dead`. Never holds a DB connection across the upstream call.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures_util::future::LocalBoxFuture;

use super::checked::Held;
use super::live::LiveRuns;
use super::relay::Relay;
use super::service::{publish, run_target};
use super::{estimate_tokens, prompt_token_bound, RunErrorCode, RunStatus, Usage};
use crate::core::clock::{to_chrono, SharedClock};
use crate::core::metrics::Metrics;
use crate::core::process::ProcessId;
use crate::core::usage::UsageConfig;
use crate::deps::Deps;
use crate::domain::limits::{Level, Refusal};
use crate::domain::wire::Typed;
use crate::hub::Hub;
use crate::jobs::{backoff, nothing_to_do, Adopter, Claim, JobHandler, JobKind, JobResult, Outcome};
use crate::limits::observe::{self, Charged};
use crate::limits::{self, Spend};
use crate::llm::circuit::{self, CircuitBreaker, Report};
use crate::llm::providers::{self, TextPrompt};
use crate::llm::route;
use crate::llm::stream::{self, StreamEnd, StreamLimits};
use crate::llm::upstreams::Upstreams;
use crate::moderation::Moderation;
use crate::store::run_attempts::{self as attempts, AttemptEnd};
use crate::store::runs::{self as rows, RunRow};
use crate::store::{billing, upstreams, Store, StoreError};

mod attempt;
mod upstream;

use attempt::{Attempt, Crew, Emitter};

/// The settings an attempt follows.
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_output_tokens: u32,
    /// Wait for the headers, and the longest silence inside the stream.
    llm_timeout: Duration,
    run_total: Duration,
    retry_base: Duration,
    max_attempts: u32,
}

/// Runs `run` jobs.
pub struct RunJob {
    /// This process (cross-process notifications).
    origin: ProcessId,
    store: Store,
    hub: Addr<Hub>,
    /// The first upstream's circuit, which paces a run waiting for the provider.
    circuit: Addr<CircuitBreaker>,
    routing: upstream::Routing,
    clock: SharedClock,
    metrics: Arc<Metrics>,
    client: awc::Client,
    live: Arc<LiveRuns>,
    /// Sends the frames to the other processes (PostgreSQL).
    relay: Option<Arc<Relay>>,
    limits: Limits,
    /// Checks run text before it is released (when it is on).
    moderation: Moderation,
    moderation_window: usize,
    /// The usage limits' seed (PROTOCOL §5).
    usage: UsageConfig,
}

impl RunJob {
    /// The parts an attempt's end and wait use.
    fn crew(&self) -> Crew<'_> {
        Crew {
            origin: &self.origin,
            store: &self.store,
            hub: &self.hub,
            circuit: &self.circuit,
            clock: &self.clock,
            metrics: &self.metrics,
            live: &self.live,
            relay: self.relay.as_ref(),
        }
    }

    /// The job handler of runs: streams through `client` from the upstream each attempt is
    /// routed to, keeps the frames in `live`.
    pub fn new(
        deps: &Deps,
        upstreams: Upstreams,
        client: awc::Client,
        live: Arc<LiveRuns>,
        moderation: Moderation,
    ) -> Self {
        let Deps { process: origin, store, clock, hub, metrics, config } = deps.clone();
        let limits = Limits {
            max_output_tokens: config.max_output_tokens,
            llm_timeout: config.llm_timeout,
            run_total: config.run_total_limit,
            retry_base: config.retry_base,
            max_attempts: config.max_attempts,
        };
        let moderation_window = config.moderation.window;
        let usage = config.usage;
        RunJob {
            origin,
            store,
            hub,
            circuit: upstreams.first().clone(),
            routing: upstream::Routing::new(upstreams),
            clock,
            metrics,
            client,
            live,
            relay: None,
            limits,
            moderation,
            moderation_window,
            usage,
        }
    }

    /// Sends the frames of the runs streamed here to the other processes.
    pub fn with_relay(mut self, relay: Arc<Relay>) -> Self {
        self.relay = Some(relay);
        self
    }

    /// No attempt is left: the run goes `dead` (`internal_error`), its reservation released, in
    /// the transaction that removes the job, and its sessions hear `run:error`.
    async fn give_up(&self, claim: Claim) -> JobResult {
        let run_pk = claim.target_id;
        let (row, price) = self
            .store
            .run(move |conn| {
                let row = rows::find_by_id(conn, run_pk)?;
                let price = match &row {
                    Some(r) => billing::price(conn, &r.model)?,
                    None => None,
                };
                Ok((row, price))
            })
            .await?;
        let Some(row) = row.filter(|r| r.is_active()) else {
            return nothing_to_do(&self.store, &claim).await;
        };
        // The last attempt may have been cut short too: it is charged all the same (its
        // reservation alone when the run's action cannot be read).
        let worst_case = self.prompt(&row).ok().and_then(|prompt| {
            price.map(|p| p.worst_case(prompt_token_bound(&prompt.system, &prompt.user), u64::from(prompt.max_tokens)))
        });
        let row = self.charge_cut(row, worst_case).await?;
        let ctx = Attempt { d: self.crew(), claim: &claim, run_pk, run_id: &row.run_id, model: &row.model };
        let end = AttemptEnd::Dead {
            code: RunErrorCode::Internal,
            message: "the run failed on the server's side and its attempts are spent".into(),
        };
        ctx.end(row.attempts, Usage::default(), 0, end).await
    }

    /// What the run asks the model.
    fn prompt(&self, row: &RunRow) -> Result<TextPrompt, StoreError> {
        let action = row.action()?;
        Ok(TextPrompt {
            system: action.system_prompt().to_owned(),
            user: action.user_message(&row.input),
            max_tokens: self.limits.max_output_tokens,
        })
    }

    /// A run still `running` when it is claimed had its last attempt cut short (its process
    /// died, or lost the job): that attempt is charged what it held at every level (the
    /// project's reservation, else `worst_case`; the player's and the studio's holds as
    /// reserved), and the same is reserved again for the next one where it fits, in one
    /// transaction (PROTOCOL §5). The run as it is now.
    async fn charge_cut(&self, row: RunRow, worst_case: Option<i64>) -> Result<RunRow, StoreError> {
        if row.run_status() != Some(RunStatus::Running) {
            return Ok(row);
        }
        let (run_pk, target, now) = (row.id, run_target(&row.run_id), self.clock.now_naive());
        let usage = self.usage;
        let (cut, charged) = self
            .store
            .write_for(row.user_id.unwrap_or(0), move |conn| {
                let Some(cut) = attempts::charge_cut(conn, run_pk, worst_case.unwrap_or(0), now)? else {
                    return Ok((None, Charged::default()));
                };
                // Refused again: the attempt's own reservation refuses it (budget_exceeded).
                let (charged, _) = limits::charge_cut(conn, &usage, &target, now)?;
                Ok((Some(cut), charged))
            })
            .await?;
        charged.record(&self.metrics);
        let Some(cut) = cut else { return Ok(row) };
        tracing::warn!(run = %cut.run_id, attempt = cut.attempts, charged_micros = cut.cost_micros - row.cost_micros,
            "an attempt cut short is charged what it held");
        Ok(cut)
    }

    /// Runs one attempt of the run behind `claim`; every `Ok` path ended the job (committed)
    /// or handed it back.
    async fn execute(&self, claim: Claim) -> JobResult {
        let run_pk = claim.target_id;
        let (row, rows_up, price, budgeted) = self
            .store
            .run(move |conn| {
                let row = rows::find_by_id(conn, run_pk)?;
                let (price, budgeted) = match &row {
                    Some(r) => (billing::price(conn, &r.model)?, billing::budget(conn, &r.project_id)?.is_some()),
                    None => (None, false),
                };
                Ok((row, upstreams::all(conn)?, price, budgeted))
            })
            .await?;
        let Some(row) = row.filter(|r| r.is_active()) else {
            return nothing_to_do(&self.store, &claim).await;
        };
        let prompt = self.prompt(&row)?;
        let worst_case =
            price.map(|p| p.worst_case(prompt_token_bound(&prompt.system, &prompt.user), u64::from(prompt.max_tokens)));
        let row = self.charge_cut(row, worst_case).await?;
        let run_id = row.run_id.clone();
        let mut cancel = self.live.cancel_signal(&run_id);
        let ctx = Attempt { d: self.crew(), claim: &claim, run_pk, run_id: &run_id, model: &row.model };
        if *cancel.borrow() {
            return ctx.end(row.attempts, Usage::default(), 0, AttemptEnd::Aborted).await;
        }

        if let Some(why) = route::no_upstream(&rows_up) {
            // Lorewire's words: no key, or a stored provider this version does not know.
            let end = AttemptEnd::Dead { code: RunErrorCode::NoConfig, message: why.to_string() };
            return ctx.end(row.attempts, Usage::default(), 0, end).await;
        }

        // The reservation first: waiting on the circuit keeps it, so the run cannot be refused later.
        // (Skipped, saving a write, when the run holds one already or its project has no budget.)
        let now = self.clock.now_naive();
        let reserved = if row.reserved_micros > 0 || !budgeted {
            attempts::Reservation::Held
        } else {
            self.store.write(move |conn| attempts::ensure_reservation(conn, run_pk, worst_case, now)).await?
        };
        match reserved {
            attempts::Reservation::Gone => return nothing_to_do(&self.store, &claim).await,
            attempts::Reservation::NoBudget => {
                observe::refused(&self.metrics, &Refusal::over(Level::Project, "USD"));
                let end = AttemptEnd::Dead {
                    code: RunErrorCode::BudgetExceeded,
                    message: "another attempt could take the project past its budget".into(),
                };
                return ctx.end(row.attempts, Usage::default(), 0, end).await;
            }
            attempts::Reservation::Held => {}
        }

        // The player's, the project's day and the studio's share of this attempt: reserved at
        // admission for the first, again for each later one (the last was settled).
        if let Some(user_id) = row.user_id {
            let (target, model, usage) = (run_target(&run_id), row.model.clone(), self.usage);
            let project = row.project_id.clone();
            let prompt_tokens = i64::try_from(prompt_token_bound(&prompt.system, &prompt.user)).unwrap_or(i64::MAX);
            let output_tokens = i64::from(prompt.max_tokens);
            let ensured = self
                .store
                .write_for(claim.player, move |conn| {
                    if limits::holds(conn, &target)? {
                        return Ok(Ok(()));
                    }
                    let project = Some(project.as_str());
                    let spend =
                        Spend { user_id, project, model: &model, target: &target, prompt_tokens, output_tokens };
                    limits::reserve(conn, &usage, &spend, now)
                })
                .await?;
            if let Err(refusal) = ensured {
                observe::refused(&self.metrics, &refusal);
                let end = AttemptEnd::Dead { code: RunErrorCode::BudgetExceeded, message: refusal.message };
                return ctx.end(row.attempts, Usage::default(), 0, end).await;
            }
        }

        let upstream::Routed { picked, model, price } =
            match self.routing.next(&self.store, &rows_up, &row, price).await? {
                Ok(routed) => routed,
                Err(refusal) => return ctx.wait(format!("{refusal}"), false).await,
            };
        let route::Picked { row: upstream, credentials, circuit: upstream_circuit, probe } = picked;
        let (provider, api_key) = (credentials.provider, credentials.api_key.as_str());

        let now = self.clock.now_naive();
        let started = match self.store.write(move |conn| attempts::mark_running(conn, run_pk, now)).await {
            Ok(Some(row)) => row,
            other => {
                // Aborted meanwhile (or the store failed): no call was made.
                upstream_circuit.do_send(Report { probe, outcome: circuit::Outcome::NotCalled });
                other?;
                return nothing_to_do(&self.store, &claim).await;
            }
        };
        let attempt = started.attempts;
        self.live.begin_attempt(&run_id);
        let (version, frame) = publish(
            &self.live,
            &self.hub,
            &run_id,
            Typed::RunStarted {
                run_id: run_id.clone(),
                model: model.clone(),
                attempt: (attempt > 1).then_some(attempt),
            }
            .into(),
        );
        if let Some(relay) = &self.relay {
            relay.forward(&run_id, version, &frame, true);
        }
        tracing::info!(run = %run_id, attempt, upstream = upstream.id, provider = provider.as_str(), model = %model,
            "run attempt started");

        let request = providers::build_stream_request(&credentials.target(&model), &prompt);
        let limits = StreamLimits {
            headers: self.limits.llm_timeout,
            idle: self.limits.llm_timeout,
            total: self.limits.run_total,
        };
        let attempt_started = std::time::Instant::now();
        let mut text = String::new();
        let emitter = Emitter {
            live: &self.live,
            hub: &self.hub,
            relay: self.relay.as_ref(),
            run_id: &run_id,
            seq: Cell::new(0),
            first_delta: &self.metrics.run_first_delta,
            started: attempt_started,
        };
        // With moderation on, deltas wait until a check has passed them.
        let held = self.moderation.is_on().then(Held::default);
        // The text never passes its bound: past it the stream is stopped and the run ends with
        // what fits (an upstream that ignores the token limit cannot fill memory or the row).
        let max_text = super::max_text_bytes(self.limits.max_output_tokens);
        let mut cut = false;
        let streaming = async {
            let outcome = stream::stream(&self.client, &request, provider, limits, &mut cancel, |delta| {
                if cut {
                    return;
                }
                let delta = super::cut_to(&delta, max_text - text.len());
                if text.len() + delta.len() >= max_text {
                    cut = true;
                    self.live.cancel(&run_id);
                }
                if cut && delta.is_empty() {
                    return;
                }
                text.push_str(delta);
                match &held {
                    Some(held) => held.push(delta),
                    None => emitter.emit(delta),
                }
            })
            .await;
            if let Some(held) = &held {
                held.close();
            }
            outcome
        };
        let releasing = async {
            let Some(held) = &held else { return false };
            let stop = || self.live.cancel(&run_id);
            held.release_checked(&self.moderation, None, self.moderation_window, |t| emitter.emit(t), stop).await
        };
        let (outcome, flagged) = futures_util::future::join(streaming, releasing).await;

        // What was consumed: reported counts, else estimated (input from the prompt, output from
        // the text received), only when the provider answered at all.
        let mut usage = outcome.usage;
        if outcome.answered {
            if !outcome.input_reported && usage.input_tokens + usage.cache_read_tokens + usage.cache_write_tokens == 0 {
                usage.input_tokens = ((prompt.system.len() + prompt.user.len()) as u64).div_ceil(4);
            }
            if !outcome.output_reported {
                // The provider stops at the max tokens asked for: an estimate above it over-charges.
                let max_output = u64::from(self.limits.max_output_tokens);
                usage.output_tokens = usage.output_tokens.max(estimate_tokens(&text)).min(max_output);
            }
        }
        let cost = price.map(|p| p.cost(&usage)).unwrap_or(0);

        // A cancelled stream lasted as long as its listeners, not as long as the provider took.
        if !matches!(outcome.end, StreamEnd::Cancelled) {
            self.metrics.upstream_seconds.observe(attempt_started.elapsed().as_secs_f64());
        }
        let circuit_outcome = match &outcome.end {
            StreamEnd::Finished => circuit::Outcome::Success,
            StreamEnd::Cancelled if outcome.answered => circuit::Outcome::Success,
            StreamEnd::Cancelled => circuit::Outcome::NotCalled,
            StreamEnd::Upstream(e) => e.circuit_outcome(),
            // A 2xx stream that cannot be read: the provider is up; the failure is this run's.
            StreamEnd::Invalid(_) => circuit::Outcome::Success,
            // An in-stream error about the request (a prompt refused): the provider is up.
            StreamEnd::ProviderError { server_side: false, .. } => circuit::Outcome::Success,
            StreamEnd::Cut(_) | StreamEnd::Timeout | StreamEnd::ProviderError { .. } => circuit::Outcome::Failure,
        };
        upstream_circuit.do_send(Report { probe, outcome: circuit_outcome });
        self.routing.ended(run_pk, upstream.id, &outcome.end);

        if flagged {
            // The provider answered; what it wrote is not for players. Charged, not retried.
            tracing::info!(run = %run_id, attempt, "run text flagged by moderation; the run ends");
            self.routing.upstreams.call_ended(upstream.id, "ok");
            let code = RunErrorCode::Moderated;
            return ctx.end(attempt, usage, cost, AttemptEnd::Dead { code, message: code.player_message() }).await;
        }
        if cut {
            tracing::warn!(run = %run_id, attempt, bytes = text.len(), "run text reached its bound; the stream was stopped");
            self.routing.answered(&self.store, &self.clock, upstream).await;
            return ctx.end(attempt, usage, cost, AttemptEnd::Done { text }).await;
        }
        let (code, detail) = match outcome.end {
            StreamEnd::Finished => {
                self.routing.answered(&self.store, &self.clock, upstream).await;
                return ctx.end(attempt, usage, cost, AttemptEnd::Done { text }).await;
            }
            StreamEnd::Cancelled => return ctx.end(attempt, usage, cost, AttemptEnd::Aborted).await,
            StreamEnd::Upstream(e) if e.is_rate_limit() => {
                self.routing.upstreams.call_ended(upstream.id, "rate_limited");
                // Throttled, not failed: the run waits without spending an attempt.
                return ctx.wait(e.redacted(api_key), true).await;
            }
            StreamEnd::Upstream(e) => (e.failure().into(), e.redacted(api_key)),
            StreamEnd::Cut(why) => (RunErrorCode::StreamCut, why),
            StreamEnd::Timeout => (RunErrorCode::Timeout, "the stream went silent or took too long".into()),
            StreamEnd::ProviderError { message, .. } => (RunErrorCode::StreamError, message),
            StreamEnd::Invalid(why) => (RunErrorCode::InvalidResponse, why),
        };
        // The provider's own text goes to the log and the admin's `last_error`; players read
        // lorewire's words for the code (the run's stored `error`, `run:error`).
        let detail = crate::llm::redact(&detail, api_key);
        tracing::warn!(run = %run_id, attempt, code = %code, error = %detail, "run attempt failed");
        self.routing.failed(&self.store, &self.clock, upstream.id, code, &detail).await;
        let message = code.player_message();
        // The run's attempts (shown to clients) and the job's (failures on our side count too)
        // agree unless something went wrong on our side; the larger decides, so neither passes
        // the cap.
        let spent = u32::try_from(attempt).unwrap_or(0).max(claim.attempt).max(1);
        if spent < self.limits.max_attempts {
            // Moving to another upstream does not wait for the backoff (PROTOCOL §7).
            let delay = match self.routing.elsewhere(&rows_up, run_pk) {
                true => Duration::ZERO,
                false => backoff(self.limits.retry_base, spent),
            };
            let run_after = self.clock.now_naive() + to_chrono(delay);
            let end = AttemptEnd::Retry { run_after, code, message };
            return Ok(match ctx.end(attempt, usage, cost, end).await? {
                Outcome::Done => Outcome::Later(delay),
                other => other,
            });
        }
        ctx.end(attempt, usage, cost, AttemptEnd::Dead { code, message }).await
    }
}

impl JobHandler for RunJob {
    fn kind(&self) -> JobKind {
        JobKind::Run
    }

    fn adopter(&self) -> Option<Adopter> {
        Some(crate::store::runs::adopt_orphans)
    }

    fn run(self: Rc<Self>, claim: Claim) -> LocalBoxFuture<'static, JobResult> {
        Box::pin(async move { self.execute(claim).await })
    }

    fn give_up(self: Rc<Self>, claim: Claim) -> LocalBoxFuture<'static, JobResult> {
        Box::pin(async move { RunJob::give_up(&self, claim).await })
    }

    /// Forgets the runs this process no longer streams, even when no run changes here.
    fn tick(&self) {
        self.live.prune();
        self.routing.tick();
    }
}
