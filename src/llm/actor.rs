//! The LLM actor: claims durable jobs, runs at most `LOREWIRE_LLM_CONCURRENCY` upstream calls
//! at once, asks the circuit breaker before each call, and ends every job with a committed
//! result or fallback, which it then publishes to the Hub.
//!
//! Never holds a DB connection or transaction while waiting on the network: every store call
//! is a short closure run on the blocking pool, before or after the upstream call.

use std::collections::HashSet;
use std::sync::Arc;

use actix::prelude::*;
use serde_json::{Map, Value};

use super::circuit::{Acquire, CircuitBreaker, Outcome, Permit, Refusal, Report};
use super::client::{self, UpstreamError};
use super::providers::{self, Prompt, Provider};
use crate::content::{prompts, ContentKind, ContentStatus, Context as ContentContext, FallbackReason};
use crate::core::clock::SharedClock;
use crate::core::config::Config;
use crate::core::metrics::Metrics;
use crate::domain::answer::OutputError;
use crate::hub::Hub;
use crate::store::content::{self as content_rows, Finish};
use crate::store::jobs::{self, JobKind, JobRow};
use crate::store::llm_config::{self, LlmConfigRow};
use crate::store::{Store, StoreError};

mod mood;

/// New jobs were committed: claim what the concurrency limit allows.
#[derive(Message)]
#[rtype(result = "()")]
pub struct JobsAvailable;

/// Stop claiming (shutdown); answers the number of jobs still in flight.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct Drain;

/// Put the jobs this worker still holds back in the queue (end of shutdown).
#[derive(Message)]
#[rtype(result = "Result<usize, StoreError>")]
pub struct ReleaseJobs;

/// What one job needs, cloned out of the actor so the job future owns it.
#[derive(Clone)]
struct JobDeps {
    store: Store,
    hub: Addr<Hub>,
    circuit: Addr<CircuitBreaker>,
    clock: SharedClock,
    metrics: Arc<Metrics>,
    config: Arc<Config>,
    worker: Arc<str>,
    client: awc::Client,
    runs: Arc<crate::runs::live::LiveRuns>,
    relay: Option<Arc<crate::runs::relay::Relay>>,
    wake: Recipient<JobsAvailable>,
}

pub struct LlmActor {
    deps: Option<JobDeps>,
    store: Store,
    hub: Addr<Hub>,
    circuit: Addr<CircuitBreaker>,
    clock: SharedClock,
    metrics: Arc<Metrics>,
    config: Arc<Config>,
    worker: Arc<str>,
    /// Jobs this worker is running now: the only ones whose lease it renews.
    in_flight: HashSet<i64>,
    claiming: bool,
    claim_again: bool,
    draining: bool,
    /// Generation runs streaming in this process (late subscribers, abort signals).
    runs: Arc<crate::runs::live::LiveRuns>,
    /// Sends run frames to the other processes (PostgreSQL).
    relay: Option<Arc<crate::runs::relay::Relay>>,
}

impl LlmActor {
    /// Shares the registry of live runs with the run service.
    pub fn with_runs(mut self, runs: Arc<crate::runs::live::LiveRuns>) -> Self {
        self.runs = runs;
        self
    }

    /// Sends the frames of the runs streamed here to the other processes.
    pub fn with_relay(mut self, relay: Arc<crate::runs::relay::Relay>) -> Self {
        self.relay = Some(relay);
        self
    }

    pub fn new(
        store: Store,
        hub: Addr<Hub>,
        circuit: Addr<CircuitBreaker>,
        clock: SharedClock,
        metrics: Arc<Metrics>,
        config: Arc<Config>,
        worker: Arc<str>,
    ) -> Self {
        LlmActor {
            deps: None,
            store,
            hub,
            circuit,
            clock,
            metrics,
            config,
            worker,
            in_flight: HashSet::new(),
            claiming: false,
            claim_again: false,
            draining: false,
            runs: Arc::default(),
            relay: None,
        }
    }

