//! Mood jobs: classify one lobby message through the same circuit breaker and provider as
//! content, and always commit a mood (`ready`, or `neutral` / `fallback` on any failure).
//!
//! A child of the actor module so it shares [`JobDeps`] and the last-error bookkeeping.
//! Like content jobs, it never holds a DB connection across the upstream call.

use super::*;
use crate::lobby::{self, mood, Mood, MoodStatus};
use crate::store::messages::{self, MOOD_PENDING};

/// Answers are one short JSON object.
const MOOD_MAX_TOKENS: u32 = 64;

pub(super) async fn run_mood_job(deps: JobDeps, job: JobRow) -> Result<(), StoreError> {
    let message_id = job.target_id;
    let (row, config) =
        deps.store.run(move |conn| Ok((messages::find(conn, message_id)?, llm_config::get(conn)?))).await?;
    let Some(row) = row.filter(|r| r.mood_status == MOOD_PENDING) else {
        let worker = deps.worker.clone();
        deps.store.run(move |conn| jobs::complete(conn, job.id, &worker)).await?;
        return Ok(());
    };
    let (mood, status) = match classify(&deps, config.as_ref(), &row.text).await {
        Ok(mood) => (mood, MoodStatus::Ready),
        Err(reason) => {
            tracing::info!(message = message_id, %reason, "mood fallback");
            (Mood::Neutral, MoodStatus::Fallback)
        }
    };
    let worker = deps.worker.clone();
    let finished = deps
        .store
        .run(move |conn| {
            messages::finish_mood(conn, &worker, job.id, &worker, message_id, mood.as_str(), status.as_str())
        })
        .await?;
    let Some(row) = finished else {
        tracing::warn!(job = job.id, "mood job was taken over by another worker; result dropped");
        return Ok(());
    };
    deps.metrics.moods_finished.with_label_values(&[status.as_str()]).inc();
    let message = row.message();
    tracing::info!(message = message.id, mood = mood.as_str(), status = status.as_str(), "mood settled");
    deps.hub.do_send(lobby::mood_publish(&message));
    Ok(())
}

/// One classification call; the fallback reason on any failure.
async fn classify(deps: &JobDeps, config: Option<&LlmConfigRow>, text: &str) -> Result<Mood, FallbackReason> {
    let prompt = Prompt {
        system: mood::SYSTEM_PROMPT.to_owned(),
        user: mood::user_message(text),
        schema_name: mood::SCHEMA_NAME.to_owned(),
        schema: mood::json_schema(),
        max_tokens: deps.config.max_output_tokens.min(MOOD_MAX_TOKENS),
    };
    Ok(call_structured(deps, config, &prompt, mood::validate_output, "mood").await?.0)
}
