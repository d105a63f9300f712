//! The one structured-call path: the stored settings, a [`Prompt`] and a validator in; the
//! validated value, the model that made it, the usage the provider reported and how it was
//! repaired out, or the failure's code. The circuit breaker's permit, the calls, judging the
//! answer, the one re-ask, the `upstream_calls` and `upstream_call_seconds` metrics, the
//! stored `last_error` and the redaction of the key all happen here (streamed runs use
//! [`record_last_error`] and the same redaction).
//!
//! Repair before fallback: an answer the validator can salvage is accepted as salvaged; an
//! answer it refuses (not JSON, a missing field, a field over its cap) is asked for once more,
//! telling the model what was wrong. The pair of calls holds one permit and reports one outcome
//! to the circuit breaker, while each call is counted in `upstream_calls` and timed in
//! `upstream_call_seconds`. Whatever the provider answered with a 2xx is a success for the
//! circuit: an answer still invalid after the re-ask, or a model's refusal, is the item's
//! failure alone, so no player's text can open the circuit for everyone.
//!
//! Knows nothing of what is asked (content, moods): the caller brings the prompt and the
//! validator. Never holds a DB connection across the call.

use std::sync::Arc;
use std::time::Duration;

use actix::Addr;

use super::circuit::{Acquire, CircuitBreaker, Outcome, Permit, Refusal, Report};
use super::client::{self, UpstreamError};
use super::credentials::NoCredentials;
use super::providers::{self, Prompt, Provider};
use crate::core::clock::SharedClock;
use crate::core::metrics::Metrics;
use crate::domain::answer::{Checked, OutputError};
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
    /// Tokens, when the provider reported them (both calls' when it was asked twice).
    pub usage: Option<Usage>,
    /// How a refused or nearly right answer was made acceptable, if it had to be.
    pub repair: Option<Repair>,
}

/// How an answer was repaired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repair {
    /// Cut to fit by the validator (a field over its cap, an answer cut off).
    Salvaged,
    /// Refused, then asked for again and valid the second time.
    Reasked,
}

impl Repair {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Repair::Salvaged => "salvaged",
            Repair::Reasked => "reasked",
        }
    }
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

    /// One structured call through the circuit breaker, asked once more if the answer is
    /// refused. `what` names the call in the logs.
    pub async fn call<T>(
        &self,
        config: Option<&LlmConfigRow>,
        prompt: &Prompt,
        validate: impl Fn(&str) -> Result<Checked<T>, OutputError>,
        what: &str,
    ) -> Result<Answer<T>, CallFailure> {
        let config = config.ok_or(CallFailure::NoConfig)?;
        let credentials = super::credentials::credentials(config).map_err(|why| {
            if let NoCredentials::UnknownProvider(_) = why {
                tracing::warn!(call = what, error = %why, "no upstream call: the stored settings cannot be used");
            }
            CallFailure::NoConfig
        })?;
        let probe = match self.circuit.send(Acquire).await {
            Ok(Permit::Call { probe }) => probe,
            Ok(Permit::Refuse(Refusal::CircuitOpen)) | Err(_) => return Err(CallFailure::CircuitOpen),
            Ok(Permit::Refuse(Refusal::RateLimited)) => return Err(UpstreamFailure::RateLimited.into()),
        };
        let target = credentials.target(&config.model);
        let mut judged = self.ask(credentials.provider, &providers::build_request(&target, prompt), &validate).await;
        let mut repair = None;
        let mut earlier_usage = None;
        if let Judged::Refused(refusal, usage) = judged {
            tracing::info!(call = what, error = %refusal, "answer refused; asking once more");
            earlier_usage = usage;
            let again = prompt.reasked(&refusal.to_string());
            judged = self.ask(credentials.provider, &providers::build_request(&target, &again), &validate).await;
            repair = Some(Repair::Reasked);
        }
        let (outcome, result) = match judged {
            Judged::Valid(checked, usage) => {
                let repair = repair.or(checked.salvaged.then_some(Repair::Salvaged));
                (Outcome::Success, Ok((checked.value, add_usage(earlier_usage, usage), repair)))
            }
            // The provider answered: invalid twice is this item's failure, not the circuit's.
            Judged::Refused(refusal, _) => (Outcome::Success, Err(refused(refusal))),
            Judged::Failed(outcome, failure, why) => (outcome, Err((failure, why))),
        };
        self.circuit.do_send(Report { probe, outcome });
        match result {
            Ok((value, usage, repair)) => {
                if config.last_error.is_some() {
                    self.record_last_error(None).await;
                }
                Ok(Answer { value, model: config.model.clone(), usage, repair })
            }
            Err((failure, why)) => {
                let why = super::redact::redact(&why, &credentials.api_key);
                tracing::warn!(call = what, reason = %failure, error = %why, "upstream call failed");
                self.record_last_error(Some(format!("{failure}: {why}"))).await;
                Err(failure)
            }
        }
    }

    /// One upstream call, judged and counted.
    async fn ask<T>(
        &self,
        provider: Provider,
        request: &providers::UpstreamRequest,
        validate: &impl Fn(&str) -> Result<Checked<T>, OutputError>,
    ) -> Judged<T> {
        let sent = std::time::Instant::now();
        let answer = client::send(&self.client, request, self.timeout).await;
        self.metrics.upstream_seconds.observe(sent.elapsed().as_secs_f64());
        let judged = judge(provider, answer, validate);
        let label = match &judged {
            Judged::Valid(..) => "ok".to_owned(),
            Judged::Refused(refusal, _) => refused(refusal.clone()).0.to_string(),
            Judged::Failed(_, failure, _) => failure.to_string(),
        };
        self.metrics.upstream_calls.with_label_values(&[&label]).inc();
        judged
    }

    async fn record_last_error(&self, error: Option<String>) {
        record_last_error(&self.store, &self.clock, error).await;
    }
}