    /// Claims as many due jobs as there are free call slots, and starts them.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        if self.draining {
            return;
        }
        if self.claiming {
            self.claim_again = true;
            return;
        }
        let free = self.config.llm_concurrency.saturating_sub(self.in_flight.len());
        if free == 0 {
            return;
        }
        self.claiming = true;
        let limit = free.min(64) as i64;
        let worker = self.worker.clone();
        let now = self.clock.now_naive();
        let store = self.store.clone();
        ctx.spawn(
            async move { store.run(move |conn| jobs::claim(conn, &worker, limit, now)).await }.into_actor(self).map(
                move |claimed, act, ctx| {
                    act.claiming = false;
                    let claimed = match claimed {
                        Ok(claimed) => claimed,
                        Err(e) => {
                            tracing::error!(error = %e, "could not claim jobs");
                            return;
                        }
                    };
                    let full = claimed.len() as i64 == limit;
                    for job in claimed {
                        act.start(job, ctx);
                    }
                    if full || std::mem::take(&mut act.claim_again) {
                        act.pump(ctx);
                    }
                },
            ),
        );
    }

    fn start(&mut self, job: JobRow, ctx: &mut Context<Self>) {
        let Some(deps) = self.deps.clone() else { return };
        self.in_flight.insert(job.id);
        self.metrics.jobs_claimed.inc();
        let job_id = job.id;
        ctx.spawn(run_job(deps, job).into_actor(self).map(move |result, act, ctx| {
            act.in_flight.remove(&job_id);
            if let Err(e) = result {
                tracing::error!(job = job_id, error = %e, "job could not be finished; handing it back");
                act.hand_back(job_id, e.to_string(), ctx);
            }
            act.pump(ctx);
        }));
    }

    /// Puts a job that failed on our side (not upstream) back in the queue after a pause. If
    /// even that fails, its lease is no longer renewed, so it is taken again once it runs out.
    fn hand_back(&mut self, job_id: i64, error: String, ctx: &mut Context<Self>) {
        let store = self.store.clone();
        let worker = self.worker.clone();
        let now = self.clock.now_naive();
        let run_after = now + chrono::Duration::seconds(1);
        ctx.spawn(
            async move { store.run(move |conn| jobs::requeue(conn, job_id, &worker, run_after, &error, now)).await }
                .into_actor(self)
                .map(move |result, _, _| {
                    if let Err(e) = result {
                        tracing::error!(job = job_id, error = %e, "could not hand the job back; its lease will run out");
                    }
                }),
        );
    }

    /// Renews this worker's leases and takes over jobs whose worker died.
    fn maintain(&mut self, ctx: &mut Context<Self>) {
        // Runs this process no longer streams are forgotten even when no run changes here.
        self.runs.prune();
        let store = self.store.clone();
        let worker = self.worker.clone();
        let now = self.clock.now_naive();
        let lease = chrono::Duration::from_std(self.config.job_lease).unwrap_or(chrono::Duration::seconds(15));
        let running: Vec<i64> = self.in_flight.iter().copied().collect();
        ctx.spawn(
            async move {
                store
                    .run(move |conn| {
                        jobs::renew(conn, &worker, &running, now)?;
                        jobs::reclaim_stale(conn, now - lease, now)
                    })
                    .await
            }
            .into_actor(self)
            .map(|result, act, ctx| match result {
                Ok(0) => {}
                Ok(n) => {
                    tracing::warn!(jobs = n, "took over jobs whose worker stopped");
                    act.pump(ctx);
                }
                Err(e) => tracing::error!(error = %e, "could not renew job leases"),
            }),
        );
    }
}

impl Actor for LlmActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.deps = Some(JobDeps {
            store: self.store.clone(),
            hub: self.hub.clone(),
            circuit: self.circuit.clone(),
            clock: self.clock.clone(),
            metrics: self.metrics.clone(),
            config: self.config.clone(),
            worker: self.worker.clone(),
            client: client::build_client(self.config.llm_timeout),
            runs: self.runs.clone(),
            relay: self.relay.clone(),
            wake: ctx.address().recipient(),
        });
        ctx.run_interval(self.config.job_poll, |act, ctx| act.pump(ctx));
        ctx.run_interval(self.config.job_lease / 3, |act, ctx| act.maintain(ctx));
        self.pump(ctx);
    }
}

