//! Mood jobs: classify one lobby message through the same circuit breaker and provider as
//! content, and always commit a mood (`ready`, or `neutral` / `fallback` on any failure).
//!
//! A child of the actor module so it shares [`JobDeps`] and the last-error bookkeeping.
//! Like content jobs, it never holds a DB connection across the upstream call.

use super::*;
use crate::content::kinds::OutputError;
use crate::lobby::{self, mood, Message, Mood, MoodStatus};
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
    let message = Message::from_row(&row);
    tracing::info!(message = message.id, mood = mood.as_str(), status = status.as_str(), "mood settled");
    deps.hub.do_send(lobby::mood_publish(&message));
    Ok(())
}

/// One classification call; the fallback reason on any failure.
async fn classify(deps: &JobDeps, config: Option<&LlmConfigRow>, text: &str) -> Result<Mood, FallbackReason> {
    let config = config.ok_or(FallbackReason::NoConfig)?;
    let provider: Provider = config.provider.parse().map_err(|_| FallbackReason::NoConfig)?;
    let api_key = config.api_key.clone().unwrap_or_default();
    if api_key.is_empty() && !keyless_allowed(provider, &config.base_url) {
        return Err(FallbackReason::NoConfig);
    }
    let probe = match deps.circuit.send(Acquire).await {
        Ok(Permit::Call { probe }) => probe,
        Ok(Permit::Refuse(Refusal::CircuitOpen)) | Err(_) => return Err(FallbackReason::CircuitOpen),
        Ok(Permit::Refuse(Refusal::RateLimited)) => return Err(FallbackReason::RateLimited),
    };
    let prompt = Prompt {
        system: mood::SYSTEM_PROMPT.to_owned(),
        user: mood::user_message(text),
        schema_name: mood::SCHEMA_NAME.to_owned(),
        schema: mood::json_schema(),
        max_tokens: deps.config.max_output_tokens.min(MOOD_MAX_TOKENS),
    };
    let target = Target { provider, base_url: &config.base_url, model: &config.model, api_key: &api_key };
    let request = providers::build_request(&target, &prompt);
    let answer = client::send(&deps.client, &request, deps.config.llm_timeout).await;

    let (outcome, result) = match answer {
        Ok(body) => match providers::parse_text(provider, &body) {
            Err(why) => (Outcome::Failure, Err((FallbackReason::InvalidResponse, why))),
            Ok(text) => match mood::validate_output(&text) {
                Ok(mood) => (Outcome::Success, Ok(mood)),
                Err(OutputError::NotJson(why)) => (Outcome::Failure, Err((FallbackReason::InvalidJson, why))),
                Err(e @ OutputError::Invalid(_)) => {
                    (Outcome::Failure, Err((FallbackReason::InvalidResponse, e.to_string())))
                }
            },
        },
        Err(e) => {
            let outcome = match &e {
                UpstreamError::Status { retry_after, .. } if e.is_rate_limit() => Outcome::RateLimited(*retry_after),
                _ if e.counts_for_circuit() => Outcome::Failure,
                _ => Outcome::Rejected,
            };
            let reason = match &e {
                _ if e.is_rate_limit() => FallbackReason::RateLimited,
                UpstreamError::Status { status, .. } => FallbackReason::ApiError(*status),
                UpstreamError::Network(_) => FallbackReason::NetworkError,
                UpstreamError::Timeout => FallbackReason::Timeout,
                UpstreamError::InvalidResponse(_) => FallbackReason::InvalidResponse,
            };
            (outcome, Err((reason, e.to_string())))
        }
    };
    deps.circuit.do_send(Report { probe, outcome });
    let label = match &result {
        Ok(_) => "ok".to_owned(),
        Err((reason, _)) => reason.to_string(),
    };
    deps.metrics.upstream_calls.with_label_values(&[&label]).inc();
    match result {
        Ok(mood) => {
            if config.last_error.is_some() {
                record_last_error(deps, None).await;
            }
            Ok(mood)
        }
        Err((reason, why)) => {
            let why = crate::llm::redact(&why, &api_key);
            tracing::warn!(%reason, error = %why, "mood classification failed");
            record_last_error(deps, Some(format!("{reason}: {why}"))).await;
            Err(reason)
        }
    }
}
