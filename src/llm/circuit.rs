//! The circuit breaker: closed / open / half-open (README "Pointing it at a provider" and
//! "Errors, faults and logs").
//!
//! Owns the breaker state and nothing else. Failures are counted within a sliding window;
//! opening schedules the move to half-open with `run_later`; half-open lets one probe through.
//! The state is persisted after every change (one write in flight, the latest state wins) and
//! restored at start, re-arming the timer from `resets_at`. Time comes from the injected clock.
//! When it opens or closes (or the admin resets it), its write announces that to the other
//! processes, whose breakers of that upstream [`Adopt`] it (PROTOCOL §7).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::core::clock::{to_chrono, SharedClock};
use crate::core::metrics::Metrics;
use crate::core::process::ProcessId;
pub use crate::domain::upstream::CircuitState;
use crate::store::llm_config::{self, CircuitRecord};
use crate::store::Store;

/// Wait before calling again after a 429 that named no `retry-after`.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy)]
pub struct CircuitSettings {
    pub failures: u32,
    pub window: Duration,
    pub reset: Duration,
}

/// May I call the provider now?
#[derive(Message)]
#[rtype(result = "Permit")]
pub struct Acquire;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Call; `probe` is the single trial call of half-open and must be reported.
    Call {
        probe: bool,
    },
    Refuse(Refusal),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    CircuitOpen,
    /// A 429's `retry-after` has not passed yet.
    RateLimited,
}

/// How a permitted call ended.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Report {
    pub probe: bool,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// The provider answered with a 2xx: it is up, whether or not the answer was usable (an
    /// answer invalid after repair, or a refusal, is that call's failure, never the circuit's).
    Success,
    /// 5xx (529 included), network error, timeout: counts.
    Failure,
    /// A 4xx other than 429: the provider answered; never counts.
    Rejected,
    /// 429, with the wait the provider asked for.
    RateLimited(Option<Duration>),
    /// The permit went unused, or the call was cancelled before the provider answered: it
    /// says nothing about the provider. A probe reporting it frees the probe slot and the
    /// circuit stays half-open.
    NotCalled,
}

/// The state for the admin API.
#[derive(Message)]
#[rtype(result = "CircuitSnapshot")]
pub struct GetSnapshot;

/// Close the circuit now (admin).
#[derive(Message)]
#[rtype(result = "CircuitSnapshot")]
pub struct Reset;

/// Take on the state another process gave this upstream's circuit (opened, closed), or the stored
/// one after the announcements were lost. Nothing is written or announced again.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Adopt(pub CircuitRecord);

/// The circuit breaker as admins see it.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
#[schema(as = Circuit)]
pub struct CircuitSnapshot {
    pub state: CircuitState,
    /// Failures counted in the current window.
    pub failures: u32,
    pub opened_at: Option<DateTime<Utc>>,
    pub resets_at: Option<DateTime<Utc>>,
    /// Until when a provider's 429 `retry-after` holds calls back.
    pub retry_after_until: Option<DateTime<Utc>>,
}

pub struct CircuitBreaker {
    /// The upstream whose circuit this is (its row in `llm_config`).
    upstream: i64,
    settings: CircuitSettings,
    clock: SharedClock,
    store: Store,
    metrics: Arc<Metrics>,
    /// This process, when the breaker announces its opening and closing to the others.
    origin: Option<ProcessId>,
    /// The next write announces the state (it opened or closed here).
    announce: bool,
    state: CircuitState,
    failures: VecDeque<DateTime<Utc>>,
    opened_at: Option<DateTime<Utc>>,
    resets_at: Option<DateTime<Utc>>,
    retry_after_until: Option<DateTime<Utc>>,
    probe_in_flight: bool,
    timer: Option<SpawnHandle>,
    saving: bool,
    dirty: bool,
}

fn utc(t: chrono::NaiveDateTime) -> DateTime<Utc> {
    DateTime::from_naive_utc_and_offset(t, Utc)
}

impl CircuitBreaker {
    /// The first upstream's breaker resuming from the persisted record.
    pub fn restore(
        settings: CircuitSettings,
        record: &CircuitRecord,
        clock: SharedClock,
        store: Store,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self::restore_upstream(llm_config::ID, settings, record, clock, store, metrics)
    }

