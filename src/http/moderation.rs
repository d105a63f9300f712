//! `GET /admin/api/moderation` (PROTOCOL §6): the moderation flags, newest first, from the
//! moderation service's record.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::Admin;
use super::responses::{AdminErrors, ReadErrors};
use crate::api_error::{ApiError, ErrorBody};
use crate::domain::moderation::Flag;
use crate::state::AppState;

const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 1000;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FlagsQuery {
    /// At most this many (1..1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// The newest flags first.
#[derive(Debug, Serialize, ToSchema)]
pub struct FlagsPage {
    flags: Vec<Flag>,
}

/// Every text moderation flagged (chat, content, run text, nicknames), newest first.
#[utoipa::path(get, path = "/admin/api/moderation", tag = "admin", operation_id = "admin_moderation", params(FlagsQuery),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The newest flags", body = FlagsPage),
        (status = 400, description = "`limit` out of range", body = ErrorBody),
        AdminErrors, ReadErrors,
    ))]
pub async fn flags(
    _: Admin,
    state: web::Data<AppState>,
    query: web::Query<FlagsQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::Invalid(format!("`limit` must be 1..{MAX_LIMIT}")));
    }
    let flags = state.moderation.flags(limit).await?;
    Ok(HttpResponse::Ok().json(FlagsPage { flags }))
}
