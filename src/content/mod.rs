//! Game content (quest / event / npc): the item as clients see it, and the service that
//! validates a request, writes the pending row and its durable job in one transaction, and
//! hands the job to the job worker (claimed for it in that transaction when it has a free slot,
//! else queued and the worker woken); [`job`] is the handler of content jobs. The service never calls the
//! LLM itself and never leaves an item without a job.

pub mod job;
pub mod prompts;
pub mod remote;

use actix::prelude::*;
use serde_json::Value;

pub use crate::domain::content::{
    check_subject_id, validate, Content, ContentKind, ContentScope, ContentStatus, FallbackReason, Requester,
    ValidRequest, SHARED_OWNER,
};
pub use crate::domain::context::Context;

use std::sync::Arc;

use crate::core::clock::SharedClock;
use crate::core::config::Config;
use crate::core::identity::SharedWriters;
use crate::core::metrics::Metrics;
use crate::core::process::ProcessId;
use crate::deps::Deps;
use crate::domain::limits::{Level, Refusal};
use crate::domain::wire::{ServerFrame, Typed};
use crate::hub::{Hub, Publish};
use crate::jobs::{Intake, Loaded};
use crate::limits::rate::{Counted, StartRate};
use crate::limits::{self, Spend};
use crate::store::ahead::{Ahead, Asked, Reserving};
use crate::store::content::{self as rows, ContentRow, RequestItem, Requested};
use crate::store::jobs::JobRow;
use crate::store::upstreams::{self, UpstreamRow};
use crate::store::{DbConn, Store, StoreError, StoreResult};

/// `content:update` for every session subscribed to the item.
pub fn update_publish(content: Content) -> Publish {
    let (topic, version) = (content.topic(), content.version);
    let frame: ServerFrame = Typed::ContentUpdate { content }.into();
    Publish { topic, version: Some(version), text: frame.to_bytes() }
}

/// Requests, lookups and the wake-up of the job worker.
#[derive(Clone)]
pub struct ContentService {
    origin: ProcessId,
    store: Store,
    clock: SharedClock,
    hub: Addr<Hub>,
    jobs: Intake,
    /// `LOREWIRE_QUEUE_LIMIT`: a request whose job would be queued past it is refused.
    queue_limit: i64,
    /// The usage limits' seed, the default model and the output tokens asked for.
    config: Arc<Config>,
    /// The per-player start rate, when it is enforced.
    rate: Option<Arc<StartRate>>,
    /// `LOREWIRE_SHARED_CONTENT_WRITERS`: who may change an item once it exists.
    writers: SharedWriters,
    metrics: Arc<Metrics>,
}

impl ContentService {
    /// Jobs go to the worker through `jobs` (claimed for it when it has a free slot).
    pub fn new(deps: &Deps, jobs: Intake) -> Self {
        let Deps { process: origin, store, clock, hub, config, metrics } = deps.clone();
        let queue_limit = i64::try_from(config.queue_limit).unwrap_or(i64::MAX);
        let writers = config.identity.shared_writers();
        ContentService { origin, store, clock, hub, jobs, queue_limit, config, rate: None, writers, metrics }
    }

    /// New items and regenerations count against the player's start rate `rate`.
    pub fn with_start_rate(mut self, rate: Arc<StartRate>) -> Self {
        self.rate = Some(rate);
        self
    }

    /// Counts a request against the player's start rate before its write, to be given back if
    /// the write starts nothing. Over the rate, only a request that would create or regenerate
    /// the item is refused ([`StoreError::RateLimited`]); one served as it is costs nothing.
    async fn count_start(
        &self,
        kind: ContentKind,
        subject_id: i64,
        owner: i64,
        regenerate: bool,
        by: Requester,
    ) -> Result<Option<Counted>, StoreError> {
        let Some(rate) = &self.rate else { return Ok(None) };
        // The game server's own requests have no player's rate.
        let Some(player) = by.user_id else { return Ok(None) };
        let per_player = match rate.known() {
            Some(per_player) => per_player,
            None => {
                let seed = self.config.usage;
                let stored = self.store.run(move |conn| limits::stored_limits(conn, &seed)).await?;
                let per_player = limits::start_rate(&stored, &seed);
                rate.remember(per_player);
                per_player
            }
        };
        let refusal = match rate.admit(player, per_player).await {
            Ok(counted) => return Ok(Some(counted)),
            Err(refusal) => refusal,
        };
        let starts = self
            .store
            .run(move |conn| {
                Ok(match rows::find(conn, kind, subject_id, owner)? {
                    Some(row) => regenerate && !row.is_pending(),
                    None => true,
                })
            })
            .await?;
        if starts {
            return Err(StoreError::RateLimited(rate.refused(refusal)));
        }
        Ok(None)
    }

