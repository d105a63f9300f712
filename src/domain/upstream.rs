//! How a call to the model failed, named once: [`UpstreamFailure`] for a failed HTTP call (any
//! call, structured or streamed) and [`CallFailure`] for a structured call that gave no usable
//! answer. Content fallback reasons and run error codes are made from these, so a failure has
//! the same name wherever a client reads it. Pure; never does I/O.

use std::fmt;

use serde::Serialize;

use super::content::FallbackReason;
use super::runs::RunErrorCode;

/// A failed upstream call, as the provider's answer (or its absence) says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// 429, or a `retry-after` that has not passed yet.
    RateLimited,
    /// Any other non-2xx status.
    ApiError(u16),
    NetworkError,
    Timeout,
    /// A 2xx answer that cannot be used (not the wire format, or not what was asked for).
    InvalidResponse,
}

impl fmt::Display for UpstreamFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamFailure::RateLimited => f.write_str("rate_limited"),
            UpstreamFailure::ApiError(status) => write!(f, "api_error_{status}"),
            UpstreamFailure::NetworkError => f.write_str("network_error"),
            UpstreamFailure::Timeout => f.write_str("timeout"),
            UpstreamFailure::InvalidResponse => f.write_str("invalid_response"),
        }
    }
}

/// Why a structured call gave no value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallFailure {
    /// No usable provider settings (no key where one is needed): no call was made.
    NoConfig,
    /// The circuit breaker refused the call: no call was made.
    CircuitOpen,
    /// The model's answer is not JSON.
    InvalidJson,
    Upstream(UpstreamFailure),
}

impl fmt::Display for CallFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallFailure::NoConfig => f.write_str("no_config"),
            CallFailure::CircuitOpen => f.write_str("circuit_open"),
            CallFailure::InvalidJson => f.write_str("invalid_json"),
            CallFailure::Upstream(failure) => failure.fmt(f),
        }
    }
}

/// A structured call no upstream answered: the reason it falls back with (the last tried
/// upstream's, or why none could be tried) and each tried upstream's failure, in the order
/// tried (what the calls may have spent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoAnswer {
    pub reason: CallFailure,
    pub tried: Vec<CallFailure>,
}

impl From<UpstreamFailure> for CallFailure {
    fn from(failure: UpstreamFailure) -> Self {
        CallFailure::Upstream(failure)
    }
}

impl From<UpstreamFailure> for FallbackReason {
    fn from(failure: UpstreamFailure) -> Self {
        match failure {
            UpstreamFailure::RateLimited => FallbackReason::RateLimited,
            UpstreamFailure::ApiError(status) => FallbackReason::ApiError(status),
            UpstreamFailure::NetworkError => FallbackReason::NetworkError,
            UpstreamFailure::Timeout => FallbackReason::Timeout,
            UpstreamFailure::InvalidResponse => FallbackReason::InvalidResponse,
        }
    }
}

impl From<CallFailure> for FallbackReason {
    fn from(failure: CallFailure) -> Self {
        match failure {
            CallFailure::NoConfig => FallbackReason::NoConfig,
            CallFailure::CircuitOpen => FallbackReason::CircuitOpen,
            CallFailure::InvalidJson => FallbackReason::InvalidJson,
            CallFailure::Upstream(failure) => failure.into(),
        }
    }
}

impl From<UpstreamFailure> for RunErrorCode {
    fn from(failure: UpstreamFailure) -> Self {
        match failure {
            UpstreamFailure::RateLimited => RunErrorCode::RateLimited,
            UpstreamFailure::ApiError(status) => RunErrorCode::ApiError(status),
            UpstreamFailure::NetworkError => RunErrorCode::NetworkError,
            UpstreamFailure::Timeout => RunErrorCode::Timeout,
            UpstreamFailure::InvalidResponse => RunErrorCode::InvalidResponse,
        }
    }
}

// Where the circuit breaker of the upstream stands (`llm_config.circuit_state` names it); a
// plain comment, as utoipa would put a doc comment in the OpenAPI document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    /// Calls go through; failures are counted.
    Closed,
    /// Calls are refused until the reset time.
    Open,
    /// One probe call may go through.
    HalfOpen,
}

impl CircuitState {
    pub const ALL: [CircuitState; 3] = [CircuitState::Closed, CircuitState::Open, CircuitState::HalfOpen];

    pub const fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
        }
    }

    /// `None` for a name this version does not know (a corrupt row).
    pub fn parse(s: &str) -> Option<CircuitState> {
        CircuitState::ALL.into_iter().find(|state| state.as_str() == s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn circuit_states_round_trip() {
        for state in CircuitState::ALL {
            assert_eq!(CircuitState::parse(state.as_str()), Some(state));
            assert_eq!(serde_json::to_value(state).unwrap(), state.as_str());
        }
        assert_eq!(CircuitState::parse("sideways"), None);
        assert_eq!(CircuitState::parse("half-open"), None);
    }

    #[test]
    fn every_failure_keeps_its_name_as_reason_and_as_run_code() {
        let upstream = [
            UpstreamFailure::RateLimited,
            UpstreamFailure::ApiError(503),
            UpstreamFailure::NetworkError,
            UpstreamFailure::Timeout,
            UpstreamFailure::InvalidResponse,
        ];
        for failure in upstream {
            assert_eq!(FallbackReason::from(failure).to_string(), failure.to_string());
            assert_eq!(RunErrorCode::from(failure).to_string(), failure.to_string());
            assert_eq!(CallFailure::from(failure).to_string(), failure.to_string());
        }
        let names: Vec<String> = [
            CallFailure::NoConfig,
            CallFailure::CircuitOpen,
            CallFailure::InvalidJson,
            CallFailure::Upstream(UpstreamFailure::ApiError(401)),
        ]
        .into_iter()
        .map(|f| {
            assert_eq!(FallbackReason::from(f).to_string(), f.to_string());
            f.to_string()
        })
        .collect();
        assert_eq!(names, ["no_config", "circuit_open", "invalid_json", "api_error_401"]);
    }
}
