//! `/admin/api/upstreams` (PROTOCOL §7): the upstreams as the admin lists, adds, changes,
//! removes them and resets one's circuit. Keys are write-only (set or not, and the last 4
//! characters). Every route is the admin's (`auth::Admin`); validation is here, the rows are
//! `llm::settings`'.

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::admin::{last4, present, provider_schema, valid_api_key, valid_base_url, valid_model};
use super::auth::Admin;
use super::responses::{AdminErrors, ReadErrors, WriteErrors};
use crate::api_error::{typed_body, ApiError, ErrorBody};
use crate::domain::upstream::CircuitState;
use crate::llm::circuit::{CircuitSnapshot, GetSnapshot, Reset};
use crate::llm::providers::Provider;
use crate::llm::settings;
use crate::state::AppState;
use crate::store::upstreams::{NewUpstream, UpstreamChange, UpstreamRow};

const MAX_WEIGHT: i32 = 1000;
const MAX_PRIORITY: i32 = 1000;

/// An upstream's circuit breaker.
#[derive(Debug, Serialize, ToSchema)]
pub struct UpstreamCircuit {
    state: CircuitState,
    /// Failures counted in the current window.
    failures: u32,
    opened_at: Option<DateTime<Utc>>,
    resets_at: Option<DateTime<Utc>>,
}

/// One upstream as admins see it: the key only as whether it is set and its last 4 characters.
#[derive(Debug, Serialize, ToSchema)]
pub struct Upstream {
    id: i64,
    #[schema(schema_with = provider_schema)]
    provider: String,
    base_url: String,
    model: String,
    /// Its share of the calls within its priority.
    weight: i32,
    /// Lower first: a higher priority takes calls only when no lower one is usable.
    priority: i32,
    enabled: bool,
    api_key_set: bool,
    /// The key's last 4 characters; null when it is unset or shorter than 8.
    api_key_last4: Option<String>,
    /// Its last failure (a 401 or 403 parks it until its key or URL changes or its circuit
    /// is reset); parts of the API key in it are `[redacted]`.
    last_error: Option<String>,
    circuit: UpstreamCircuit,
    /// Until when its 429 `retry-after` holds calls back.
    retry_after_until: Option<DateTime<Utc>>,
    /// Calls this process made to it since it started.
    calls: u64,
    /// Of those, the calls that gave no usable answer.
    failures: u64,
    /// The mean time its structured calls (content, moods) took on this process, in
    /// milliseconds; null before the first.
    latency_ms: Option<f64>,
}

/// Every upstream, by `priority`, then `id`.
#[derive(Debug, Serialize, ToSchema)]
pub struct UpstreamList {
    upstreams: Vec<Upstream>,
}

/// `POST /admin/api/upstreams`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct NewUpstreamBody {
    #[schema(schema_with = provider_schema)]
    provider: String,
    /// An http(s) URL of at most 500 characters: the API root as the provider's SDKs take it.
    base_url: String,
    /// 1..200 characters without control characters.
    model: String,
    /// The key (write-only); null or empty for a server of one's own that needs none.
    #[serde(default)]
    api_key: Option<String>,
    /// 1..1000, default 1.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1000)]
    weight: Option<i32>,
    /// 0..1000, default 0.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1000)]
    priority: Option<i32>,
    /// Default true.
    #[serde(default)]
    enabled: Option<bool>,
}

/// `PUT /admin/api/upstreams/{id}`: any of the POST fields; a field left out keeps its value.
#[derive(Debug, Deserialize, ToSchema)]
pub struct UpstreamBody {
    #[serde(default)]
    #[schema(schema_with = provider_schema, required = false)]
    provider: Option<String>,
    #[serde(default)]
    base_url: Option<String>,
    #[serde(default)]
    model: Option<String>,
    /// The new key (write-only); null or empty removes it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    api_key: Option<Option<String>>,
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1000)]
    weight: Option<i32>,
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1000)]
    priority: Option<i32>,
    #[serde(default)]
    enabled: Option<bool>,
}

fn provider(name: &str) -> Result<String, ApiError> {
    Ok(name.parse::<Provider>().map_err(ApiError::invalid)?.as_str().to_owned())
}

