//! One upstream HTTP call over awc, classified into the outcomes the circuit breaker and the
//! fallbacks speak of. Never puts the API key into an error.

use std::time::Duration;

use awc::http::StatusCode;
use bytes::Bytes;

use super::circuit::Outcome;
use super::providers::UpstreamRequest;
use crate::domain::upstream::UpstreamFailure;

/// Largest response body accepted from a provider.
const MAX_BODY: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream answered {status}: {message}")]
    Status { status: u16, retry_after: Option<Duration>, message: String },
    #[error("network error: {0}")]
    Network(String),
    #[error("upstream timed out")]
    Timeout,
    #[error("invalid response: {0}")]
    InvalidResponse(String),
}

pub fn build_client(timeout: Duration) -> awc::Client {
    use actix_service::ServiceExt;
    // Requests go out as several small writes (headers, body); without TCP_NODELAY each call
    // would wait out the peer's delayed ACK (~40 ms).
    let tcp = actix_tls::connect::Connector::new(actix_tls::connect::Resolver::default()).service().map(
        |conn: actix_tls::connect::Connection<awc::http::Uri, actix_web::rt::net::TcpStream>| {
            let _ = conn.io_ref().set_nodelay(true);
            conn
        },
    );
    awc::Client::builder()
        .timeout(timeout)
        .disable_redirects()
        .connector(awc::Connector::new().connector(tcp).timeout(timeout.min(Duration::from_secs(10))))
        .finish()
}

/// Sends the request and returns the body of a 2xx answer.
pub async fn send(client: &awc::Client, req: &UpstreamRequest, timeout: Duration) -> Result<Bytes, UpstreamError> {
    match tokio::time::timeout(timeout, send_inner(client, req)).await {
        Ok(result) => result,
        Err(_) => Err(UpstreamError::Timeout),
    }
}

async fn send_inner(client: &awc::Client, req: &UpstreamRequest) -> Result<Bytes, UpstreamError> {
    let mut builder = client.post(&req.url).insert_header(("content-type", "application/json"));
    for (name, value) in &req.headers {
        builder = builder.insert_header((*name, value.as_str()));
    }
    let mut response = builder.send_json(&req.body).await.map_err(|e| match e {
        awc::error::SendRequestError::Timeout => UpstreamError::Timeout,
        other => UpstreamError::Network(other.to_string()),
    })?;
    let status = response.status();
    let retry_after = response.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(parse_retry_after);
    let body = response.body().limit(MAX_BODY).await.map_err(|e| match e {
        awc::error::PayloadError::Overflow => UpstreamError::InvalidResponse("response body too large".into()),
        other => UpstreamError::Network(other.to_string()),
    })?;
    if status.is_success() {
        return Ok(body);
    }
    let message = super::providers::error_message(&body)
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned());
    Err(UpstreamError::Status { status: status.as_u16(), retry_after, message })
}

/// `retry-after` as seconds (integer or decimal) or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(86_400.0)));
    }
    let date = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = date.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

impl UpstreamError {
    /// Whether this failure counts towards opening the circuit: 5xx (529 included), network
    /// errors and timeouts do; 4xx (429 included) never do, nor does an unusable 2xx answer
    /// (the provider is up; the answer is that call's failure alone).
    pub fn counts_for_circuit(&self) -> bool {
        match self {
            UpstreamError::Status { status, .. } => *status >= 500,
            UpstreamError::Network(_) | UpstreamError::Timeout => true,
            UpstreamError::InvalidResponse(_) => false,
        }
    }

    pub fn is_rate_limit(&self) -> bool {
        matches!(self, UpstreamError::Status { status, .. } if *status == StatusCode::TOO_MANY_REQUESTS.as_u16())
    }

    /// The failure's name, as content fallbacks and run errors give it.
    pub fn failure(&self) -> UpstreamFailure {
        match self {
            _ if self.is_rate_limit() => UpstreamFailure::RateLimited,
            UpstreamError::Status { status, .. } => UpstreamFailure::ApiError(*status),
            UpstreamError::Network(_) => UpstreamFailure::NetworkError,
            UpstreamError::Timeout => UpstreamFailure::Timeout,
            UpstreamError::InvalidResponse(_) => UpstreamFailure::InvalidResponse,
        }
    }

    /// What this failure tells the circuit breaker.
    pub fn circuit_outcome(&self) -> Outcome {
        match self {
            UpstreamError::Status { retry_after, .. } if self.is_rate_limit() => Outcome::RateLimited(*retry_after),
            _ if self.counts_for_circuit() => Outcome::Failure,
            UpstreamError::InvalidResponse(_) => Outcome::Success,
            _ => Outcome::Rejected,
        }
    }

    /// The error text with `secret` cut out, for logs and `last_error`.
    pub fn redacted(&self, secret: &str) -> String {
        super::redact::redact(&self.to_string(), secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds_and_dates() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("1.5"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn only_server_side_failures_count() {
        let status = |s| UpstreamError::Status { status: s, retry_after: None, message: String::new() };
        assert!(status(500).counts_for_circuit());
        assert!(status(529).counts_for_circuit());
        assert!(!status(429).counts_for_circuit());
        assert!(!status(401).counts_for_circuit());
        assert!(UpstreamError::Timeout.counts_for_circuit());
        let unusable = UpstreamError::InvalidResponse("response body too large".into());
        assert!(!unusable.counts_for_circuit());
        assert_eq!(unusable.circuit_outcome(), Outcome::Success, "a 2xx answer: the provider is up");
    }
}