    /// Returns the item as it is, or creates / regenerates it (pending row + job, one
    /// transaction) and hands the job to the worker: claimed in that transaction when the
    /// worker has a free slot, else queued and the worker woken. With
    /// `LOREWIRE_SHARED_CONTENT_WRITERS=server`, a player's request that would regenerate an
    /// existing item or change its context is refused ([`StoreError::ServerOnly`]). A
    /// `player`-scoped request is for the requester's own item, which it may always change.
    ///
    /// An item created or regenerated reserves its call's bound for the requesting player and
    /// the studio in the same transaction: over the player's limit nothing is stored
    /// ([`StoreError::OverLimit`]); over the studio's the item is written `fallback`
    /// (`budget_exceeded`) with no job.
    pub async fn request(&self, req: ValidRequest, by: Requester) -> Result<Content, StoreError> {
        let owner = owner_of(req.scope, by)?;
        let kind = req.kind;
        let subject_id = req.subject_id as i64;
        let context = req.context.as_ref().map(|c| serde_json::to_string(c).expect("context serializes"));
        let empty = Value::Object(req.kind.empty_fields()).to_string();
        let regenerate = req.regenerate;
        let may_change = self.writers == SharedWriters::Players || by.server || owner != SHARED_OWNER;
        let counted = self.count_start(kind, subject_id, owner, regenerate, by).await?;
        let queue_limit = self.queue_limit;
        let now = self.clock.now_naive();
        let origin = self.origin.clone();
        let slot = self.jobs.reserve();
        let claimer = slot.as_ref().map(|slot| slot.claimer());
        let stored_context = context.clone().unwrap_or_else(|| "{}".to_owned());
        let ahead = Ahead::Request(Asked {
            kind,
            subject_id,
            owner,
            fields: empty.clone(),
            context: stored_context.clone(),
            player: by.user_id.unwrap_or(0),
            worker: claimer.as_ref().filter(|_| !regenerate).map(|c| c.worker().to_owned()),
            at: now,
            reserving: Some(reserving(self.config.clone(), kind, subject_id, stored_context, by, now)),
        });
        let (jobs, hub) = (self.jobs.clone(), self.hub.clone());
        let (config, metrics) = (self.config.clone(), self.metrics.clone());
        // Run again when a write of its batch fails: whatever is only counted, is counted once
        // committed.
        let write = move |conn: &mut DbConn| {
            let item = RequestItem {
                origin: &origin,
                kind,
                subject_id,
                owner,
                player: by.user_id.unwrap_or(0),
                context: context.as_deref(),
                empty_fields: &empty,
                regenerate,
                may_change,
                claim_for: claimer.as_ref().map(|c| c.worker()),
                queue_limit,
            };
            let (mut requested, mut job) = rows::request(conn, &item, now)?;
            let mut refused = None;
            if let Requested::Created(row) | Requested::Regenerating(row) = &requested {
                if let Some((fallback, refusal)) = charge(conn, &config, &origin, row, by, now)? {
                    refused = Some(refusal);
                    requested = match requested {
                        Requested::Regenerating(_) => Requested::Regenerating(fallback),
                        _ => Requested::Created(fallback),
                    };
                    job = None;
                }
            }
            // What the job's attempt reads, read now (the claim's own read).
            let claimed = match job {
                Some(job) if claimer.is_some() => Some((job, Some(job::loaded(conn, requested.row())?))),
                job => job.map(|job| (job, None)),
            };
            Ok((requested, claimed, refused))
        };
        // Once committed, on the writer's thread: the job goes to the worker even when the
        // session that asked is gone by then (else a job claimed for nobody would wait out its lease).
        let committed = move |(requested, claimed, refused): Committed| {
            if let Some(refusal) = refused {
                let id = requested.row().id;
                tracing::info!(content = id, why = %refusal, "content item falls back: the studio's limit is reached");
                limits::observe::refused(&metrics, &refusal);
            }
            match (claimed, slot) {
                (Some((job, loaded)), Some(slot)) => slot.start(job, loaded),
                _ if requested.enqueued() => jobs.wake(),
                _ => {}
            }
            if let Requested::Regenerating(row) = &requested {
                // Sessions already watching this item see it go back to pending.
                match row.content() {
                    Ok(content) => hub.do_send(update_publish(content)),
                    Err(e) => tracing::error!(error = %e, "a regenerated content row cannot be read"),
                }
            }
            requested
        };
        let requested = self.store.write_ahead_for(by.user_id, Some(ahead), write, committed).await;
        if let Err(StoreError::OverLimit(refusal)) = &requested {
            limits::observe::refused(&self.metrics, refusal);
        }
        if let Some(counted) = counted {
            // Counted before the write knew: given back when nothing was created or regenerated.
            if !matches!(requested, Ok(Requested::Created(_) | Requested::Regenerating(_))) {
                if let Some(rate) = &self.rate {
                    rate.give_back(counted);
                }
            }
        }
        requested?.row().content()
    }

