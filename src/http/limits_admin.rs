//! The admin's usage limits over HTTP (PROTOCOL §5): `GET/PUT /admin/api/limits`,
//! `GET/PUT /admin/api/players/{user_id}`, `GET/PUT /admin/api/projects/{project_id}/limits`
//! and `GET /admin/api/usage`. Handlers stay thin:
//! parse, call the usage-limits service, shape the answer.

use actix_web::{web, HttpResponse};
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use super::auth::Admin;
use super::responses::{AdminErrors, ReadErrors, WriteErrors};
use crate::api_error::{ApiError, ErrorBody};
use crate::core::rate_limit::Rate;
use crate::domain::money::{parse_usd, usd};
use crate::limits::service::{PlayerUsage, ProjectUsage};
use crate::state::AppState;
use crate::store::usage::{LimitsChange, LimitsRow, PlayerChange};

/// The studio's and the default player's daily limits (null: no limit).
#[derive(Debug, Serialize, ToSchema)]
pub struct Limits {
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    studio_daily_usd: Option<f64>,
    #[schema(minimum = 0)]
    studio_daily_tokens: Option<i64>,
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    player_daily_usd: Option<f64>,
    #[schema(minimum = 0)]
    player_daily_tokens: Option<i64>,
    /// New content items, regenerations and runs one player may start, as `COUNT/WINDOW`.
    #[schema(example = "60/1m")]
    player_llm_rate: String,
}

/// `PUT /admin/api/limits`: the keys to change (null: no limit); keys left out stay.
/// Describes the body for the document; the handler reads it key by key (left out vs null).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct LimitsBody {
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    studio_daily_usd: Option<f64>,
    #[schema(minimum = 0)]
    studio_daily_tokens: Option<i64>,
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    player_daily_usd: Option<f64>,
    #[schema(minimum = 0)]
    player_daily_tokens: Option<i64>,
    #[schema(example = "60/1m")]
    player_llm_rate: Option<String>,
}

fn limits_view(row: &LimitsRow) -> Limits {
    Limits {
        studio_daily_usd: row.studio_daily_micros.map(usd),
        studio_daily_tokens: row.studio_daily_tokens,
        player_daily_usd: row.player_daily_micros.map(usd),
        player_daily_tokens: row.player_daily_tokens,
        player_llm_rate: row.player_llm_rate.clone(),
    }
}

/// The body as a JSON object, or a 400.
fn object(body: Value) -> Result<Map<String, Value>, ApiError> {
    match body {
        Value::Object(map) => Ok(map),
        _ => Err(ApiError::Invalid("the body must be a JSON object".into())),
    }
}

/// A key the body names: `None` when left out, `Some(None)` when null.
fn usd_key(body: &Map<String, Value>, key: &'static str) -> Result<Option<Option<i64>>, ApiError> {
    match body.get(key) {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(Value::Number(n)) => {
            let n = n.as_f64().ok_or_else(|| ApiError::Invalid(format!("`{key}` must be a number or null")))?;
            Ok(Some(Some(parse_usd(n, key).map_err(ApiError::invalid)?)))
        }
        Some(_) => Err(ApiError::Invalid(format!("`{key}` must be a number or null"))),
    }
}

fn tokens_key(body: &Map<String, Value>, key: &'static str) -> Result<Option<Option<i64>>, ApiError> {
    match body.get(key) {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(t) if t >= 0 => Ok(Some(Some(t))),
            _ => Err(ApiError::Invalid(format!("`{key}` must be a whole number zero or more, or null"))),
        },
        Some(_) => Err(ApiError::Invalid(format!("`{key}` must be a whole number zero or more, or null"))),
    }
}

/// The studio's and the default player's limits.
#[utoipa::path(get, path = "/admin/api/limits", tag = "admin",
    security(("admin_token" = [])),
    responses((status = 200, description = "The limits", body = Limits), AdminErrors, ReadErrors))]
pub async fn get_limits(_: Admin, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(limits_view(&state.usage.limits().await?)))
}

/// Change the limits the body names (stored: every process and a restart keep them).
#[utoipa::path(put, path = "/admin/api/limits", tag = "admin", request_body = LimitsBody,
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The limits as stored now", body = Limits),
        (status = 400, description = "A limit or the rate is not valid", body = ErrorBody),
        AdminErrors, WriteErrors,
    ))]
pub async fn put_limits(
    _: Admin,
    state: web::Data<AppState>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let body = object(body.into_inner())?;
    let player_llm_rate = match body.get("player_llm_rate") {
        None => None,
        Some(Value::String(s)) => Some(s.parse::<Rate>().map_err(ApiError::invalid)?.to_string()),
        Some(_) => return Err(ApiError::Invalid("`player_llm_rate` must be a rate like 60/1m".into())),
    };
    let change = LimitsChange {
        studio_daily_micros: usd_key(&body, "studio_daily_usd")?,
        studio_daily_tokens: tokens_key(&body, "studio_daily_tokens")?,
        player_daily_micros: usd_key(&body, "player_daily_usd")?,
        player_daily_tokens: tokens_key(&body, "player_daily_tokens")?,
        player_llm_rate,
    };
    let row = state.usage.put_limits(change).await?;
    tracing::info!(?row, "usage limits set by admin");
    Ok(HttpResponse::Ok().json(limits_view(&row)))
}

