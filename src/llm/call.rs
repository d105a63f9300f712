//! The one structured-call path: the upstreams, a [`Prompt`] and a validator in; the validated
//! value, the model that made it, the usage the provider reported and how it was repaired out,
//! or the failure's code. Routing (PROTOCOL §7), each upstream's circuit permit, the calls,
//! judging the answer, the one re-ask, the `upstream_calls` and `upstream_call_seconds`
//! metrics, each upstream's stored `last_error` and parking, and the redaction of the key all
//! happen here (streamed runs use the same routing and recording, `llm::route`, and redaction).
//!
//! Routing: the lowest `priority` with a usable upstream (enabled, with a key or a server of
//! its own, circuit not open, not inside a `retry-after`, not parked) is chosen by `weight`; a
//! 5xx/529, network error, timeout, 429, 401/403 or an answer unusable after the repair moves
//! the call on to the next usable upstream, each tried at most once and at most `hops` in all.
//! A 401/403 parks that upstream (a parked one is still tried when no other is usable, so a
//! single upstream with a bad key keeps saying so). The fallback's reason is the last tried
//! upstream's, or `circuit_open` / `rate_limited` / `no_config` when none could be tried.
//!
//! Repair before fallback: an answer the validator can salvage is accepted as salvaged; an
//! answer it refuses (not JSON, a missing field, a field over its cap) is asked for once more,
//! telling the model what was wrong. The pair of calls holds one permit and reports one outcome
//! to that upstream's circuit breaker, while each call is counted in `upstream_calls` and timed
//! in `upstream_call_seconds`. Whatever the provider answered with a 2xx is a success for the
//! circuit: an answer still invalid after the re-ask, or a model's refusal, is that call's
//! failure alone, so no player's text can open a circuit for everyone.
//!
//! Knows nothing of what is asked (content, moods): the caller brings the prompt and the
//! validator. Never holds a DB connection across the call.

use std::sync::Arc;
use std::time::Duration;

use super::circuit::{Outcome, Report};
use super::client::{self, UpstreamError};
use super::credentials::Credentials;
use super::providers::{self, Prompt, Provider};
use super::route::{self, Picked};
use super::upstreams::Upstreams;
use crate::core::clock::SharedClock;
use crate::core::metrics::Metrics;
use crate::domain::answer::{Checked, OutputError};
use crate::domain::runs::Usage;
use crate::domain::upstream::{CallFailure, NoAnswer, UpstreamFailure};
use crate::store::upstreams::UpstreamRow;
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
    upstreams: Upstreams,
    clock: SharedClock,
    metrics: Arc<Metrics>,
    client: awc::Client,
    timeout: Duration,
    hops: usize,
}

impl Llm {
    /// `timeout` bounds each call (`LOREWIRE_LLM_TIMEOUT_SECS`); `hops` is how many upstreams
    /// one call may try (`LOREWIRE_LLM_HOPS`).
    pub fn new(
        store: Store,
        upstreams: Upstreams,
        clock: SharedClock,
        metrics: Arc<Metrics>,
        timeout: Duration,
        hops: usize,
    ) -> Self {
        let client = client::build_client(timeout);
        Llm { store, upstreams, clock, metrics, client, timeout, hops: hops.max(1) }
    }

    /// The HTTP client, for streamed calls sharing its connections.
    pub fn client(&self) -> &awc::Client {
        &self.client
    }

    /// The upstreams' circuits and counters.
    pub fn upstreams(&self) -> &Upstreams {
        &self.upstreams
    }