impl Handler<JobsAvailable> for LlmActor {
    type Result = ();
    fn handle(&mut self, _: JobsAvailable, ctx: &mut Context<Self>) {
        self.pump(ctx);
    }
}

impl Handler<Drain> for LlmActor {
    type Result = usize;
    fn handle(&mut self, _: Drain, _: &mut Context<Self>) -> usize {
        self.draining = true;
        self.in_flight.len()
    }
}

impl Handler<ReleaseJobs> for LlmActor {
    type Result = ResponseFuture<Result<usize, StoreError>>;
    fn handle(&mut self, _: ReleaseJobs, _: &mut Context<Self>) -> Self::Result {
        let store = self.store.clone();
        let worker = self.worker.clone();
        let now = self.clock.now_naive();
        Box::pin(async move { store.run(move |conn| jobs::release(conn, &worker, now)).await })
    }
}

async fn run_job(deps: JobDeps, job: JobRow) -> Result<(), StoreError> {
    match job.job_kind()? {
        JobKind::Content => run_content_job(deps, job).await,
        JobKind::Run => {
            let run_deps = crate::runs::worker::RunDeps {
                store: deps.store,
                hub: deps.hub,
                circuit: deps.circuit,
                clock: deps.clock,
                metrics: deps.metrics,
                config: deps.config,
                worker: deps.worker,
                client: deps.client,
                live: deps.runs,
                relay: deps.relay,
                wake: deps.wake,
            };
            crate::runs::worker::execute(run_deps, job).await
        }
        JobKind::Mood => mood::run_mood_job(deps, job).await,
    }
}

/// Generates one content item and commits ready or fallback; nothing stays pending.
async fn run_content_job(deps: JobDeps, job: JobRow) -> Result<(), StoreError> {
    let content_id = job.target_id;
    let (row, config) =
        deps.store.run(move |conn| Ok((content_rows::find_by_id(conn, content_id)?, llm_config::get(conn)?))).await?;
    let Some(row) = row.filter(|r| r.status == ContentStatus::Pending.as_str()) else {
        // The item is gone or already final: the job has nothing left to do.
        let worker = deps.worker.clone();
        deps.store.run(move |conn| jobs::complete(conn, job.id, &worker)).await?;
        return Ok(());
    };
    let kind = ContentKind::parse(&row.kind)
        .ok_or_else(|| StoreError::Corrupt(format!("content {}: unknown kind", row.id)))?;
    let subject_id = row.subject_id as u64;
    let context: ContentContext = serde_json::from_str(&row.context).unwrap_or_default();

    let result = generate(&deps, config.as_ref(), kind, subject_id, &context).await;
    let (status, fields, model, reason) = match result {
        Ok((fields, model)) => (ContentStatus::Ready, fields, Some(model), None),
        Err(reason) => (ContentStatus::Fallback, kind.fallback_fields(subject_id), None, Some(reason.to_string())),
    };
    let fields = Value::Object(fields).to_string();
    let worker = deps.worker.clone();
    let now = deps.clock.now_naive();
    let pending_since = row.updated_at;
    let finished = deps
        .store
        .run(move |conn| {
            let finish = Finish {
                origin: &worker,
                job_id: job.id,
                worker: &worker,
                content_id,
                status: status.as_str(),
                fields: &fields,
                model: model.as_deref(),
                reason: reason.as_deref(),
            };
            content_rows::finish(conn, &finish, now)
        })
        .await?;
    let Some(row) = finished else {
        tracing::warn!(job = job.id, "job was taken over by another worker; result dropped");
        return Ok(());
    };
    let content = row.content()?;
    deps.metrics
        .content_finished
        .with_label_values(&[content.status.as_str(), content.reason.as_deref().unwrap_or("")])
        .inc();
    if let Ok(latency) = (deps.clock.now_naive() - pending_since).to_std() {
        deps.metrics.push_latency.observe(latency.as_secs_f64());
    }
    tracing::info!(
        kind = kind.as_str(),
        subject_id,
        status = content.status.as_str(),
        reason = content.reason.as_deref().unwrap_or(""),
        version = content.version,
        "content finished"
    );
    deps.hub.do_send(crate::content::update_publish(content));
    Ok(())
}

