//! One streamed upstream call: the request, the status check, then the SSE body read chunk by
//! chunk with an idle timeout per chunk and a total limit (awc's own timeout covers only the
//! wait for headers). Ends on the provider's end event, a failure (keeping the usage reported
//! so far) or cancellation (the response is dropped, which closes the connection).

use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::watch;

use super::client::{parse_retry_after, UpstreamError};
use super::providers::sse::{SseParser, Step, StreamReader};
use super::providers::{Provider, UpstreamRequest};
use crate::domain::runs::Usage;

/// Largest error body read from a failed streaming request.
const MAX_ERROR_BODY: usize = 64 * 1024;

#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    /// Wait for the response headers.
    pub headers: Duration,
    /// Longest silence between two chunks of the body.
    pub idle: Duration,
    /// Longest the whole call may take.
    pub total: Duration,
}

/// How a streamed call ended.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEnd {
    Finished,
    /// Failed before the body (status, network, header timeout).
    Upstream(UpstreamError),
    /// The body ended or broke before the provider's end event.
    Cut(String),
    /// No chunk within the idle timeout, or the total limit passed.
    Timeout,
    /// The provider reported an error inside the stream; `server_side` when it is the
    /// provider's own failure (see [`Step::Failed`]).
    ProviderError {
        message: String,
        server_side: bool,
    },
    /// The stream could not be read (not SSE, not JSON).
    Invalid(String),
    Cancelled,
}

#[derive(Debug)]
pub struct StreamOutcome {
    pub end: StreamEnd,
    pub usage: Usage,
    pub input_reported: bool,
    pub output_reported: bool,
    /// The provider answered with a 2xx (it is up, whatever happened next).
    pub answered: bool,
}

/// Sends `req` and streams the answer, handing each text delta to `on_text` as it comes.
pub async fn stream(
    client: &awc::Client,
    req: &UpstreamRequest,
    provider: Provider,
    limits: StreamLimits,
    cancel: &mut watch::Receiver<bool>,
    mut on_text: impl FnMut(String),
) -> StreamOutcome {
    let mut reader = StreamReader::new(provider);
    let deadline = tokio::time::Instant::now() + limits.total;
    let outcome = |end: StreamEnd, reader: &StreamReader, answered: bool| StreamOutcome {
        end,
        usage: reader.usage,
        input_reported: reader.input_reported,
        output_reported: reader.output_reported,
        answered,
    };

    let mut builder = client.post(&req.url).insert_header(("content-type", "application/json"));
    for (name, value) in &req.headers {
        builder = builder.insert_header((*name, value.as_str()));
    }
    let send = tokio::time::timeout(limits.headers.min(limits.total), builder.send_json(&req.body));
    let sent = tokio::select! {
        sent = send => sent,
        _ = cancelled(cancel) => return outcome(StreamEnd::Cancelled, &reader, false),
    };
    let mut response = match sent {
        Err(_) | Ok(Err(awc::error::SendRequestError::Timeout)) => {
            return outcome(StreamEnd::Upstream(UpstreamError::Timeout), &reader, false)
        }
        Ok(Err(e)) => return outcome(StreamEnd::Upstream(UpstreamError::Network(e.to_string())), &reader, false),
        Ok(Ok(response)) => response,
    };
    let status = response.status();
    if !status.is_success() {
        let retry_after =
            response.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(parse_retry_after);
        let body = tokio::time::timeout(limits.idle, response.body().limit(MAX_ERROR_BODY)).await;
        let message = body
            .ok()
            .and_then(Result::ok)
            .and_then(|b| super::providers::error_message(&b))
            .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned());
        let error = UpstreamError::Status { status: status.as_u16(), retry_after, message };
        return outcome(StreamEnd::Upstream(error), &reader, false);
    }

    let mut parser = SseParser::new();
    loop {
        let idle = tokio::time::Instant::now() + limits.idle;
        let next = tokio::select! {
            next = tokio::time::timeout_at(idle.min(deadline), response.next()) => next,
            _ = cancelled(cancel) => return outcome(StreamEnd::Cancelled, &reader, true),
        };
        let chunk = match next {
            Err(_) => return outcome(StreamEnd::Timeout, &reader, true),
            Ok(None) => {
                return outcome(StreamEnd::Cut("the stream ended before the answer was complete".into()), &reader, true)
            }
            Ok(Some(Err(e))) => return outcome(StreamEnd::Cut(format!("the stream broke: {e}")), &reader, true),
            Ok(Some(Ok(chunk))) => chunk,
        };
        let events = match parser.feed(&chunk) {
            Ok(events) => events,
            Err(why) => return outcome(StreamEnd::Invalid(why.to_string()), &reader, true),
        };
        for event in events {
            let steps = match reader.read(&event) {
                Ok(steps) => steps,
                Err(why) => return outcome(StreamEnd::Invalid(why.to_string()), &reader, true),
            };
            for step in steps {
                match step {
                    Step::Text(text) => on_text(text),
                    Step::Finished => return outcome(StreamEnd::Finished, &reader, true),
                    Step::Failed { message, server_side } => {
                        return outcome(StreamEnd::ProviderError { message, server_side }, &reader, true)
                    }
                }
            }
        }
    }
}

/// Resolves once `cancel` turns true (never, if its sender is gone).
async fn cancelled(cancel: &mut watch::Receiver<bool>) {
    if cancel.wait_for(|c| *c).await.is_err() {
        std::future::pending::<()>().await;
    }
}