    /// Upstream `id`'s breaker resuming from its persisted record.
    pub fn restore_upstream(
        id: i64,
        settings: CircuitSettings,
        record: &CircuitRecord,
        clock: SharedClock,
        store: Store,
        metrics: Arc<Metrics>,
    ) -> Self {
        let row = format!("llm_config {id}");
        // A corrupt record cannot stop the start: the breaker resumes closed and empty, and says so.
        let failures: Vec<DateTime<Utc>> = serde_json::from_str(&record.failures).unwrap_or_else(|e| {
            tracing::error!(row = %row, column = "circuit_failures", error = %e,
                "stored circuit history is corrupt; resuming without it");
            Vec::new()
        });
        let state = CircuitState::parse(&record.state).unwrap_or_else(|| {
            tracing::error!(row = %row, column = "circuit_state", state = %record.state,
                "stored circuit state is unknown; resuming closed");
            CircuitState::Closed
        });
        CircuitBreaker {
            upstream: id,
            settings,
            clock,
            store,
            metrics,
            origin: None,
            announce: false,
            state,
            failures: failures.into(),
            opened_at: record.opened_at.map(utc),
            resets_at: record.resets_at.map(utc),
            retry_after_until: record.retry_after_until.map(utc),
            // A probe that was in flight when the process died will never report.
            probe_in_flight: false,
            timer: None,
            saving: false,
            dirty: false,
        }
    }

    /// Announces its opening and closing to the other processes, as `origin`.
    pub fn announcing(mut self, origin: ProcessId) -> Self {
        self.origin = Some(origin);
        self
    }

    fn snapshot(&self) -> CircuitSnapshot {
        let now = self.clock.now();
        CircuitSnapshot {
            state: self.state,
            failures: self.failures.len() as u32,
            opened_at: self.opened_at,
            resets_at: self.resets_at,
            retry_after_until: self.retry_after_until.filter(|t| *t > now),
        }
    }

    fn record(&self) -> CircuitRecord {
        CircuitRecord {
            state: self.state.as_str().to_owned(),
            failures: serde_json::to_string(&self.failures).unwrap_or_else(|_| "[]".into()),
            opened_at: self.opened_at.map(|t| t.naive_utc()),
            resets_at: self.resets_at.map(|t| t.naive_utc()),
            retry_after_until: self.retry_after_until.map(|t| t.naive_utc()),
        }
    }

    fn prune(&mut self, now: DateTime<Utc>) {
        let cutoff = now - to_chrono(self.settings.window);
        while self.failures.front().is_some_and(|t| *t <= cutoff) {
            self.failures.pop_front();
        }
    }

    fn set_state(&mut self, state: CircuitState) {
        if self.state != state {
            tracing::info!(
                upstream = self.upstream,
                from = self.state.as_str(),
                to = state.as_str(),
                "circuit breaker"
            );
        }
        self.state = state;
        if self.upstream != llm_config::ID {
            return;
        }
        self.metrics.circuit_state.set(match state {
            CircuitState::Closed => 0,
            CircuitState::Open => 1,
            CircuitState::HalfOpen => 2,
        });
    }

    fn open(&mut self, now: DateTime<Utc>, ctx: &mut Context<Self>) {
        self.set_state(CircuitState::Open);
        self.probe_in_flight = false;
        self.opened_at = Some(now);
        self.resets_at = Some(now + to_chrono(self.settings.reset));
        self.arm_timer(ctx);
    }

    fn close(&mut self, ctx: &mut Context<Self>) {
        self.set_state(CircuitState::Closed);
        self.probe_in_flight = false;
        self.failures.clear();
        self.opened_at = None;
        self.resets_at = None;
        if let Some(timer) = self.timer.take() {
            ctx.cancel_future(timer);
        }
    }

    fn half_open(&mut self) {
        self.set_state(CircuitState::HalfOpen);
        self.probe_in_flight = false;
    }

    /// Schedules open -> half-open at `resets_at`.
    fn arm_timer(&mut self, ctx: &mut Context<Self>) {
        if let Some(timer) = self.timer.take() {
            ctx.cancel_future(timer);
        }
        let Some(resets_at) = self.resets_at else { return };
        let wait = (resets_at - self.clock.now()).to_std().unwrap_or(Duration::ZERO);
        self.timer = Some(ctx.run_later(wait, |act, ctx| {
            act.timer = None;
            if act.state != CircuitState::Open {
                return;
            }
            if act.resets_at.is_some_and(|r| act.clock.now() >= r) {
                act.half_open();
                act.persist(ctx);
            } else {
                act.arm_timer(ctx);
            }
        }));
    }

    /// Moves open -> half-open when the reset time has passed (the timer may not have fired
    /// yet, e.g. when the clock is moved by hand).
    fn catch_up(&mut self, now: DateTime<Utc>, ctx: &mut Context<Self>) {
        if self.state == CircuitState::Open && self.resets_at.is_some_and(|r| now >= r) {
            self.half_open();
            if let Some(timer) = self.timer.take() {
                ctx.cancel_future(timer);
            }
            self.persist(ctx);
        }
    }