/// The upstream call for one item: fields and model on success, the fallback reason otherwise.
async fn generate(
    deps: &JobDeps,
    config: Option<&LlmConfigRow>,
    kind: ContentKind,
    subject_id: u64,
    context: &ContentContext,
) -> Result<(Map<String, Value>, String), FallbackReason> {
    let prompt = Prompt {
        system: kind.system_prompt().to_owned(),
        user: prompts::user_message(kind, subject_id, context),
        schema_name: kind.schema_name().to_owned(),
        schema: kind.json_schema(),
        max_tokens: deps.config.max_output_tokens,
    };
    let call = format!("{} {subject_id}", kind.as_str());
    call_structured(deps, config, &prompt, |text| kind.validate_output(text), &call).await
}

/// One structured call (content or mood) through the circuit breaker: the validated value and
/// the model that made it, or why the item falls back. `call` names it in the logs.
async fn call_structured<T>(
    deps: &JobDeps,
    config: Option<&LlmConfigRow>,
    prompt: &Prompt,
    validate: impl FnOnce(&str) -> Result<T, OutputError>,
    call: &str,
) -> Result<(T, String), FallbackReason> {
    let config = config.ok_or(FallbackReason::NoConfig)?;
    let credentials = super::credentials(config).ok_or(FallbackReason::NoConfig)?;
    let (provider, api_key) = (credentials.provider, credentials.api_key.as_str());
    let probe = match deps.circuit.send(Acquire).await {
        Ok(Permit::Call { probe }) => probe,
        Ok(Permit::Refuse(Refusal::CircuitOpen)) | Err(_) => return Err(FallbackReason::CircuitOpen),
        Ok(Permit::Refuse(Refusal::RateLimited)) => return Err(FallbackReason::RateLimited),
    };
    let request = providers::build_request(&credentials.target(&config.model), prompt);
    let answer = client::send(&deps.client, &request, deps.config.llm_timeout).await;

    let (outcome, result) = judge(provider, answer, validate);
    deps.circuit.do_send(Report { probe, outcome });
    let outcome_label = match &result {
        Ok(_) => "ok".to_owned(),
        Err((reason, _)) => reason.to_string(),
    };
    deps.metrics.upstream_calls.with_label_values(&[&outcome_label]).inc();
    match result {
        Ok(value) => {
            if config.last_error.is_some() {
                record_last_error(deps, None).await;
            }
            Ok((value, config.model.clone()))
        }
        Err((reason, why)) => {
            let why = super::redact(&why, api_key);
            tracing::warn!(call, %reason, error = %why, "upstream call failed");
            record_last_error(deps, Some(format!("{reason}: {why}"))).await;
            Err(reason)
        }
    }
}

async fn record_last_error(deps: &JobDeps, error: Option<String>) {
    let now = deps.clock.now_naive();
    let saved = deps.store.run(move |conn| llm_config::set_last_error(conn, error.as_deref(), now)).await;
    if let Err(e) = saved {
        tracing::error!(error = %e, "could not record the last upstream error");
    }
}

/// A failed structured answer: why it falls back, and the detail for logs and `last_error`.
type Failed = (FallbackReason, String);

/// A structured answer (content or mood) judged: what it tells the circuit breaker, and the
/// validated value or why the item falls back.
fn judge<T>(
    provider: Provider,
    answer: Result<bytes::Bytes, UpstreamError>,
    validate: impl FnOnce(&str) -> Result<T, OutputError>,
) -> (Outcome, Result<T, Failed>) {
    match answer {
        Ok(body) => match providers::parse_text(provider, &body) {
            Err(why) => (Outcome::Failure, Err((FallbackReason::InvalidResponse, why))),
            Ok(text) => match validate(&text) {
                Ok(value) => (Outcome::Success, Ok(value)),
                Err(OutputError::NotJson(why)) => (Outcome::Failure, Err((FallbackReason::InvalidJson, why))),
                Err(e @ OutputError::Invalid(_)) => {
                    (Outcome::Failure, Err((FallbackReason::InvalidResponse, e.to_string())))
                }
            },
        },
        Err(e) => (e.circuit_outcome(), Err((e.failure().into(), e.to_string()))),
    }
}
