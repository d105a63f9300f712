//! The content job: generates one item's fields through the structured-call path, has
//! moderation check them (a flagged answer is asked for once more, then the item falls back
//! `moderated`), and commits `ready` (or `fallback` on any upstream failure) together with the
//! job's removal, then publishes `content:update`. A corrupt row fails the attempt (the worker retries it); when no
//! attempt is left the item gets its fallback. Nothing stays pending.
//!
//! Never holds a DB connection across the upstream call: the row and the settings are read
//! before it (as the job is claimed, in the claim's transaction), the result written after it.

use std::rc::Rc;
use std::sync::Arc;

use actix::Addr;
use futures_util::future::LocalBoxFuture;
use serde_json::{Map, Value};

use super::{prompts, update_publish, ContentKind, ContentStatus, Context, FallbackReason};
use crate::core::clock::SharedClock;
use crate::core::metrics::Metrics;
use crate::core::process::ProcessId;
use crate::core::usage::UsageConfig;
use crate::deps::Deps;
use crate::domain::limits::Refusal;
use crate::domain::moderation::Surface;
use crate::hub::Hub;
use crate::jobs::{nothing_to_do, Adopter, Claim, JobHandler, JobKind, JobResult, Loaded, Loader, Outcome};
use crate::limits::{self, Used};
use crate::llm::Llm;
use crate::moderation::Moderation;
use crate::store::ahead::{Ahead, Finishing};
use crate::store::content::{self as rows, ContentRow, Finish};
use crate::store::jobs::Ended;
use crate::store::upstreams::{self, UpstreamRow};
use crate::store::{DbConn, Store, StoreError, StoreResult};

/// Runs `content` jobs.
pub struct ContentJob {
    /// This process (cross-process notifications).
    origin: ProcessId,
    store: Store,
    clock: SharedClock,
    hub: Addr<Hub>,
    metrics: Arc<Metrics>,
    llm: Llm,
    moderation: Moderation,
    max_output_tokens: u32,
    /// The usage limits' seed (PROTOCOL §5).
    usage: UsageConfig,
}

/// What an attempt reads before its upstream call: the item and the upstreams.
#[derive(Clone)]
struct Before {
    row: Option<ContentRow>,
    upstreams: Vec<UpstreamRow>,
}

impl Before {
    fn read(conn: &mut DbConn, content_id: i64) -> StoreResult<Before> {
        Ok(Before { row: rows::find_by_id(conn, content_id)?, upstreams: upstreams::all(conn)? })
    }
}

/// What the attempt at the item `row` reads before its call, as its request's write claims
/// its job: the row as written there, and the upstreams.
pub fn loaded(conn: &mut DbConn, row: &ContentRow) -> StoreResult<Loaded> {
    Ok(Loaded(Arc::new(Before { row: Some(row.clone()), upstreams: upstreams::all(conn)? })))
}

/// What an item ends with.
struct Ending {
    /// What the calls used, charged with the item's end.
    used: Used,
    status: ContentStatus,
    fields: Map<String, Value>,
    model: Option<String>,
    reason: Option<FallbackReason>,
}

impl ContentJob {
    pub fn new(deps: &Deps, llm: Llm, moderation: Moderation) -> Self {
        let Deps { process, store, clock, hub, metrics, config } = deps.clone();
        let (max_output_tokens, usage) = (config.max_output_tokens, config.usage);
        ContentJob { origin: process, store, clock, hub, metrics, llm, moderation, max_output_tokens, usage }
    }

