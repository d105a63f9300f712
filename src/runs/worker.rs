//! One attempt of a generation run, executed by the LLM actor for a claimed `run` job.
//!
//! Order: the budget reservation is made sure of, the circuit breaker asked (a refusal puts the
//! run back without counting an attempt), the attempt counted, the answer streamed (every delta
//! recorded for late subscribers and published), and the attempt's end committed in one
//! transaction (usage, cost event, budget settlement, job deleted or handed back with backoff)
//! before any client hears of it. Never holds a DB connection across the upstream call.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use rand::Rng;

use super::live::LiveRuns;
use super::relay::{self, Relay};
use super::service::{finish, publish};
use super::{estimate_tokens, prompt_token_bound, usd, Action, RunErrorCode, RunStatus, Usage};
use crate::core::clock::SharedClock;
use crate::core::config::Config;
use crate::core::metrics::Metrics;
use crate::domain::wire::Typed;
use crate::hub::Hub;
use crate::llm::circuit::{Acquire, CircuitBreaker, GetSnapshot, Outcome, Permit, Report};
use crate::llm::providers::{self, TextPrompt};
use crate::llm::stream::{self, StreamEnd, StreamLimits};
use crate::llm::JobsAvailable;
use crate::store::jobs::{self, JobRow};
use crate::store::runs::{self as rows, AttemptEnd, Settlement};
use crate::store::{billing, llm_config, Store, StoreError};

/// Longest wait before a run refused by the circuit looks again (an admin may close it).
const MAX_CIRCUIT_WAIT: Duration = Duration::from_secs(5);
/// Wait while the half-open circuit's single probe is in flight.
const PROBE_WAIT: Duration = Duration::from_millis(200);

/// What one attempt needs, cloned out of the LLM actor.
#[derive(Clone)]
pub struct RunDeps {
    pub store: Store,
    pub hub: Addr<Hub>,
    pub circuit: Addr<CircuitBreaker>,
    pub clock: SharedClock,
    pub metrics: Arc<Metrics>,
    pub config: Arc<Config>,
    pub worker: Arc<str>,
    pub client: awc::Client,
    pub live: Arc<LiveRuns>,
    /// Sends the frames to the other processes (PostgreSQL).
    pub relay: Option<Arc<Relay>>,
    /// Wakes the LLM actor when a delayed retry is due.
    pub wake: Recipient<JobsAvailable>,
}

/// Retry `n` (1, 2, ...) waits a random time in [0.5, 1] x base x 2^(n-1).
pub fn backoff(base: Duration, n: u32) -> Duration {
    let full = base.saturating_mul(2u32.saturating_pow(n.saturating_sub(1)));
    full.mul_f64(rand::rng().random_range(0.5..=1.0))
}

