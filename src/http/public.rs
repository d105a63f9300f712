//! Public and player routes: health, readiness (the database takes a write), metrics, and the
//! content REST API. Thin: never holds a business rule (the content service does).

use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use super::bearer;
use super::error::ApiError;
use crate::content::{self, ContentKind};
use crate::players;
use crate::state::AppState;
use crate::store::users::UserRow;
use crate::store::ProbeFailed;

pub async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

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
    }
    Ok(HttpResponse::Ok().json(json!({"status": "ready"})))
}

pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    // Queue depth lives in the database; a scrape still answers when it cannot be read.
    match state.store.run(crate::store::jobs::depth).await {
        Ok(depth) => state.metrics.queue_depth.set(depth),
        Err(e) => tracing::warn!(error = %e, "could not read the queue depth for /metrics"),
    }
    HttpResponse::Ok().content_type("text/plain; version=0.0.4; charset=utf-8").body(state.metrics.render())
}

/// The player a request's bearer token belongs to.
pub async fn player(req: &HttpRequest, state: &AppState) -> Result<UserRow, ApiError> {
    let token =
        bearer(req).ok_or_else(|| ApiError::Unauthorized("send Authorization: Bearer <player token>".into()))?;
    players::authenticate(&state.store, &state.clock, token)
        .await?
        .ok_or_else(|| ApiError::Unauthorized("unknown player token; start a session to get one".into()))
}

#[derive(Debug, Deserialize)]
pub struct ContentBody {
    kind: ContentKind,
    subject_id: u64,
    #[serde(default)]
    context: Option<Value>,
    #[serde(default)]
    regenerate: bool,
}

pub async fn request_content(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<ContentBody>,
) -> Result<HttpResponse, ApiError> {
    player(&req, &state).await?;
    if state.is_shutting_down() {
        return Err(ApiError::Unavailable("the server is shutting down".into()));
    }
    let body = body.into_inner();
    let request = content::validate(body.kind, body.subject_id, body.context.as_ref(), body.regenerate)
        .map_err(ApiError::Invalid)?;
    let content = state.content.request(request).await?;
    Ok(HttpResponse::Accepted().json(content))
}

pub async fn get_content(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    player(&req, &state).await?;
    let (kind, subject_id) = path.into_inner();
    let kind = ContentKind::parse(&kind)
        .ok_or_else(|| ApiError::Invalid(format!("unknown kind `{kind}` (expected quest, event or npc)")))?;
    let subject_id: u64 = subject_id
        .parse()
        .map_err(|_| ApiError::Invalid(format!("subject_id `{subject_id}` is not an unsigned integer")))?;
    match state.content.get(kind, subject_id).await? {
        Some(content) => Ok(HttpResponse::Ok().json(content)),
        None => Err(ApiError::NotFound(format!("no {} with subject_id {subject_id}", kind.as_str()))),
    }
}