fn weight(weight: i32) -> Result<i32, ApiError> {
    (1..=MAX_WEIGHT)
        .contains(&weight)
        .then_some(weight)
        .ok_or_else(|| ApiError::Invalid(format!("`weight` must be 1..{MAX_WEIGHT}")))
}

fn priority(priority: i32) -> Result<i32, ApiError> {
    (0..=MAX_PRIORITY)
        .contains(&priority)
        .then_some(priority)
        .ok_or_else(|| ApiError::Invalid(format!("`priority` must be 0..{MAX_PRIORITY}")))
}

fn upstream_id(path: &str) -> Result<i64, ApiError> {
    path.parse::<i64>()
        .ok()
        .filter(|id| *id >= 1)
        .ok_or_else(|| ApiError::Invalid(format!("`{path}` is not an upstream id (a whole number from 1)")))
}

fn no_upstream(id: i64) -> ApiError {
    ApiError::NotFound(format!("no upstream {id}"))
}

/// `row` as admins see it, with its circuit as its breaker holds it.
async fn view(state: &AppState, row: &UpstreamRow) -> Result<Upstream, ApiError> {
    let snapshot: CircuitSnapshot =
        state.upstreams.circuit(row).send(GetSnapshot).await.map_err(|_| ApiError::Internal)?;
    let counters = state.upstreams.counters(row.id);
    let key = row.api_key.as_deref().filter(|k| !k.is_empty());
    Ok(Upstream {
        id: row.id,
        provider: row.provider.clone(),
        base_url: row.base_url.clone(),
        model: row.model.clone(),
        weight: row.weight,
        priority: row.priority,
        enabled: row.enabled,
        api_key_set: key.is_some(),
        api_key_last4: key.and_then(last4),
        last_error: row.last_error.clone(),
        circuit: UpstreamCircuit {
            state: snapshot.state,
            failures: snapshot.failures,
            opened_at: snapshot.opened_at,
            resets_at: snapshot.resets_at,
        },
        retry_after_until: snapshot.retry_after_until,
        calls: counters.calls,
        failures: counters.failures,
        latency_ms: counters.latency_ms(),
    })
}

async fn stored(state: &AppState, id: i64) -> Result<UpstreamRow, ApiError> {
    settings::upstream(&state.store, id).await?.ok_or_else(|| no_upstream(id))
}

/// Every upstream, by `priority`, then `id`.
#[utoipa::path(get, path = "/admin/api/upstreams", tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Every upstream", body = UpstreamList),
        AdminErrors, ReadErrors,
    ))]
pub async fn list(_: Admin, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let rows = settings::upstreams(&state.store).await?;
    let mut upstreams = Vec::with_capacity(rows.len());
    for row in &rows {
        upstreams.push(view(&state, row).await?);
    }
    Ok(HttpResponse::Ok().json(UpstreamList { upstreams }))
}

/// Add an upstream; its circuit starts closed.
#[utoipa::path(post, path = "/admin/api/upstreams", tag = "admin", request_body = NewUpstreamBody,
    security(("admin_token" = [])),
    responses(
        (status = 201, description = "The upstream as stored", body = Upstream),
        (status = 400, description = "A field is missing or not valid; nothing was stored", body = ErrorBody),
        AdminErrors, WriteErrors,
    ))]
pub async fn add(_: Admin, state: web::Data<AppState>, body: web::Json<Value>) -> Result<HttpResponse, ApiError> {
    let body: NewUpstreamBody = typed_body(body.into_inner())?;
    let new = NewUpstream {
        provider: provider(&body.provider)?,
        base_url: valid_base_url(&body.base_url)?,
        model: valid_model(&body.model)?,
        api_key: valid_api_key(body.api_key.as_deref())?,
        weight: weight(body.weight.unwrap_or(1))?,
        priority: priority(body.priority.unwrap_or(0))?,
        enabled: body.enabled.unwrap_or(true),
    };
    let row = settings::add_upstream(&state.store, new, state.clock.now_naive()).await?;
    tracing::info!(upstream = row.id, provider = %row.provider, model = %row.model, base_url = %row.base_url,
        "upstream added by admin");
    Ok(HttpResponse::Created().json(view(&state, &row).await?))
}

