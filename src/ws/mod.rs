//! The WebSocket edge: `GET /ws` (the Origin check before the upgrade), the socket once
//! upgraded (`transport`), the session actor (`session/`), its outbound back-pressure
//! (`outbox`), the per-topic order of frames
//! (`subscriptions`, shared with the run's SSE endpoint) and the mapping of storage failures
//! to error frames (`error`).
//!
//! Never holds a business rule: sessions parse, call a service and write frames.

pub mod error;
pub mod outbox;
pub mod session;
pub mod subscriptions;
pub mod transport;

use actix_web::{web, HttpRequest, HttpResponse};

use crate::api_error::ApiError;
use crate::state::AppState;

/// Largest accepted frame payload; bigger frames close the socket with 1009.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;

pub async fn upgrade(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if let Some(origin) = req.headers().get("origin") {
        let origin = origin.to_str().unwrap_or("");
        let host = req.headers().get("host").and_then(|h| h.to_str().ok());
        if !state.config.allowed_origins.allows(origin, host) {
            tracing::warn!(origin, "websocket refused: origin not allowed");
            return Err(ApiError::Forbidden("this Origin may not open a WebSocket".into()));
        }
    }
    if state.is_shutting_down() {
        return Err(ApiError::Unavailable("the server is shutting down".into()));
    }
    session::start(&req, state.into_inner())
}