    /// The shared item, or with `scope` player the requester's own.
    pub async fn get(
        &self,
        kind: ContentKind,
        subject_id: u64,
        scope: ContentScope,
        by: Requester,
    ) -> Result<Option<Content>, StoreError> {
        let owner = owner_of(scope, by)?;
        let Ok(subject_id) = check_subject_id(subject_id) else { return Ok(None) };
        let row = self.store.run(move |conn| rows::find(conn, kind, subject_id, owner)).await?;
        row.as_ref().map(ContentRow::content).transpose()
    }
}

/// What a content request's write answers once committed: what it did, the job it claimed
/// for this process's worker, and the studio's refusal when the item fell back at once.
type Committed = (Requested, Option<(JobRow, Option<Loaded>)>, Option<Refusal>);

/// Reserves the call of the item `row` (just created or regenerated) for player `by` (the
/// game server's own requests: the studio only) and the studio. `Some`: the studio refused,
/// the item as written with its fallback instead, and why.
fn charge(
    conn: &mut DbConn,
    config: &Config,
    origin: &str,
    row: &ContentRow,
    by: Requester,
    now: chrono::NaiveDateTime,
) -> StoreResult<Option<(ContentRow, Refusal)>> {
    let kind = row.kind()?;
    let target = format!("content:{}", row.id);
    let call = call_of(conn, config, kind, row.subject_id, &row.context, by)?;
    let spend = call.spend(&target);
    match limits::reserve(conn, &config.usage, &spend, now)? {
        Ok(()) => Ok(None),
        Err(refusal) if refusal.level == Level::Player => Err(StoreError::OverLimit(refusal)),
        Err(refusal) => {
            let fields = Value::Object(kind.fallback_fields(row.subject_id as u64)).to_string();
            let reason = FallbackReason::BudgetExceeded.to_string();
            let row = rows::fall_back_unqueued(conn, origin, row.id, &fields, &reason, now)?;
            Ok(Some((row, refusal)))
        }
    }
}

/// The call a new item of `kind` with `context` (as stored) would make for `by`, at most.
struct Call {
    user_id: i64,
    model: String,
    prompt_tokens: i64,
    output_tokens: i64,
}

impl Call {
    fn spend<'a>(&'a self, target: &'a str) -> Spend<'a> {
        let (prompt_tokens, output_tokens) = (self.prompt_tokens, self.output_tokens);
        Spend { user_id: self.user_id, project: None, model: &self.model, target, prompt_tokens, output_tokens }
    }
}

fn call_of(
    conn: &mut DbConn,
    config: &Config,
    kind: ContentKind,
    subject_id: i64,
    context: &str,
    by: Requester,
) -> StoreResult<Call> {
    let context: Context = serde_json::from_str(context).map_err(|e| {
        StoreError::Corrupt(format!("content {} {subject_id}: the stored context is not JSON: {e}", kind.as_str()))
    })?;
    let prompt = prompts::prompt(kind, subject_id as u64, &context, config.max_output_tokens);
    let (prompt_tokens, output_tokens) = prompt.bound_with_reask();
    // With moderation on, a flagged answer is asked for once more: two calls' worth.
    let calls = if config.moderation.is_on() { 2 } else { 1 };
    let first = upstreams::all(conn)?.into_iter().find(UpstreamRow::is_first);
    let model = first.map(|c| c.model).unwrap_or_else(|| config.llm_model.clone());
    let user_id = by.user_id.unwrap_or(limits::SERVER);
    Ok(Call { user_id, model, prompt_tokens: prompt_tokens * calls, output_tokens: output_tokens * calls })
}

/// What a new item's call would reserve, reserved ahead of the writer's batch with the batch's
/// others ([`crate::store::ahead`]).
fn reserving(
    config: Arc<Config>,
    kind: ContentKind,
    subject_id: i64,
    context: String,
    by: Requester,
    now: chrono::NaiveDateTime,
) -> Reserving {
    Reserving(Arc::new(move |conn| {
        let call = call_of(conn, &config, kind, subject_id, &context, by)?;
        // Its target is not known before the item is made; a plan does not hold one.
        limits::plan(conn, &config.usage, &call.spend(""), now)
    }))
}

/// The owner an item of `scope` is stored with: [`SHARED_OWNER`], or the requesting player. The
/// edges ask for a player's own item only with a player (the admin token has none).
fn owner_of(scope: ContentScope, by: Requester) -> Result<i64, StoreError> {
    match (scope, by.user_id) {
        (ContentScope::Shared, _) => Ok(SHARED_OWNER),
        (ContentScope::Player, Some(user_id)) => Ok(user_id),
        (ContentScope::Player, None) => {
            Err(StoreError::Corrupt("a player's own item was asked for without a player".into()))
        }
    }
}
