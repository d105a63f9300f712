//! The mood job: classifies one lobby message through the structured-call path and commits a
//! mood (`ready`, or `neutral` / `fallback` on any failure, lorewire's own after the last
//! attempt included) together with the job's removal, then publishes `message:mood_updated`.
//!
//! The call is charged to the message's author and the studio (PROTOCOL §5): its bound is
//! reserved before it (over a limit the mood settles `fallback` without a call) and its usage
//! settled with the mood.
//!
//! Never holds a DB connection across the upstream call.

use std::rc::Rc;
use std::sync::Arc;

use actix::Addr;
use futures_util::future::LocalBoxFuture;

use super::{mood, mood_publish, Mood, MoodStatus};
use crate::core::clock::SharedClock;
use crate::core::config::Config;
use crate::core::metrics::Metrics;
use crate::core::process::ProcessId;
use crate::deps::Deps;
use crate::domain::answer::Checked;
use crate::hub::Hub;
use crate::jobs::{nothing_to_do, Adopter, Claim, JobHandler, JobKind, JobResult, Outcome};
use crate::limits::observe::{self, Charged};
use crate::limits::{self, Spend, Used};
use crate::llm::providers::Prompt;
use crate::llm::Llm;
use crate::store::jobs::Ended;
use crate::store::messages::{self, MessageRow};
use crate::store::{upstreams, Store};

/// Answers are one short JSON object.
const MOOD_MAX_TOKENS: u32 = 64;

/// Runs `mood` jobs.
pub struct MoodJob {
    /// This process (cross-process notifications).
    origin: ProcessId,
    store: Store,
    hub: Addr<Hub>,
    metrics: Arc<Metrics>,
    llm: Llm,
    max_tokens: u32,
    clock: SharedClock,
    config: Arc<Config>,
}

impl MoodJob {
    pub fn new(deps: &Deps, llm: Llm) -> Self {
        let Deps { process, store, hub, metrics, config, clock } = deps.clone();
        let max_tokens = config.max_output_tokens.min(MOOD_MAX_TOKENS);
        MoodJob { origin: process, store, hub, metrics, llm, max_tokens, clock, config }
    }

    async fn attempt(&self, claim: Claim) -> JobResult {
        let message_id = claim.target_id;
        let (row, upstreams) =
            self.store.run(move |conn| Ok((messages::find(conn, message_id)?, upstreams::all(conn)?))).await?;
        let Some(row) = row.filter(MessageRow::mood_is_pending) else {
            return nothing_to_do(&self.store, &claim).await;
        };
        let prompt = Prompt {
            system: mood::SYSTEM_PROMPT.to_owned(),
            user: mood::user_message(&row.text),
            schema_name: mood::SCHEMA_NAME.to_owned(),
            schema: mood::json_schema(),
            max_tokens: self.max_tokens,
        };
        let (prompt_tokens, output_tokens) = prompt.bound_with_reask();
        // Held at the first upstream's price; settled at the price of the model that answers.
        let first = upstreams.iter().find(|u| u.is_first());
        let model = first.map_or_else(|| self.config.llm_model.clone(), |c| c.model.clone());
        let (usage, now, author) = (self.config.usage, self.clock.now_naive(), row.user_id);
        let cut = claim.attempt > 1;
        let reserved = self
            .store
            .write_for(claim.player, move |conn| {
                let target = target(message_id);
                // An earlier claim cut short (its process died, or lost the job), maybe
                // mid-call: what it held is charged before this attempt reserves anew.
                let cut = if cut { limits::settle(conn, &target, Used::Unknown, now)? } else { Charged::default() };
                let spend = Spend {
                    user_id: author,
                    project: None,
                    model: &model,
                    target: &target,
                    prompt_tokens,
                    output_tokens,
                };
                Ok((cut, limits::reserve(conn, &usage, &spend, now)?))
            })
            .await?;
        let (cut, reserved) = reserved;
        cut.record(&self.metrics);
        if let Err(refusal) = reserved {
            observe::refused(&self.metrics, &refusal);
            tracing::info!(
                message = message_id,
                level = refusal.level.as_str(),
                "mood fallback: a usage limit is reached"
            );
            return self.commit(&claim, Mood::Neutral, MoodStatus::Fallback, (Used::Nothing, None)).await;
        }
        let validate = |text: &str| mood::validate_output(text).map(Checked::exact);
        let (mood, status, used) = match self.llm.call(&upstreams, &prompt, validate, "mood").await {
            Ok(answer) => {
                if let Some(repair) = answer.repair {
                    self.metrics.answers_repaired.with_label_values(&["mood", repair.as_str()]).inc();
                }
                let used = answer.usage.map_or(Used::Unknown, Used::Reported);
                (answer.value, MoodStatus::Ready, (used, Some(answer.model)))
            }
            Err(no_answer) => {
                tracing::info!(message = message_id, reason = %no_answer.reason, "mood fallback");
                (Mood::Neutral, MoodStatus::Fallback, (limits::used_by_failures(&no_answer.tried), None))
            }
        };
        self.commit(&claim, mood, status, used).await
    }

    /// Commits the mood with the job's removal (charging what was `used`, priced as the model
    /// that answered), then tells everyone in the lobby.
    async fn commit(&self, claim: &Claim, mood: Mood, status: MoodStatus, used: (Used, Option<String>)) -> JobResult {
        let (used, answered_by) = used;
        let (origin, worker, job_id, message_id) =
            (self.origin.clone(), claim.worker.clone(), claim.job_id, claim.target_id);
        let now = self.clock.now_naive();
        let ended = self
            .store
            .write_for(claim.player, move |conn| {
                let ended = messages::finish_mood(conn, &origin, job_id, &worker, message_id, mood, status)?;
                let mut charged = Charged::default();
                if let Ended::Done(_) = &ended {
                    charged = limits::settle_as(conn, &target(message_id), used, answered_by.as_deref(), now)?;
                }
                Ok((ended, charged))
            })
            .await?;
        let (ended, charged) = ended;
        charged.record(&self.metrics);
        let row = match ended {
            Ended::TakenOver => return Ok(Outcome::TakenOver),
            Ended::Done(None) => return Ok(Outcome::Nothing),
            Ended::Done(Some(row)) => row,
        };
        self.metrics.moods_finished.with_label_values(&[status.as_str()]).inc();
        let message = row.message();
        tracing::info!(message = message.id, mood = mood.as_str(), status = status.as_str(), "mood settled");
        self.hub.do_send(mood_publish(&message));
        Ok(Outcome::Done)
    }
}

/// The ledger's name of a message's mood call.
fn target(message_id: i64) -> String {
    format!("mood:{message_id}")
}

impl JobHandler for MoodJob {
    fn kind(&self) -> JobKind {
        JobKind::Mood
    }

    fn adopter(&self) -> Option<Adopter> {
        Some(crate::store::messages::adopt_orphans)
    }

    fn run(self: Rc<Self>, claim: Claim) -> LocalBoxFuture<'static, JobResult> {
        Box::pin(async move { self.attempt(claim).await })
    }

    /// No attempt is left: the message settles `neutral` / `fallback`.
    fn give_up(self: Rc<Self>, claim: Claim) -> LocalBoxFuture<'static, JobResult> {
        // Whether an earlier attempt called is not known: charged as reserved, never under.
        Box::pin(async move { self.commit(&claim, Mood::Neutral, MoodStatus::Fallback, (Used::Unknown, None)).await })
    }
}