/// A player's limits: those that apply, and the player's own overrides (null: the default).
#[derive(Debug, Serialize, ToSchema)]
pub struct PlayerLimits {
    daily_usd: Option<f64>,
    daily_tokens: Option<i64>,
    own_daily_usd: Option<f64>,
    own_daily_tokens: Option<i64>,
}

/// What a player spent and holds today (UTC).
#[derive(Debug, Serialize, ToSchema)]
pub struct Today {
    tokens: i64,
    usd: f64,
    reserved_tokens: i64,
    reserved_usd: f64,
}

/// One player as the admin sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct PlayerView {
    user_id: i64,
    /// The JWT's `sub` of a player who logs in with the studio's JWT.
    external_id: Option<String>,
    nickname: String,
    blocked: bool,
    limits: PlayerLimits,
    today: Today,
}

/// `PUT /admin/api/players/{user_id}`: the keys to change; null overrides go back to the default.
/// Describes the body for the document; the handler reads it key by key (left out vs null).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct PlayerBody {
    blocked: Option<bool>,
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    daily_usd: Option<f64>,
    #[schema(minimum = 0)]
    daily_tokens: Option<i64>,
}

fn player_view(p: PlayerUsage) -> PlayerView {
    PlayerView {
        user_id: p.user_id,
        external_id: p.external_id,
        nickname: p.nickname,
        blocked: p.blocked,
        limits: PlayerLimits {
            daily_usd: p.daily_micros.map(usd),
            daily_tokens: p.daily_tokens,
            own_daily_usd: p.own_daily_micros.map(usd),
            own_daily_tokens: p.own_daily_tokens,
        },
        today: Today {
            tokens: p.today.spent_tokens,
            usd: usd(p.today.spent_micros),
            reserved_tokens: p.today.reserved_tokens,
            reserved_usd: usd(p.today.reserved_micros),
        },
    }
}

fn no_player(user_id: i64) -> ApiError {
    ApiError::NotFound(format!("no player {user_id}"))
}

/// A player's limits, blocked flag and spend today.
#[utoipa::path(get, path = "/admin/api/players/{user_id}", tag = "admin",
    params(("user_id" = i64, Path, description = "The player's id", minimum = 1)),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The player", body = PlayerView),
        (status = 400, description = "Not a player id", body = ErrorBody),
        (status = 404, description = "No such player", body = ErrorBody),
        AdminErrors, ReadErrors,
    ))]
pub async fn get_player(
    _: Admin,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let user_id = user_id(&path)?;
    let player = state.usage.player(user_id).await?.ok_or_else(|| no_player(user_id))?;
    Ok(HttpResponse::Ok().json(player_view(player)))
}

/// Block or unblock a player, or set its own daily limits (null: back to the default).
#[utoipa::path(put, path = "/admin/api/players/{user_id}", tag = "admin", request_body = PlayerBody,
    params(("user_id" = i64, Path, description = "The player's id", minimum = 1)),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The player as stored now", body = PlayerView),
        (status = 400, description = "Not a player id, or a value is not valid", body = ErrorBody),
        (status = 404, description = "No such player", body = ErrorBody),
        AdminErrors, WriteErrors,
    ))]
pub async fn put_player(
    _: Admin,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let user_id = user_id(&path)?;
    let body = object(body.into_inner())?;
    let blocked = match body.get("blocked") {
        None => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => return Err(ApiError::Invalid("`blocked` must be true or false".into())),
    };
    let change = PlayerChange {
        blocked,
        daily_micros: usd_key(&body, "daily_usd")?,
        daily_tokens: tokens_key(&body, "daily_tokens")?,
    };
    let player = state.usage.put_player(user_id, change).await?.ok_or_else(|| no_player(user_id))?;
    tracing::info!(user = user_id, blocked = player.blocked, "player changed by admin");
    Ok(HttpResponse::Ok().json(player_view(player)))
}

/// A project's per-day limits (null: none) and its spend today (PROTOCOL §5; its budget is
/// `/admin/api/budgets/{project_id}`).
#[derive(Debug, Serialize, ToSchema)]
pub struct ProjectLimits {
    project_id: String,
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    daily_usd: Option<f64>,
    #[schema(minimum = 0)]
    daily_tokens: Option<i64>,
    today: Today,
}

/// `PUT /admin/api/projects/{project_id}/limits`: the keys to change (null: no limit).
/// Describes the body for the document; the handler reads it key by key (left out vs null).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct ProjectLimitsBody {
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    daily_usd: Option<f64>,
    #[schema(minimum = 0)]
    daily_tokens: Option<i64>,
}

fn project_view(p: ProjectUsage) -> ProjectLimits {
    ProjectLimits {
        project_id: p.project_id,
        daily_usd: p.daily_micros.map(usd),
        daily_tokens: p.daily_tokens,
        today: Today {
            tokens: p.today.spent_tokens,
            usd: usd(p.today.spent_micros),
            reserved_tokens: p.today.reserved_tokens,
            reserved_usd: usd(p.today.reserved_micros),
        },
    }
}

