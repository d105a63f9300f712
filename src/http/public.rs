//! Public and player routes: health, readiness (the database takes a write), metrics, and the
//! content REST API (the game server's own content requests, with the admin token, included). Thin: never holds a business rule (the content service does).

use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::auth::{Admin, Player};
use super::edge::{bearer, not_shutting_down, same_token};
use super::responses::{AdminErrors, Fault, PlayerErrors, ReadErrors};
use crate::api_error::{ApiError, ErrorBody};
use crate::content::{self, Content, ContentKind, ContentScope, Requester};
use crate::state::AppState;
use crate::store::ProbeFailed;

/// What `/health` and `/ready` answer when all is well.
#[derive(Debug, Serialize, ToSchema)]
pub struct ServiceStatus {
    /// `ok` (health) or `ready` (readiness).
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// The process serves.
#[utoipa::path(get, path = "/health", tag = "public",
    responses((status = 200, description = "The process serves", body = ServiceStatus)))]
pub async fn health() -> HttpResponse {
    HttpResponse::Ok().json(ServiceStatus { status: "ok" })
}

/// The database answers and takes a write, and the server is not shutting down.
#[utoipa::path(get, path = "/ready", tag = "public",
    responses(
        (status = 200, description = "Ready to serve", body = ServiceStatus),
        (status = 503, description = "The database refuses writes or does not answer, or the server is shutting down", body = ErrorBody),
    ))]
pub async fn ready(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if state.is_shutting_down() {
        return Err(ApiError::Unavailable("the server is shutting down".into()));
    }
    // Ready means the database takes writes, not only that it answers: a full disk or a
    // read-only database refuses every request that stores something.
    match state.store.probe(Duration::from_secs(2)).await {
        Ok(()) => {}
        Err(ProbeFailed::NotAnswering) => return Err(ApiError::Unavailable("the database is not answering".into())),
        Err(ProbeFailed::RefusesWrites(e)) => {
            tracing::error!(error = %e, "not ready: the database refuses writes");
            return Err(ApiError::Unavailable("the database refuses writes".into()));
        }
        Err(ProbeFailed::NoSpace(e)) => {
            tracing::error!(error = %e, "not ready: the database's disk is full");
            return Err(ApiError::Unavailable("the database refuses writes: its disk is full".into()));
        }
    }
    Ok(HttpResponse::Ok().json(ServiceStatus { status: "ready" }))
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "public",
    responses(
        (status = 200, description = "Prometheus text exposition format", body = String,
            content_type = "text/plain; version=0.0.4; charset=utf-8"),
        (status = 401, description = "`LOREWIRE_METRICS_TOKEN` is set and the request does not bear it", body = ErrorBody),
    ))]
pub async fn metrics(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    // Spend per model and players online are not for everyone who can reach the port.
    if let Some(expected) = &state.config.metrics_token {
        if !bearer(&req).is_some_and(|given| same_token(given, expected.expose())) {
            return Err(ApiError::Unauthorized("send Authorization: Bearer <LOREWIRE_METRICS_TOKEN>".into()));
        }
    }
    // Queue depth lives in the database; a scrape still answers when it cannot be read.
    match crate::insights::queue_depth(&state.store).await {
        Ok(depth) => state.metrics.queue_depth.set(depth),
        Err(e) => tracing::warn!(error = %e, "could not read the queue depth for /metrics"),
    }
    state.metrics.backplane_up.set(i64::from(state.backplane.is_up()));
    Ok(HttpResponse::Ok().content_type("text/plain; version=0.0.4; charset=utf-8").body(state.metrics.render()))
}

/// A `content:request` without `type`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ContentBody {
    kind: ContentKind,
    /// The game's own id of the quest template, event or NPC.
    #[schema(maximum = 9_223_372_036_854_775_807_u64)]
    subject_id: u64,
    /// At most 20 string values of up to 1000 characters, keys up to 64 characters; each value
    /// is sanitized and capped at 200 characters before it reaches a prompt.
    #[serde(default)]
    #[schema(value_type = Option<HashMap<String, String>>)]
    context: Option<Value>,
    /// Write the item again even if it exists.
    #[serde(default)]
    regenerate: bool,
    /// `player`: the requesting player's own item (its context and regeneration the player's,
    /// seen by that player only); `shared` (the default): everyone's.
    #[serde(default)]
    #[schema(required = false)]
    scope: ContentScope,
}

