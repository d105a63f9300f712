//! The error answer of both edges (REST handlers and the WebSocket upgrade). Error policy:
//! library code returns `thiserror` enums (`StoreError`, `UpstreamError`, ...); the edges turn
//! them into [`ApiError`], which answers `{"error": code, "message": ..}`
//! with a fitting status. Causes are logged; clients see a safe message, never a secret.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::limits::{Level, Refusal};
use crate::store::{Failure, StoreError, QUEUE_FULL, SERVER_ONLY};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Unavailable(String),
    /// The project's budget has no room (402).
    #[error("{0}")]
    BudgetExceeded(String),
    /// A usage limit refused the request (402, naming its level).
    #[error("{}", .0.message)]
    OverLimit(Refusal),
    /// The player's start rate refused the request (429, naming its level).
    #[error("{}", .0.message)]
    RateLimited(Refusal),
    /// Too much work queued (429).
    #[error("{0}")]
    Overloaded(String),
    /// The caller's own cap (429), e.g. its REST runs left unwatched.
    #[error("{0}")]
    TooMany(String),
    #[error("{0}")]
    Conflict(String),
    /// The request's body did not arrive in time (408; the connection is closed).
    #[error("{0}")]
    Timeout(String),
    #[error("internal error")]
    Internal,
}

/// Every REST error: a machine-readable code and a message for people.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    /// `invalid_payload`, `unauthorized`, `forbidden`, `not_found`, `budget_exceeded`,
    /// `overloaded`, `rate_limited`, `conflict`, `timeout`, `unavailable` or `internal`.
    #[schema(example = "not_found")]
    pub error: &'static str,
    #[schema(example = "no run `run_x`")]
    pub message: String,
    /// The usage level whose limit refused the request (`budget_exceeded`, `rate_limited`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub level: Option<Level>,
}

impl ApiError {
    /// A request a validator refused: its message is the refusal's.
    pub fn invalid(refusal: impl std::fmt::Display) -> ApiError {
        ApiError::Invalid(refusal.to_string())
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Invalid(_) => "invalid_payload",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::BudgetExceeded(_) | ApiError::OverLimit(_) => "budget_exceeded",
            ApiError::Overloaded(_) => "overloaded",
            ApiError::RateLimited(_) | ApiError::TooMany(_) => "rate_limited",
            ApiError::Conflict(_) => "conflict",
            ApiError::Timeout(_) => "timeout",
            ApiError::Internal => "internal",
        }
    }
}

/// The one mapping of a storage failure to REST: overload 429, a refusing or unreachable
/// database 503, our own fault 500. The cause is logged here, once; the client gets a safe message.
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::OverLimit(refusal) => return ApiError::OverLimit(refusal),
            StoreError::RateLimited(refusal) => return ApiError::RateLimited(refusal),
            _ => {}
        }
        if let StoreError::QueueFull(limit) = e {
            tracing::debug!(limit, "request refused: the job queue is full");
            return ApiError::Overloaded(QUEUE_FULL.into());
        }
        if let StoreError::ServerOnly = e {
            return ApiError::Forbidden(SERVER_ONLY.into());
        }
        match e.failure() {
            Failure::Overloaded => {
                tracing::warn!(error = %e, "database overloaded");
                ApiError::Overloaded("the database is busy, try again".into())
            }
            Failure::Unavailable => {
                tracing::error!(error = %e, "database unavailable");
                ApiError::Unavailable("the database cannot take the request right now; nothing was stored".into())
            }
            Failure::Internal => {
                tracing::error!(error = %e, "database error");
                ApiError::Internal
            }
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Invalid(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::BudgetExceeded(_) | ApiError::OverLimit(_) => StatusCode::PAYMENT_REQUIRED,
            ApiError::Overloaded(_) | ApiError::RateLimited(_) | ApiError::TooMany(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let message = match self {
            ApiError::Internal => "something went wrong on our side".to_owned(),
            other => other.to_string(),
        };
        let mut response = HttpResponse::build(self.status_code());
        if let ApiError::Timeout(_) = self {
            // The rest of the body may still come: the connection cannot be reused.
            response.force_close();
        }
        let level = match self {
            ApiError::OverLimit(refusal) | ApiError::RateLimited(refusal) => Some(refusal.level),
            _ => None,
        };
        response.json(ErrorBody { error: self.code(), message, level })
    }
}

/// A JSON object body as `T`, the error naming the field at fault (`limit_usd: invalid type: ...`).
pub fn typed_body<T: serde::de::DeserializeOwned>(body: serde_json::Value) -> Result<T, ApiError> {
    // serde would also read a struct from an array of its fields in order.
    if !body.is_object() {
        return Err(ApiError::Invalid("the body must be a JSON object".into()));
    }
    serde_path_to_error::deserialize(body).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        ApiError::Invalid(if path == "." { inner.to_string() } else { format!("`{path}`: {inner}") })
    })
}