    /// Generates the item and commits ready or fallback.
    async fn attempt(&self, claim: Claim) -> JobResult {
        let content_id = claim.target_id;
        // Read as the job was claimed, unless that read failed.
        let loaded = claim.loaded.as_ref().and_then(|l| l.0.downcast_ref::<Before>()).cloned();
        let Before { row, upstreams } = match loaded {
            Some(before) => before,
            None => self.store.run(move |conn| Before::read(conn, content_id)).await?,
        };
        let Some(row) = row.filter(ContentRow::is_pending) else {
            return nothing_to_do(&self.store, &claim).await;
        };
        let kind = row.kind()?;
        let subject_id = row.subject_id as u64;
        if claim.attempt > 1 {
            if let Err(refusal) = self.charge_cut(content_id, claim.player).await? {
                tracing::info!(
                    kind = kind.as_str(),
                    subject_id,
                    level = refusal.level.as_str(),
                    "content fallback: a usage limit is reached"
                );
                return self
                    .commit(&claim, &row, fallback(kind, subject_id, FallbackReason::BudgetExceeded, Used::Nothing))
                    .await;
            }
        }
        let context: Context = serde_json::from_str(&row.context)
            .map_err(|e| StoreError::Corrupt(format!("content {}: the stored context is not JSON: {e}", row.id)))?;
        let prompt = prompts::prompt(kind, subject_id, &context, self.max_output_tokens);
        let what = format!("{} {subject_id}", kind.as_str());
        // A flagged answer is asked for once more (the reservation covers both calls when
        // moderation is on); flagged again, the item falls back. Both calls are charged.
        let mut used = Used::Nothing;
        let mut ending = None;
        for _ in 0..2 {
            let answer = match self.llm.call(&upstreams, &prompt, |text| kind.validate_output(text), &what).await {
                Ok(answer) => answer,
                Err(no_answer) => {
                    used = used.and(limits::used_by_failures(&no_answer.tried));
                    ending = Some(fallback(kind, subject_id, no_answer.reason.into(), Used::Nothing));
                    break;
                }
            };
            used = used.and(answer.usage.map_or(Used::Unknown, Used::Reported));
            if let Some(repair) = answer.repair {
                self.metrics.answers_repaired.with_label_values(&[kind.as_str(), repair.as_str()]).inc();
                tracing::info!(kind = kind.as_str(), subject_id, how = repair.as_str(), "answer repaired");
            }
            if self.flagged(&answer.value).await {
                tracing::info!(kind = kind.as_str(), subject_id, "answer flagged by moderation");
                continue;
            }
            ending = Some(Ending {
                used: Used::Nothing,
                status: ContentStatus::Ready,
                fields: answer.value,
                model: Some(answer.model),
                reason: None,
            });
            break;
        }
        let mut ending = ending.unwrap_or_else(|| fallback(kind, subject_id, FallbackReason::Moderated, Used::Nothing));
        ending.used = used;
        self.commit(&claim, &row, ending).await
    }

    /// An earlier claim of the item was cut short (its process died, or lost the job), maybe
    /// mid-call: what it held is charged, and this attempt reserves the same again.
    async fn charge_cut(&self, content_id: i64, player: i64) -> StoreResult<Result<(), Refusal>> {
        let (usage, now) = (self.usage, self.clock.now_naive());
        let target = format!("content:{content_id}");
        let (charged, reserved) =
            self.store.write_for(player, move |conn| limits::charge_cut(conn, &usage, &target, now)).await?;
        charged.record(&self.metrics);
        if let Err(refusal) = &reserved {
            limits::observe::refused(&self.metrics, refusal);
        }
        Ok(reserved)
    }

    /// Whether moderation flags any of the answer's fields (checked as one text).
    async fn flagged(&self, fields: &Map<String, Value>) -> bool {
        if !self.moderation.is_on() {
            return false;
        }
        let text: Vec<&str> = fields.values().filter_map(Value::as_str).collect();
        self.moderation.check(Surface::Content, None, &text.join("\n")).await.flagged
    }

    /// No attempt is left: the item gets its fallback with reason `invalid_response` (the
    /// reasons clients know have no word for lorewire's own failures).
    async fn give_up(&self, claim: Claim) -> JobResult {
        let content_id = claim.target_id;
        let row = self.store.run(move |conn| rows::find_by_id(conn, content_id)).await?;
        let Some(row) = row.filter(ContentRow::is_pending) else {
            return nothing_to_do(&self.store, &claim).await;
        };
        let kind = row.kind()?;
        // Whether an earlier attempt called is not known: charged as reserved, never under.
        let ending = fallback(kind, row.subject_id as u64, FallbackReason::InvalidResponse, Used::Unknown);
        self.commit(&claim, &row, ending).await
    }

