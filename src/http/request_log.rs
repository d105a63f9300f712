//! One log line per HTTP request and WebSocket upgrade (`tracing-actix-web`): the request's
//! span carries its method, path and request id, and the line at its end adds the status and
//! duration. Never logs the query string, headers or body (they may carry a token);
//! `/health`, `/ready` and `/metrics` polls go to debug only.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{Error, HttpMessage};
use tracing::Span;
use tracing_actix_web::{RequestId, RootSpanBuilder, TracingLogger};

/// Paths polled by load balancers and scrapers: their lines would drown everything else.
const POLLS: &[&str] = &["/health", "/ready", "/metrics"];

/// When the request arrived (kept in its extensions for the duration).
#[derive(Clone, Copy)]
struct Arrived(Instant);

/// The request span and request line of lorewire.
pub struct RequestLine;

impl RootSpanBuilder for RequestLine {
    fn on_request_start(request: &ServiceRequest) -> Span {
        request.extensions_mut().insert(Arrived(Instant::now()));
        let request_id = request.extensions().get::<RequestId>().map(|id| id.to_string()).unwrap_or_default();
        // The path only: a query string may carry a token.
        tracing::info_span!("request", method = %request.method(), path = %request.path(), %request_id)
    }

    fn on_request_end<B: MessageBody>(_span: Span, outcome: &Result<ServiceResponse<B>, Error>) {
        let (status, poll, duration_ms) = match outcome {
            Ok(response) => {
                let arrived = response.request().extensions().get::<Arrived>().copied();
                let ms = arrived.map(|a| a.0.elapsed().as_secs_f64() * 1000.0);
                (response.status().as_u16(), POLLS.contains(&response.request().path()), ms)
            }
            Err(e) => (e.as_response_error().status_code().as_u16(), false, None),
        };
        // Rounded to microseconds: a shipper wants a number, not 17 digits.
        let duration_ms = duration_ms.map(|ms| (ms * 1000.0).round() / 1000.0);
        if poll {
            tracing::debug!(status, duration_ms, "request");
        } else {
            tracing::info!(status, duration_ms, "request");
        }
    }
}

/// The request-logging middleware.
pub fn logger() -> TracingLogger<RequestLine> {
    TracingLogger::new()
}

/// Sends the request id back as `x-request-id`, so a client can quote it.
pub fn echo_request_id<S, B>(
    req: ServiceRequest,
    srv: &S,
) -> impl std::future::Future<Output = Result<ServiceResponse<B>, Error>> + 'static
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
    S::Future: 'static,
{
    let id = req.extensions().get::<RequestId>().and_then(|id| HeaderValue::from_str(&id.to_string()).ok());
    let response = srv.call(req);
    async move {
        let mut response = response.await?;
        if let Some(id) = id {
            response.headers_mut().insert(HeaderName::from_static("x-request-id"), id);
        }
        Ok(response)
    }
}