    fn persist(&mut self, ctx: &mut Context<Self>) {
        if self.saving {
            self.dirty = true;
            return;
        }
        self.saving = true;
        let record = self.record();
        let now = self.clock.now_naive();
        let store = self.store.clone();
        let id = self.upstream;
        let origin = self.origin.clone().filter(|_| std::mem::take(&mut self.announce));
        ctx.spawn(
            async move {
                store
                    .write(move |conn| match &origin {
                        Some(origin) => llm_config::save_circuit_announced(conn, origin, id, &record, now),
                        None => llm_config::save_circuit_of(conn, id, &record, now),
                    })
                    .await
            }
            .into_actor(self)
            .map(|result, act, ctx| {
                act.saving = false;
                if let Err(e) = result {
                    tracing::error!(error = %e, "could not persist the circuit breaker");
                }
                if std::mem::take(&mut act.dirty) {
                    act.persist(ctx);
                }
            }),
        );
    }
}

impl Actor for CircuitBreaker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let state = self.state;
        self.set_state(state);
        if self.state == CircuitState::Open {
            self.arm_timer(ctx);
        }
    }
}

impl Handler<Acquire> for CircuitBreaker {
    type Result = MessageResult<Acquire>;

    fn handle(&mut self, _: Acquire, ctx: &mut Context<Self>) -> Self::Result {
        let now = self.clock.now();
        self.catch_up(now, ctx);
        let permit = if self.state == CircuitState::Open {
            Permit::Refuse(Refusal::CircuitOpen)
        } else if self.retry_after_until.is_some_and(|t| now < t) {
            Permit::Refuse(Refusal::RateLimited)
        } else if self.state == CircuitState::HalfOpen {
            if self.probe_in_flight {
                Permit::Refuse(Refusal::CircuitOpen)
            } else {
                self.probe_in_flight = true;
                Permit::Call { probe: true }
            }
        } else {
            Permit::Call { probe: false }
        };
        MessageResult(permit)
    }
}

impl Handler<Report> for CircuitBreaker {
    type Result = ();

    fn handle(&mut self, report: Report, ctx: &mut Context<Self>) {
        let now = self.clock.now();
        let probing = report.probe && self.state == CircuitState::HalfOpen;
        let before = self.record();
        let state_before = self.state;
        match report.outcome {
            Outcome::Failure if probing => self.open(now, ctx),
            Outcome::Failure if self.state == CircuitState::Closed => {
                self.failures.push_back(now);
                self.prune(now);
                if self.failures.len() >= self.settings.failures as usize {
                    self.open(now, ctx);
                }
            }
            // Calls that began before the circuit opened do not move it again.
            Outcome::Failure => {}
            Outcome::RateLimited(wait) => {
                self.retry_after_until = Some(now + to_chrono(wait.unwrap_or(DEFAULT_RETRY_AFTER)));
                if probing {
                    self.close(ctx);
                }
            }
            // The provider answered: it is up, whatever it thought of the request.
            Outcome::Success | Outcome::Rejected if probing => self.close(ctx),
            Outcome::Success | Outcome::Rejected | Outcome::NotCalled => {}
        }
        if report.probe && self.state == CircuitState::HalfOpen {
            self.probe_in_flight = false;
        }
        if self.state != state_before && self.state != CircuitState::HalfOpen {
            self.announce = true;
        }
        if self.record() != before {
            self.persist(ctx);
        }
    }
}

impl Handler<GetSnapshot> for CircuitBreaker {
    type Result = MessageResult<GetSnapshot>;

    fn handle(&mut self, _: GetSnapshot, ctx: &mut Context<Self>) -> Self::Result {
        let now = self.clock.now();
        self.catch_up(now, ctx);
        self.prune(now);
        MessageResult(self.snapshot())
    }
}

impl Handler<Reset> for CircuitBreaker {
    type Result = MessageResult<Reset>;

    fn handle(&mut self, _: Reset, ctx: &mut Context<Self>) -> Self::Result {
        self.close(ctx);
        self.retry_after_until = None;
        self.announce = true;
        self.persist(ctx);
        tracing::info!(upstream = self.upstream, "circuit breaker reset by admin");
        MessageResult(self.snapshot())
    }
}

impl Handler<Adopt> for CircuitBreaker {
    type Result = ();

    fn handle(&mut self, Adopt(record): Adopt, ctx: &mut Context<Self>) {
        let Some(state) = CircuitState::parse(&record.state) else { return };
        if state == self.state {
            return;
        }
        tracing::info!(upstream = self.upstream, state = state.as_str(), "circuit breaker follows another process");
        match state {
            CircuitState::Closed => self.close(ctx),
            CircuitState::Open | CircuitState::HalfOpen => {
                self.set_state(state);
                self.probe_in_flight = false;
                self.opened_at = record.opened_at.map(utc);
                self.resets_at = record.resets_at.map(utc);
                if state == CircuitState::Open {
                    self.arm_timer(ctx);
                } else if let Some(timer) = self.timer.take() {
                    ctx.cancel_future(timer);
                }
            }
        }
    }
}