/// Which item of a subject: the shared one, or the player's own.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ScopeQuery {
    /// `player`: the requesting player's own item; `shared` (the default): everyone's.
    #[serde(default)]
    #[param(required = false)]
    scope: ContentScope,
}

/// Request a content item: answered at once with the item as it is (pending while it is written).
#[utoipa::path(post, path = "/api/content", tag = "content", request_body = ContentBody,
    security(("player_token" = [])),
    responses(
        (status = 202, description = "The item as it is now; it leaves `pending` on its own", body = Content),
        (status = 400, description = "The body is not a valid content request", body = ErrorBody),
        (status = 402, description = "The player's daily usage limit has no room for a new item (`level`: `player`); nothing was stored", body = ErrorBody),
        (status = 403, description = "Only the game server may regenerate this shared item or change its context \
            (`LOREWIRE_SHARED_CONTENT_WRITERS=server`)", body = ErrorBody),
        (status = 429, description = "The database is busy", body = ErrorBody),
        (status = 503, description = "The database cannot take the request, or the server is shutting down", body = ErrorBody),
        PlayerErrors, Fault,
    ))]
pub async fn request_content(
    Player(user): Player,
    state: web::Data<AppState>,
    body: web::Json<ContentBody>,
) -> Result<HttpResponse, ApiError> {
    content_request(&state, body.into_inner(), Requester::player(user.id)).await
}

/// The game server's content request: like `POST /api/content`, and it may regenerate a shared
/// item or change its context whoever may write shared content.
#[utoipa::path(post, path = "/admin/api/content", tag = "admin", request_body = ContentBody,
    security(("admin_token" = [])),
    responses(
        (status = 202, description = "The item as it is now; it leaves `pending` on its own", body = Content),
        (status = 400, description = "The body is not a valid content request", body = ErrorBody),
        (status = 429, description = "The database is busy", body = ErrorBody),
        (status = 503, description = "The database cannot take the request, or the server is shutting down", body = ErrorBody),
        AdminErrors, Fault,
    ))]
pub async fn server_request_content(
    _: Admin,
    state: web::Data<AppState>,
    body: web::Json<ContentBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    if body.scope == ContentScope::Player {
        return Err(ApiError::Invalid("the game server has no items of its own: scope must be shared".into()));
    }
    content_request(&state, body, Requester { user_id: None, server: true }).await
}

async fn content_request(state: &AppState, body: ContentBody, by: Requester) -> Result<HttpResponse, ApiError> {
    not_shutting_down(state)?;
    let mut request = content::validate(body.kind, body.subject_id, body.context.as_ref(), body.regenerate)
        .map_err(ApiError::invalid)?;
    request.scope = body.scope;
    let content = state.content.request(request, by).await?;
    Ok(HttpResponse::Accepted().json(content))
}

/// A content item.
#[utoipa::path(get, path = "/api/content/{kind}/{subject_id}", tag = "content",
    params(
        ("kind" = ContentKind, Path, description = "quest, event or npc"),
        ("subject_id" = u64, Path, description = "The game's own id of the item", maximum = 9_223_372_036_854_775_807_u64),
        ScopeQuery,
    ),
    security(("player_token" = [])),
    responses(
        (status = 200, description = "The item", body = Content),
        (status = 400, description = "Unknown kind or a subject_id that is not an unsigned integer", body = ErrorBody),
        (status = 404, description = "No such item", body = ErrorBody),
        PlayerErrors, ReadErrors,
    ))]
pub async fn get_content(
    Player(user): Player,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    query: web::Query<ScopeQuery>,
) -> Result<HttpResponse, ApiError> {
    let (kind, subject_id) = path.into_inner();
    let kind = ContentKind::parse(&kind)
        .ok_or_else(|| ApiError::Invalid(format!("unknown kind `{kind}` (expected quest, event or npc)")))?;
    let subject_id: u64 = subject_id
        .parse()
        .map_err(|_| ApiError::Invalid(format!("subject_id `{subject_id}` is not an unsigned integer")))?;
    match state.content.get(kind, subject_id, query.scope, Requester::player(user.id)).await? {
        Some(content) => Ok(HttpResponse::Ok().json(content)),
        None => Err(ApiError::NotFound(format!("no {} with subject_id {subject_id}", kind.as_str()))),
    }
}
