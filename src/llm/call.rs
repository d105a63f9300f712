//! The one structured-call path: the stored settings, a [`Prompt`] and a validator in; the
//! validated value, the model that made it and the usage the provider reported out, or the
//! failure's code. The circuit breaker's permit, the call, judging the answer, the
//! `upstream_calls` and `upstream_call_seconds` metrics, the stored `last_error` and the
//! redaction of the key all happen here and nowhere else.
//!
//! Knows nothing of what is asked (content, moods): the caller brings the prompt and the
//! validator. Never holds a DB connection across the call.

use std::sync::Arc;
use std::time::Duration;

use actix::Addr;

use super::circuit::{Acquire, CircuitBreaker, Outcome, Permit, Refusal, Report};
use super::client::{self, UpstreamError};
use super::providers::{self, Prompt, Provider};
use crate::core::clock::SharedClock;
use crate::core::metrics::Metrics;
use crate::domain::answer::OutputError;
use crate::domain::runs::Usage;
use crate::domain::upstream::{CallFailure, UpstreamFailure};
use crate::store::llm_config::{self, LlmConfigRow};
use crate::store::Store;

/// A validated answer.
#[derive(Debug, Clone)]
pub struct Answer<T> {
    pub value: T,
    /// The model that answered.
    pub model: String,
    /// Tokens, when the provider reported them.
    pub usage: Option<Usage>,
}

/// Makes structured calls; cheap to clone (one HTTP client, shared).
#[derive(Clone)]
pub struct Llm {
    store: Store,
    circuit: Addr<CircuitBreaker>,
    clock: SharedClock,
    metrics: Arc<Metrics>,
    client: awc::Client,
    timeout: Duration,
}

impl Llm {
    /// `timeout` bounds each call (`LOREWIRE_LLM_TIMEOUT_SECS`).
    pub fn new(
        store: Store,
        circuit: Addr<CircuitBreaker>,
        clock: SharedClock,
        metrics: Arc<Metrics>,
        timeout: Duration,
    ) -> Self {
        Llm { store, circuit, clock, metrics, client: client::build_client(timeout), timeout }
    }

    /// The HTTP client, for streamed calls sharing its connections.
    pub fn client(&self) -> &awc::Client {
        &self.client
    }

    /// One structured call through the circuit breaker. `what` names the call in the logs.
    pub async fn call<T>(
        &self,
        config: Option<&LlmConfigRow>,
        prompt: &Prompt,
        validate: impl FnOnce(&str) -> Result<T, OutputError>,
        what: &str,
    ) -> Result<Answer<T>, CallFailure> {
        let config = config.ok_or(CallFailure::NoConfig)?;
        let credentials = super::credentials::credentials(config).ok_or(CallFailure::NoConfig)?;
        let probe = match self.circuit.send(Acquire).await {
            Ok(Permit::Call { probe }) => probe,
            Ok(Permit::Refuse(Refusal::CircuitOpen)) | Err(_) => return Err(CallFailure::CircuitOpen),
            Ok(Permit::Refuse(Refusal::RateLimited)) => return Err(UpstreamFailure::RateLimited.into()),
        };
        let request = providers::build_request(&credentials.target(&config.model), prompt);
        let sent = std::time::Instant::now();
        let answer = client::send(&self.client, &request, self.timeout).await;
        self.metrics.upstream_seconds.observe(sent.elapsed().as_secs_f64());

        let (outcome, result) = judge(credentials.provider, answer, validate);
        self.circuit.do_send(Report { probe, outcome });
        let label = match &result {
            Ok(_) => "ok".to_owned(),
            Err((failure, _)) => failure.to_string(),
        };
        self.metrics.upstream_calls.with_label_values(&[&label]).inc();
        match result {
            Ok((value, usage)) => {
                if config.last_error.is_some() {
                    self.record_last_error(None).await;
                }
                Ok(Answer { value, model: config.model.clone(), usage })
            }
            Err((failure, why)) => {
                let why = super::redact::redact(&why, &credentials.api_key);
                tracing::warn!(call = what, reason = %failure, error = %why, "upstream call failed");
                self.record_last_error(Some(format!("{failure}: {why}"))).await;
                Err(failure)
            }
        }
    }

    async fn record_last_error(&self, error: Option<String>) {
        let now = self.clock.now_naive();
        let saved = self.store.run(move |conn| llm_config::set_last_error(conn, error.as_deref(), now)).await;
        if let Err(e) = saved {
            tracing::error!(error = %e, "could not record the last upstream error");
        }
    }
}

/// A failed answer: its code, and the detail for logs and `last_error`.
type Failed = (CallFailure, String);

/// An answer judged: what it tells the circuit breaker, and the validated value (with the usage
/// reported) or why there is none.
fn judge<T>(
    provider: Provider,
    answer: Result<bytes::Bytes, UpstreamError>,
    validate: impl FnOnce(&str) -> Result<T, OutputError>,
) -> (Outcome, Result<(T, Option<Usage>), Failed>) {
    let invalid = CallFailure::Upstream(UpstreamFailure::InvalidResponse);
    match answer {
        Ok(body) => match providers::parse_answer(provider, &body) {
            Err(why) => (Outcome::Failure, Err((invalid, why))),
            Ok((text, usage)) => match validate(&text) {
                Ok(value) => (Outcome::Success, Ok((value, usage))),
                Err(OutputError::NotJson(why)) => (Outcome::Failure, Err((CallFailure::InvalidJson, why))),
                Err(e @ OutputError::Invalid(_)) => (Outcome::Failure, Err((invalid, e.to_string()))),
            },
        },
        Err(e) => (e.circuit_outcome(), Err((e.failure().into(), e.to_string()))),
    }
}