fn chrono_dur(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// Runs one attempt of the run behind `job`; every path ends the job (committed) or hands it
/// back. An `Err` is a failure on our side: the actor hands the job back.
pub async fn execute(d: RunDeps, job: JobRow) -> Result<(), StoreError> {
    let run_pk = job.target_id;
    let (row, config, price, budgeted) = d
        .store
        .run(move |conn| {
            let row = rows::find_by_id(conn, run_pk)?;
            let (price, budgeted) = match &row {
                Some(r) => (billing::price(conn, &r.model)?, billing::budget(conn, &r.project_id)?.is_some()),
                None => (None, false),
            };
            Ok((row, llm_config::get(conn)?, price, budgeted))
        })
        .await?;
    let Some(row) = row.filter(|r| r.is_active()) else {
        let worker = d.worker.clone();
        d.store.run(move |conn| jobs::complete(conn, job.id, &worker)).await?;
        return Ok(());
    };
    let run_id = row.run_id.clone();
    let action =
        Action::parse(&row.action).ok_or_else(|| StoreError::Corrupt(format!("run {run_id}: unknown action")))?;
    let mut cancel = d.live.cancel_signal(&run_id);
    let ctx = Attempt { d: &d, job: &job, run_pk, run_id: &run_id, model: &row.model };
    if *cancel.borrow() {
        return ctx.end(row.attempts, Usage::default(), 0, AttemptEnd::Aborted).await;
    }

    let prompt = TextPrompt {
        system: action.system_prompt().to_owned(),
        user: action.user_message(&row.input),
        max_tokens: d.config.max_output_tokens,
    };
    let Some(credentials) = config.as_ref().and_then(crate::llm::credentials) else {
        let end = AttemptEnd::Dead { code: RunErrorCode::NoConfig, message: "no LLM API key is configured".into() };
        return ctx.end(row.attempts, Usage::default(), 0, end).await;
    };
    let (provider, api_key) = (credentials.provider, credentials.api_key.as_str());
    let worst_case =
        price.map(|p| p.worst_case(prompt_token_bound(&prompt.system, &prompt.user), u64::from(prompt.max_tokens)));

    // The reservation first: waiting on the circuit keeps it, so the run cannot be refused later.
    // (Skipped, saving a write, when the run holds one already or its project has no budget.)
    let now = d.clock.now_naive();
    let reserved = if row.reserved_micros > 0 || !budgeted {
        rows::Reservation::Held
    } else {
        d.store.run(move |conn| rows::ensure_reservation(conn, run_pk, worst_case, now)).await?
    };
    match reserved {
        rows::Reservation::Gone => {
            let worker = d.worker.clone();
            d.store.run(move |conn| jobs::complete(conn, job.id, &worker)).await?;
            return Ok(());
        }
        rows::Reservation::NoBudget => {
            let end = AttemptEnd::Dead {
                code: RunErrorCode::BudgetExceeded,
                message: "another attempt could take the project past its budget".into(),
            };
            return ctx.end(row.attempts, Usage::default(), 0, end).await;
        }
        rows::Reservation::Held => {}
    }

    let probe = match d.circuit.send(Acquire).await {
        Ok(Permit::Call { probe }) => probe,
        Ok(Permit::Refuse(refusal)) => return ctx.wait(format!("{refusal:?}"), false).await,
        Err(_) => return ctx.wait("the circuit breaker is not answering".into(), false).await,
    };

    let now = d.clock.now_naive();
    let started = match d.store.run(move |conn| rows::mark_running(conn, run_pk, now)).await {
        Ok(Some(row)) => row,
        other => {
            // Aborted meanwhile (or the store failed): no call was made.
            d.circuit.do_send(Report { probe, outcome: Outcome::NotCalled });
            let worker = d.worker.clone();
            if matches!(other, Ok(None)) {
                d.store.run(move |conn| jobs::complete(conn, job.id, &worker)).await?;
                return Ok(());
            }
            return other.map(|_| ());
        }
    };
    let attempt = started.attempts;
    d.live.begin_attempt(&run_id);
    let (version, frame) = publish(
        &d.live,
        &d.hub,
        &run_id,
        Typed::RunStarted {
            run_id: run_id.clone(),
            model: row.model.clone(),
            attempt: (attempt > 1).then_some(attempt),
        }
        .into(),
    );
    if let Some(relay) = &d.relay {
        relay.forward(&run_id, version, &frame, true);
    }
    tracing::info!(run = %run_id, attempt, provider = provider.as_str(), model = %row.model, "run attempt started");

    let request = providers::build_stream_request(&credentials.target(&row.model), &prompt);
    let limits =
        StreamLimits { headers: d.config.llm_timeout, idle: d.config.llm_timeout, total: d.config.run_total_limit };
    let attempt_started = std::time::Instant::now();
    let mut text = String::new();
    let mut seq = 0u64;
    let first_delta = d.metrics.run_first_delta.clone();
    let outcome = stream::stream(&d.client, &request, provider, limits, &mut cancel, |delta| {
        if seq == 0 {
            first_delta.observe(attempt_started.elapsed().as_secs_f64());
        }
        text.push_str(&delta);
        // Cut so that each delta fits one cross-process notification, the same on every process.
        for piece in relay::pieces(&delta, relay::MAX_DELTA_BYTES) {
            let frame = Typed::RunDelta { run_id: run_id.clone(), seq, text: piece.to_owned() };
            let (version, frame) = publish(&d.live, &d.hub, &run_id, frame.into());
            if let Some(relay) = &d.relay {
                relay.forward(&run_id, version, &frame, false);
            }
            seq += 1;
        }
    })
    .await;

    // What was consumed: reported counts, else estimated (input from the prompt, output from
    // the text received), only when the provider answered at all.
    let mut usage = outcome.usage;
    if outcome.answered {
        if !outcome.input_reported && usage.input_tokens + usage.cache_read_tokens + usage.cache_write_tokens == 0 {
            usage.input_tokens = ((prompt.system.len() + prompt.user.len()) as u64).div_ceil(4);
        }
        if !outcome.output_reported {
            // The provider stops at the max tokens asked for: an estimate above it over-charges.
            let max_output = u64::from(d.config.max_output_tokens);
            usage.output_tokens = usage.output_tokens.max(estimate_tokens(&text)).min(max_output);
        }
    }
    let cost = price.map(|p| p.cost(&usage)).unwrap_or(0);

    let circuit_outcome = match &outcome.end {
        StreamEnd::Finished => Outcome::Success,
        StreamEnd::Cancelled if outcome.answered => Outcome::Success,
        StreamEnd::Cancelled => Outcome::NotCalled,
        StreamEnd::Upstream(e) => e.circuit_outcome(),
        _ => Outcome::Failure,
    };
    d.circuit.do_send(Report { probe, outcome: circuit_outcome });

    let (code, message) = match outcome.end {
        StreamEnd::Finished => {
            d.metrics.upstream_calls.with_label_values(&["ok"]).inc();
            return ctx.end(attempt, usage, cost, AttemptEnd::Done { text }).await;
        }
        StreamEnd::Cancelled => return ctx.end(attempt, usage, cost, AttemptEnd::Aborted).await,
        StreamEnd::Upstream(e) if e.is_rate_limit() => {
            d.metrics.upstream_calls.with_label_values(&["rate_limited"]).inc();
            // Throttled, not failed: the run waits without spending an attempt.
            return ctx.wait(e.redacted(api_key), true).await;
        }
        StreamEnd::Upstream(e) => (e.failure().into(), e.redacted(api_key)),
        StreamEnd::Cut(why) => (RunErrorCode::StreamCut, why),
        StreamEnd::Timeout => (RunErrorCode::Timeout, "the stream went silent or took too long".into()),
        StreamEnd::ProviderError(why) => (RunErrorCode::StreamError, why),
        StreamEnd::Invalid(why) => (RunErrorCode::InvalidResponse, why),
    };
    let message = crate::llm::redact(&message, api_key);
    d.metrics.upstream_calls.with_label_values(&[&code.to_string()]).inc();
    tracing::warn!(run = %run_id, attempt, code = %code, error = %message, "run attempt failed");
    let end = if attempt < d.config.max_attempts as i32 {
        let delay = backoff(d.config.retry_base, attempt.max(1) as u32);
        let run_after = d.clock.now_naive() + chrono_dur(delay);
        wake_after(&d.wake, delay);
        AttemptEnd::Retry { run_after, code, message }
    } else {
        AttemptEnd::Dead { code, message }
    };
    ctx.end(attempt, usage, cost, end).await
}

/// Wakes the LLM actor when a delayed job is due (it also polls, but more slowly).
fn wake_after(wake: &Recipient<JobsAvailable>, delay: Duration) {
    let wake = wake.clone();
    actix_web::rt::spawn(async move {
        actix_web::rt::time::sleep(delay).await;
        wake.do_send(JobsAvailable);
    });
}

struct Attempt<'a> {
    d: &'a RunDeps,
    job: &'a JobRow,
    run_pk: i64,
    run_id: &'a str,
    model: &'a str,
}