    /// Commits the end of the pending item `row` with the job's removal, then tells the
    /// subscribers.
    async fn commit(&self, claim: &Claim, row: &ContentRow, ending: Ending) -> JobResult {
        let pending_since = row.updated_at;
        let fields = Value::Object(ending.fields).to_string();
        let reason = ending.reason;
        let (origin, worker, job_id, content_id) = (self.origin.clone(), claim.worker.clone(), claim.job_id, row.id);
        let (status, used) = (ending.status, ending.used);
        let model = ending.model;
        let (now, player) = (self.clock.now_naive(), claim.player);
        let target = format!("content:{content_id}");
        // Told to the writer's batch, which may end it together with the batch's others (an
        // item whose kind cannot be read is ended in its place).
        let ahead = row.kind().ok().map(|kind| {
            Ahead::Finish(Finishing {
                kind,
                subject_id: row.subject_id,
                owner: row.owner_id,
                content_id,
                job_id,
                worker: worker.to_string(),
                status,
                fields: fields.clone(),
                model: model.clone(),
                reason,
                at: now,
                settles: Some(target.clone()),
            })
        });
        let ended = self
            .store
            .write_ahead_for(
                Some(claim.player),
                ahead,
                move |conn| {
                    let finish = Finish {
                        origin: &origin,
                        job_id,
                        worker: &worker,
                        content_id,
                        status,
                        fields: &fields,
                        model: model.as_deref(),
                        reason,
                        settles: Some(&target),
                    };
                    let ended = rows::finish(conn, &finish, now)?;
                    let mut settled = None;
                    if let Ended::Done(_) = &ended {
                        // The batch's items settled together at its commit (their holds taken
                        // with their ends).
                        settled = Some(limits::settle_later(conn, &target, player, used, model.as_deref(), now)?);
                    }
                    Ok((ended, settled))
                },
                |ended| ended,
            )
            .await?;
        let (ended, settled) = ended;
        if let Some(settled) = settled {
            settled.charged().record(&self.metrics);
        }
        let written = match ended {
            Ended::TakenOver => return Ok(Outcome::TakenOver),
            Ended::Done(None) => return Ok(Outcome::Nothing),
            Ended::Done(Some(written)) => written,
        };
        // Committed: from here on nothing can fail the job.
        let content = match written.content() {
            Ok(content) => content,
            Err(e) => {
                tracing::error!(content = written.id, error = %e, "finished item cannot be read back; not published");
                return Ok(Outcome::Done);
            }
        };
        let reason = content.reason.map(|r| r.to_string()).unwrap_or_default();
        let reason = reason.as_str();
        self.metrics.content_finished.with_label_values(&[content.status.as_str(), reason]).inc();
        if let Ok(latency) = (self.clock.now_naive() - pending_since).to_std() {
            self.metrics.push_latency.observe(latency.as_secs_f64());
        }
        tracing::info!(
            kind = content.kind.as_str(),
            subject_id = content.subject_id,
            status = content.status.as_str(),
            reason,
            version = content.version,
            "content finished"
        );
        self.hub.do_send(update_publish(content));
        Ok(Outcome::Done)
    }
}

/// The item's deterministic fallback text, and why.
fn fallback(kind: ContentKind, subject_id: u64, reason: FallbackReason, used: Used) -> Ending {
    Ending {
        used,
        status: ContentStatus::Fallback,
        fields: kind.fallback_fields(subject_id),
        model: None,
        reason: Some(reason),
    }
}

impl JobHandler for ContentJob {
    fn kind(&self) -> JobKind {
        JobKind::Content
    }

    fn adopter(&self) -> Option<Adopter> {
        Some(crate::store::content::adopt_orphans)
    }

    fn run(self: Rc<Self>, claim: Claim) -> LocalBoxFuture<'static, JobResult> {
        Box::pin(async move { self.attempt(claim).await })
    }

    fn give_up(self: Rc<Self>, claim: Claim) -> LocalBoxFuture<'static, JobResult> {
        Box::pin(async move { ContentJob::give_up(&self, claim).await })
    }

    fn loader(&self) -> Option<Loader> {
        Some(Arc::new(|conn, content_id| Ok(Loaded(Arc::new(Before::read(conn, content_id)?)))))
    }
}