    /// One structured call, routed over `rows` (every upstream, as stored), asked once more on
    /// an upstream whose answer is refused. `what` names the call in the logs.
    pub async fn call<T>(
        &self,
        rows: &[UpstreamRow],
        prompt: &Prompt,
        validate: impl Fn(&str) -> Result<Checked<T>, OutputError>,
        what: &str,
    ) -> Result<Answer<T>, NoAnswer> {
        let mut tried: Vec<(i64, CallFailure)> = Vec::new();
        while tried.len() < self.hops {
            let avoid: Vec<i64> = tried.iter().map(|(id, _)| *id).collect();
            let Picked { row, credentials, circuit, probe } =
                match route::pick(&self.upstreams, rows, &avoid, what).await {
                    Ok(picked) => picked,
                    Err(untried) => {
                        let reason = tried.last().map_or(untried, |(_, failure)| *failure);
                        return Err(NoAnswer { reason, tried: tried.into_iter().map(|(_, f)| f).collect() });
                    }
                };
            let answered = self.try_upstream(row, &credentials, prompt, &validate, what).await;
            let outcome = answered.as_ref().map_or_else(|(outcome, ..)| *outcome, |_| Outcome::Success);
            circuit.do_send(Report { probe, outcome });
            match answered {
                Ok(answer) => return Ok(answer),
                Err((_, failure, moves_on)) => {
                    tried.push((row.id, failure));
                    if !moves_on {
                        break;
                    }
                }
            }
        }
        let tried: Vec<CallFailure> = tried.into_iter().map(|(_, failure)| failure).collect();
        Err(NoAnswer { reason: *tried.last().unwrap_or(&CallFailure::NoConfig), tried })
    }

    /// The call (and its re-ask) on one upstream whose circuit permitted it; a failure with
    /// what it tells the circuit and whether the call moves on. Records its `last_error`.
    async fn try_upstream<T>(
        &self,
        row: &UpstreamRow,
        credentials: &Credentials,
        prompt: &Prompt,
        validate: &impl Fn(&str) -> Result<Checked<T>, OutputError>,
        what: &str,
    ) -> Result<Answer<T>, (Outcome, CallFailure, bool)> {
        let target = credentials.target(&row.model);
        let provider = credentials.provider;
        let mut judged = self.ask(row.id, provider, &providers::build_request(&target, prompt), validate).await;
        let mut repair = None;
        let mut earlier_usage = None;
        if let Judged::Refused(refusal, usage) = judged {
            tracing::info!(call = what, upstream = row.id, error = %refusal, "answer refused; asking once more");
            earlier_usage = usage;
            let again = prompt.reasked(&refusal.to_string());
            judged = self.ask(row.id, provider, &providers::build_request(&target, &again), validate).await;
            repair = Some(Repair::Reasked);
        }
        let (outcome, (failure, why)) = match judged {
            Judged::Valid(checked, usage) => {
                if row.last_error.is_some() || row.parked.is_some() {
                    route::record(&self.store, &self.clock, row.id, None, None).await;
                }
                let repair = repair.or(checked.salvaged.then_some(Repair::Salvaged));
                let usage = add_usage(earlier_usage, usage);
                return Ok(Answer { value: checked.value, model: row.model.clone(), usage, repair });
            }
            // The provider answered: invalid twice is this call's failure, not the circuit's.
            Judged::Refused(refusal, _) => (Outcome::Success, refused(refusal)),
            Judged::Failed(outcome, failure, why) => (outcome, (failure, why)),
        };
        let why = super::redact::redact(&why, &credentials.api_key);
        tracing::warn!(call = what, upstream = row.id, reason = %failure, error = %why, "upstream call failed");
        let parked_by = route::parks(failure).then(|| failure.to_string());
        route::record(&self.store, &self.clock, row.id, Some(format!("{failure}: {why}")), parked_by).await;
        let moves_on = match failure {
            CallFailure::Upstream(UpstreamFailure::ApiError(status)) => status >= 500 || route::parks(failure),
            _ => true,
        };
        Err((outcome, failure, moves_on))
    }

    /// One upstream call, judged and counted.
    async fn ask<T>(
        &self,
        upstream: i64,
        provider: Provider,
        request: &providers::UpstreamRequest,
        validate: &impl Fn(&str) -> Result<Checked<T>, OutputError>,
    ) -> Judged<T> {
        let sent = std::time::Instant::now();
        let answer = client::send(&self.client, request, self.timeout).await;
        self.metrics.upstream_seconds.observe(sent.elapsed().as_secs_f64());
        self.upstreams.timed(upstream, sent.elapsed());
        let judged = judge(provider, answer, validate);
        let label = match &judged {
            Judged::Valid(..) => "ok".to_owned(),
            Judged::Refused(refusal, _) => refused(refusal.clone()).0.to_string(),
            Judged::Failed(_, failure, _) => failure.to_string(),
        };
        self.upstreams.call_ended(upstream, &label);
        judged
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