/// Stores the admin's `last_error` (`None` clears it); `error` has been through
/// [`redact`](super::redact::redact) already.
pub async fn record_last_error(store: &Store, clock: &SharedClock, error: Option<String>) {
    let now = clock.now_naive();
    let saved = store.write(move |conn| llm_config::set_last_error(conn, error.as_deref(), now)).await;
    if let Err(e) = saved {
        tracing::error!(error = %e, "could not record the last upstream error");
    }
}

/// A failed answer: its code, and the detail for logs and `last_error`.
type Failed = (CallFailure, String);

/// One call's answer judged.
enum Judged<T> {
    /// Valid (perhaps salvaged), with the usage reported.
    Valid(Checked<T>, Option<Usage>),
    /// The provider answered, but the validator refused the answer.
    Refused(OutputError, Option<Usage>),
    /// No usable answer (an upstream failure, or a 2xx that is not a usable answer, a refusal
    /// included): what it tells the circuit breaker, its code and detail.
    Failed(Outcome, CallFailure, String),
}

fn judge<T>(
    provider: Provider,
    answer: Result<bytes::Bytes, UpstreamError>,
    validate: &impl Fn(&str) -> Result<Checked<T>, OutputError>,
) -> Judged<T> {
    match answer {
        Ok(body) => match providers::parse_answer(provider, &body) {
            // A 2xx the provider made: it is up, and the answer is this item's failure alone.
            Err(why) => Judged::Failed(Outcome::Success, UpstreamFailure::InvalidResponse.into(), why.to_string()),
            Ok((text, usage)) => match validate(&text) {
                Ok(checked) => Judged::Valid(checked, usage),
                Err(refusal) => Judged::Refused(refusal, usage),
            },
        },
        Err(e) => Judged::Failed(e.circuit_outcome(), e.failure().into(), e.to_string()),
    }
}

/// A refused answer's code: `invalid_json` for text that is not JSON, else `invalid_response`.
fn refused(refusal: OutputError) -> Failed {
    match refusal {
        OutputError::NotJson(why) => (CallFailure::InvalidJson, why),
        e @ OutputError::Invalid(_) => (UpstreamFailure::InvalidResponse.into(), e.to_string()),
    }
}

/// The usage of two calls together (either may be unreported).
fn add_usage(a: Option<Usage>, b: Option<Usage>) -> Option<Usage> {
    match (a, b) {
        (Some(a), Some(b)) => Some(Usage {
            input_tokens: a.input_tokens + b.input_tokens,
            output_tokens: a.output_tokens + b.output_tokens,
            cache_read_tokens: a.cache_read_tokens + b.cache_read_tokens,
            cache_write_tokens: a.cache_write_tokens + b.cache_write_tokens,
        }),
        (a, b) => a.or(b),
    }
}
