//! One attempt of a run as the run job drives it: its released text published as `run:delta`
//! frames ([`Emitter`]), and its end committed before any client hears of it, or the run put
//! back to wait for the provider ([`Attempt`]).

use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::core::clock::{to_chrono, SharedClock};
use crate::core::metrics::Metrics;
use crate::core::process::ProcessId;
use crate::domain::limits::Level;
use crate::domain::wire::Typed;
use crate::hub::Hub;
use crate::jobs::{Claim, JobResult, Outcome};
use crate::limits::observe::{self, Charged};
use crate::limits::{self, Used};
use crate::llm::circuit::{CircuitBreaker, GetSnapshot};
use crate::runs::live::LiveRuns;
use crate::runs::relay::{self, Relay};
use crate::runs::service::{finish, publish, run_target};
use crate::runs::{usd, RunErrorCode, RunStatus, Usage};
use crate::store::run_attempts::{self as attempts, AttemptEnd, Settlement};
use crate::store::Store;

/// Longest wait before a run refused by the circuit looks again (an admin may close it).
const MAX_CIRCUIT_WAIT: Duration = Duration::from_secs(5);
/// Wait while the half-open circuit's single probe is in flight.
const PROBE_WAIT: Duration = Duration::from_millis(200);

/// What an attempt's end and wait use of the run job's parts.
#[derive(Clone, Copy)]
pub(super) struct Crew<'a> {
    pub(super) origin: &'a ProcessId,
    pub(super) store: &'a Store,
    pub(super) hub: &'a Addr<Hub>,
    pub(super) circuit: &'a Addr<CircuitBreaker>,
    pub(super) clock: &'a SharedClock,
    pub(super) metrics: &'a Arc<Metrics>,
    pub(super) live: &'a Arc<LiveRuns>,
    pub(super) relay: Option<&'a Arc<Relay>>,
}

/// Publishes the released text of an attempt as `run:delta` frames (to live subscribers here
/// and, through the relay, on the other processes), and times the first one.
pub(super) struct Emitter<'a> {
    pub(super) live: &'a Arc<LiveRuns>,
    pub(super) hub: &'a Addr<Hub>,
    pub(super) relay: Option<&'a Arc<Relay>>,
    pub(super) run_id: &'a str,
    pub(super) seq: Cell<u64>,
    pub(super) first_delta: &'a prometheus::Histogram,
    pub(super) started: std::time::Instant,
}

impl Emitter<'_> {
    pub(super) fn emit(&self, text: &str) {
        if self.seq.get() == 0 {
            self.first_delta.observe(self.started.elapsed().as_secs_f64());
        }
        // Cut so that each delta fits one cross-process notification, the same on every process.
        for piece in relay::pieces(text, relay::MAX_DELTA_BYTES) {
            let seq = self.seq.get();
            let frame = Typed::RunDelta { run_id: self.run_id.to_owned(), seq, text: piece.to_owned() };
            let (version, frame) = publish(self.live, self.hub, self.run_id, frame.into());
            if let Some(relay) = self.relay {
                relay.forward(self.run_id, version, &frame, false);
            }
            self.seq.set(seq + 1);
        }
    }
}

pub(super) struct Attempt<'a> {
    pub(super) d: Crew<'a>,
    pub(super) claim: &'a Claim,
    pub(super) run_pk: i64,
    pub(super) run_id: &'a str,
    pub(super) model: &'a str,
}

impl Attempt<'_> {
    /// Commits the attempt's end, then tells the clients (a retry tells them nothing yet).
    pub(super) async fn end(&self, attempt: i32, usage: Usage, cost: i64, end: AttemptEnd) -> JobResult {
        let d = self.d;
        // The other processes hear every frame of the attempt before its end.
        if let Some(relay) = d.relay {
            relay.flush().await;
        }
        let settlement_end = end.clone();
        let target = run_target(self.run_id);
        let (job_id, run_pk, worker, origin) =
            (self.claim.job_id, self.run_pk, self.claim.worker.clone(), d.origin.clone());
        let now = d.clock.now_naive();
        let settled = d
            .store
            .write_for(self.claim.player, move |conn| {
                let s = Settlement {
                    origin: &origin,
                    job_id,
                    worker: &worker,
                    run_pk,
                    attempt,
                    usage,
                    cost,
                    end: settlement_end.clone(),
                };
                let row = attempts::settle(conn, &s, now)?;
                let mut charged = Charged::default();
                if row.is_some() {
                    charged = limits::settle(conn, &target, Used::Reported(usage), now)?;
                }
                Ok((row, charged))
            })
            .await?;
        let (Some(row), charged) = settled else { return Ok(Outcome::TakenOver) };
        charged.record(d.metrics);
        if row.user_id.is_none() {
            // A run from before players were charged holds nothing: its project is counted here.
            let tokens = usage.input_tokens + usage.output_tokens + usage.cache_read_tokens + usage.cache_write_tokens;
            observe::spent(d.metrics, Level::Project, (i64::try_from(tokens).unwrap_or(i64::MAX), cost));
        }
        let run_id = self.run_id.to_owned();
        let status = row.run_status().unwrap_or(RunStatus::Dead);
        if cost > 0 {
            d.metrics.run_cost_micros.with_label_values(&[self.model]).inc_by(cost as u64);
        }
        let frame = match end {
            AttemptEnd::Retry { .. } => return Ok(Outcome::Done),
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
                code: RunErrorCode::Aborted,
                message: "the run was aborted".into(),
            },
            AttemptEnd::Dead { code, message } => {
                Typed::RunError { reference: None, run_id: run_id.clone(), code, message }
            }
        };
        d.metrics.runs_finished.with_label_values(&[status.as_str()]).inc();
        tracing::info!(run = %run_id, status = status.as_str(), attempts = row.attempts, cost_micros = row.cost_micros,
            input_tokens = row.input_tokens, output_tokens = row.output_tokens, "run finished");
        publish(d.live, d.hub, &run_id, frame.into());
        finish(d.live, d.hub, &run_id);
        Ok(Outcome::Done)
    }

    /// Puts the run back without counting an attempt, until the circuit or the provider's
    /// `retry-after` lets calls through again.
    pub(super) async fn wait(&self, why: String, refund: bool) -> JobResult {
        let d = self.d;
        let snapshot = d.circuit.send(GetSnapshot).await.ok();
        let now = d.clock.now();
        let until = snapshot
            .and_then(|s| [s.resets_at, s.retry_after_until].into_iter().flatten().filter(|t| *t > now).max())
            .and_then(|t| (t - now).to_std().ok())
            .unwrap_or(PROBE_WAIT)
            .min(MAX_CIRCUIT_WAIT);
        let run_after = d.clock.now_naive() + to_chrono(until);
        let (job_id, run_pk, worker, now) =
            (self.claim.job_id, self.run_pk, self.claim.worker.clone(), d.clock.now_naive());
        tracing::debug!(run = %self.run_id, wait_ms = until.as_millis() as u64, why = %why, "run waits for the provider");
        let held = d
            .store
            .write_for(self.claim.player, move |conn| {
                let w = attempts::Wait { job_id, worker: &worker, run_pk, run_after, why: &why, refund };
                attempts::wait(conn, &w, now)
            })
            .await?;
        Ok(if held { Outcome::Later(until) } else { Outcome::TakenOver })
    }
}