/// One upstream.
#[utoipa::path(get, path = "/admin/api/upstreams/{id}", tag = "admin",
    params(("id" = i64, Path, description = "The upstream's id", minimum = 1)),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The upstream", body = Upstream),
        (status = 400, description = "Not an upstream id", body = ErrorBody),
        (status = 404, description = "No such upstream", body = ErrorBody),
        AdminErrors, ReadErrors,
    ))]
pub async fn get(_: Admin, state: web::Data<AppState>, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let row = stored(&state, upstream_id(&path)?).await?;
    Ok(HttpResponse::Ok().json(view(&state, &row).await?))
}

/// Change any of an upstream's fields; a new key, URL or provider unparks it.
#[utoipa::path(put, path = "/admin/api/upstreams/{id}", tag = "admin", request_body = UpstreamBody,
    params(("id" = i64, Path, description = "The upstream's id", minimum = 1)),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The upstream as stored now", body = Upstream),
        (status = 400, description = "Not an upstream id, or a field is not valid; nothing was changed", body = ErrorBody),
        (status = 404, description = "No such upstream", body = ErrorBody),
        AdminErrors, WriteErrors,
    ))]
pub async fn put(
    _: Admin,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let id = upstream_id(&path)?;
    let body: UpstreamBody = typed_body(body.into_inner())?;
    let change = UpstreamChange {
        provider: body.provider.as_deref().map(provider).transpose()?,
        model: body.model.as_deref().map(valid_model).transpose()?,
        base_url: body.base_url.as_deref().map(valid_base_url).transpose()?,
        api_key: body.api_key.as_ref().map(|key| valid_api_key(key.as_deref())).transpose()?,
        weight: body.weight.map(weight).transpose()?,
        priority: body.priority.map(priority).transpose()?,
        enabled: body.enabled,
    };
    let row = settings::change_upstream(&state.store, id, change, state.clock.now_naive())
        .await?
        .ok_or_else(|| no_upstream(id))?;
    tracing::info!(upstream = id, provider = %row.provider, model = %row.model, base_url = %row.base_url,
        enabled = row.enabled, "upstream changed by admin");
    Ok(HttpResponse::Ok().json(view(&state, &row).await?))
}

/// Remove an upstream (not the first, which `/admin/api/llm` shows: disable it instead).
#[utoipa::path(delete, path = "/admin/api/upstreams/{id}", tag = "admin",
    params(("id" = i64, Path, description = "The upstream's id", minimum = 1)),
    security(("admin_token" = [])),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "Not an upstream id, or the first upstream", body = ErrorBody),
        (status = 404, description = "No such upstream", body = ErrorBody),
        AdminErrors, WriteErrors,
    ))]
pub async fn delete(_: Admin, state: web::Data<AppState>, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = upstream_id(&path)?;
    if id == crate::store::llm_config::ID {
        return Err(ApiError::Invalid(
            "the first upstream (the one /admin/api/llm shows) cannot be removed: disable it instead".into(),
        ));
    }
    if !settings::remove_upstream(&state.store, &state.upstreams, id).await? {
        return Err(no_upstream(id));
    }
    tracing::info!(upstream = id, "upstream removed by admin");
    Ok(HttpResponse::NoContent().finish())
}

/// Close an upstream's circuit now (and unpark it).
#[utoipa::path(post, path = "/admin/api/upstreams/{id}/circuit/reset", tag = "admin",
    params(("id" = i64, Path, description = "The upstream's id", minimum = 1)),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The upstream, its circuit closed", body = Upstream),
        (status = 400, description = "Not an upstream id", body = ErrorBody),
        (status = 404, description = "No such upstream", body = ErrorBody),
        AdminErrors, WriteErrors,
    ))]
pub async fn reset(_: Admin, state: web::Data<AppState>, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = upstream_id(&path)?;
    let row = stored(&state, id).await?;
    state.upstreams.circuit(&row).send(Reset).await.map_err(|_| ApiError::Internal)?;
    settings::unpark(&state.store, id, state.clock.now_naive()).await?;
    let row = stored(&state, id).await?;
    Ok(HttpResponse::Ok().json(view(&state, &row).await?))
}