/// A project's per-day limits and its spend today.
#[utoipa::path(get, path = "/admin/api/projects/{project_id}/limits", tag = "admin",
    params(("project_id" = String, Path, description = "1..64 letters, digits, `-`, `_`, `.` or `:`", pattern = "^[A-Za-z0-9._:-]{1,64}$")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The project's limits", body = ProjectLimits),
        (status = 400, description = "Not a valid project id", body = ErrorBody),
        AdminErrors, ReadErrors,
    ))]
pub async fn get_project(
    _: Admin,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let project_id = crate::domain::runs::validate_project_id(&path.into_inner()).map_err(ApiError::invalid)?;
    Ok(HttpResponse::Ok().json(project_view(state.usage.project(project_id).await?)))
}

/// Set a project's per-day limits in tokens and USD (null: none); keys left out stay.
#[utoipa::path(put, path = "/admin/api/projects/{project_id}/limits", tag = "admin", request_body = ProjectLimitsBody,
    params(("project_id" = String, Path, description = "1..64 letters, digits, `-`, `_`, `.` or `:`", pattern = "^[A-Za-z0-9._:-]{1,64}$")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The project's limits as stored now", body = ProjectLimits),
        (status = 400, description = "Not a valid project id, or a value is not valid", body = ErrorBody),
        AdminErrors, WriteErrors,
    ))]
pub async fn put_project(
    _: Admin,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let project_id = crate::domain::runs::validate_project_id(&path.into_inner()).map_err(ApiError::invalid)?;
    let body = object(body.into_inner())?;
    let change = (tokens_key(&body, "daily_tokens")?, usd_key(&body, "daily_usd")?);
    if change == (None, None) {
        return Err(ApiError::Invalid("name `daily_usd` or `daily_tokens` (null removes a limit)".into()));
    }
    let project = state.usage.put_project(project_id, change).await?;
    tracing::info!(project = %project.project_id, daily_tokens = ?project.daily_tokens,
        daily_micros = ?project.daily_micros, "project limits changed by admin");
    Ok(HttpResponse::Ok().json(project_view(project)))
}

fn user_id(path: &str) -> Result<i64, ApiError> {
    path.parse::<i64>()
        .ok()
        .filter(|id| *id >= 1)
        .ok_or_else(|| ApiError::Invalid(format!("`{path}` is not a player id (a whole number from 1)")))
}

/// The day and the length of `GET /admin/api/usage`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// The UTC day, `YYYY-MM-DD` (empty: today).
    #[param(pattern = "^([0-9]{4}-[0-9]{2}-[0-9]{2})?$")]
    day: Option<String>,
    /// At most this many top players (1..1000, empty: 10).
    #[param(pattern = "^([0-9]{1,4})?$")]
    limit: Option<String>,
}

/// One of a day's top players.
#[derive(Debug, Serialize, ToSchema)]
pub struct TopPlayer {
    user_id: i64,
    nickname: String,
    tokens: i64,
    usd: f64,
}

/// A day's spend: the studio's totals and its top players by USD.
#[derive(Debug, Serialize, ToSchema)]
pub struct DayUsage {
    #[schema(example = "2026-12-07")]
    day: String,
    tokens: i64,
    usd: f64,
    reserved_tokens: i64,
    reserved_usd: f64,
    top: Vec<TopPlayer>,
}

/// The studio's spend on a day and the players who spent most.
#[utoipa::path(get, path = "/admin/api/usage", tag = "admin", params(UsageQuery),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The day's usage", body = DayUsage),
        (status = 400, description = "Not a day or a limit", body = ErrorBody),
        AdminErrors, ReadErrors,
    ))]
pub async fn usage(
    _: Admin,
    state: web::Data<AppState>,
    query: web::Query<UsageQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = query.into_inner();
    let day = match q.day.as_deref().filter(|d| !d.is_empty()) {
        None => None,
        Some(d) => Some(
            NaiveDate::parse_from_str(d, "%Y-%m-%d")
                .map_err(|_| ApiError::Invalid(format!("`day` must be a date like 2026-12-07, not `{d}`")))?,
        ),
    };
    let limit = match q.limit.as_deref().filter(|l| !l.is_empty()) {
        None => 10,
        Some(l) => l
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| ApiError::Invalid("`limit` must be a whole number from 1 to 1000".into()))?,
    };
    let d = state.usage.usage(day, limit).await?;
    let top = d
        .top
        .into_iter()
        .map(|(row, user_id, nickname)| TopPlayer {
            user_id,
            nickname,
            tokens: row.spent_tokens,
            usd: usd(row.spent_micros),
        })
        .collect();
    Ok(HttpResponse::Ok().json(DayUsage {
        day: d.day.format("%Y-%m-%d").to_string(),
        tokens: d.studio.spent_tokens,
        usd: usd(d.studio.spent_micros),
        reserved_tokens: d.studio.reserved_tokens,
        reserved_usd: usd(d.studio.reserved_micros),
        top,
    }))
}