impl Attempt<'_> {
    /// Commits the attempt's end, then tells the clients.
    async fn end(&self, attempt: i32, usage: Usage, cost: i64, end: AttemptEnd) -> Result<(), StoreError> {
        let d = self.d;
        // The other processes hear every frame of the attempt before its end.
        if let Some(relay) = &d.relay {
            relay.flush().await;
        }
        let settlement_end = end.clone();
        let (job_id, run_pk, worker) = (self.job.id, self.run_pk, d.worker.clone());
        let now = d.clock.now_naive();
        let settled = d
            .store
            .run(move |conn| {
                let s = Settlement {
                    origin: &worker,
                    job_id,
                    worker: &worker,
                    run_pk,
                    attempt,
                    usage,
                    cost,
                    end: settlement_end,
                };
                rows::settle(conn, &s, now)
            })
            .await?;
        let Some(row) = settled else {
            tracing::warn!(run = %self.run_id, "run job was taken over by another worker; result dropped");
            return Ok(());
        };
        let run_id = self.run_id.to_owned();
        let status = row.run_status().unwrap_or(RunStatus::Dead);
        if cost > 0 {
            d.metrics.run_cost_micros.with_label_values(&[self.model]).inc_by(cost as u64);
        }
        let frame = match end {
            AttemptEnd::Retry { .. } => return Ok(()),
            AttemptEnd::Done { text } => Typed::RunDone {
                run_id: run_id.clone(),
                text,
                usage: row.usage(),
                cost_usd: usd(row.cost_micros),
                cached: false,
            },
            AttemptEnd::Aborted => Typed::RunError {
                reference: None,
                run_id: run_id.clone(),
                code: RunErrorCode::Aborted.to_string(),
                message: "the run was aborted".into(),
            },
            AttemptEnd::Dead { code, message } => {
                Typed::RunError { reference: None, run_id: run_id.clone(), code: code.to_string(), message }
            }
        };
        d.metrics.runs_finished.with_label_values(&[status.as_str()]).inc();
        tracing::info!(run = %run_id, status = status.as_str(), attempts = row.attempts, cost_micros = row.cost_micros,
            input_tokens = row.input_tokens, output_tokens = row.output_tokens, "run finished");
        publish(&d.live, &d.hub, &run_id, frame.into());
        finish(&d.live, &d.hub, &run_id);
        Ok(())
    }

    /// Puts the run back without counting an attempt, until the circuit or the provider's
    /// `retry-after` lets calls through again.
    async fn wait(&self, why: String, refund: bool) -> Result<(), StoreError> {
        let d = self.d;
        let snapshot = d.circuit.send(GetSnapshot).await.ok();
        let now = d.clock.now();
        let until = snapshot
            .and_then(|s| [s.resets_at, s.retry_after_until].into_iter().flatten().filter(|t| *t > now).max())
            .and_then(|t| (t - now).to_std().ok())
            .unwrap_or(PROBE_WAIT)
            .min(MAX_CIRCUIT_WAIT);
        let run_after = d.clock.now_naive() + chrono_dur(until);
        let (job_id, run_pk, worker, now) = (self.job.id, self.run_pk, d.worker.clone(), d.clock.now_naive());
        tracing::debug!(run = %self.run_id, wait_ms = until.as_millis() as u64, why = %why, "run waits for the provider");
        d.store
            .run(move |conn| {
                let w = rows::Wait { job_id, worker: &worker, run_pk, run_after, why: &why, refund };
                rows::wait(conn, &w, now)
            })
            .await?;
        wake_after(&d.wake, until);
        Ok(())
    }
}

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
