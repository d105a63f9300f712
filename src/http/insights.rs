//! Admin insight routes: `GET /admin/api/users`, `GET /admin/api/metrics/summary` and
//! `GET /admin/api/metrics/history` (README "REST"): the figures come from the insights service.
//! Read-only; every figure is correct on an empty database.

use std::collections::BTreeMap;

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::Admin;
use super::responses::{AdminErrors, Fault, ReadErrors};
use crate::api_error::{ApiError, ErrorBody};
use crate::domain::content::ContentStatus;
use crate::domain::players::Variant;
use crate::insights;
use crate::llm::circuit::{CircuitSnapshot, GetSnapshot};
use crate::lobby::OnlinePlayers;
use crate::metric_history::{GetMetricHistory, MetricHistoryView};
use crate::runs::{usd, RunStatus};
use crate::state::AppState;
use crate::store::messages::Retention;

const DEFAULT_USERS_LIMIT: i64 = 100;
const MAX_USERS_LIMIT: i64 = 1000;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsersQuery {
    /// At most this many (1..1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// Skip this many (default 0).
    #[param(minimum = 0)]
    offset: Option<i64>,
}

/// A page of users, most recently seen first.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsersPage {
    /// Every user there is.
    total: i64,
    limit: i64,
    offset: i64,
    users: Vec<UserView>,
}

/// A user as admins see them.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = User)]
pub struct UserView {
    user_id: i64,
    nickname: String,
    variant: Variant,
    first_seen: DateTime<Utc>,
    last_seen: DateTime<Utc>,
    message_count: i64,
    /// In the lobby now.
    online: bool,
}

/// Users, most recently seen first, with first / last seen, variant, message count and
/// whether they are online now.
#[utoipa::path(get, path = "/admin/api/users", tag = "admin", operation_id = "admin_users", params(UsersQuery),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "A page of users", body = UsersPage),
        (status = 400, description = "`limit` or `offset` out of range", body = ErrorBody),
        AdminErrors, ReadErrors,
    ))]
pub async fn users(
    _: Admin,
    state: web::Data<AppState>,
    query: web::Query<UsersQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = query.limit.unwrap_or(DEFAULT_USERS_LIMIT);
    if !(1..=MAX_USERS_LIMIT).contains(&limit) {
        return Err(ApiError::Invalid(format!("`limit` must be 1..{MAX_USERS_LIMIT}")));
    }
    let offset = query.offset.unwrap_or(0);
    if offset < 0 {
        return Err(ApiError::Invalid("`offset` must not be negative".into()));
    }
    let (total, page) = insights::users_page(&state.store, limit, offset).await?;
    let online = state.chat.presence().send(OnlinePlayers).await.map_err(|_| ApiError::Internal)?;
    let users = page
        .into_iter()
        .map(|u| UserView {
            user_id: u.user_id,
            nickname: u.nickname,
            variant: Variant::of(u.user_id),
            first_seen: DateTime::<Utc>::from_naive_utc_and_offset(u.created_at, Utc),
            last_seen: DateTime::<Utc>::from_naive_utc_and_offset(u.last_seen_at, Utc),
            message_count: u.message_count,
            online: online.contains(&u.user_id),
        })
        .collect();
    Ok(HttpResponse::Ok().json(UsersPage { total, limit, offset, users }))
}

/// A retention figure with what it is made of.
#[derive(Debug, Serialize, ToSchema)]
pub struct RetentionView {
    /// Users whose D+n day has ended.
    eligible: u64,
    /// Of those, the users seen on day D+n.
    retained: u64,
    /// retained / eligible; null with no eligible user.
    rate: Option<f64>,
}

impl From<Retention> for RetentionView {
    fn from(r: Retention) -> Self {
        RetentionView { eligible: r.eligible.max(0) as u64, retained: r.retained.max(0) as u64, rate: rate(r) }
    }
}

/// retained / eligible; `None` when no user is eligible yet.
fn rate(r: Retention) -> Option<f64> {
    (r.eligible > 0).then(|| r.retained as f64 / r.eligible as f64)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RetentionPair {
    d1: RetentionView,
    d7: RetentionView,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Spend {
    total_usd: f64,
}

/// The game at a glance.
#[derive(Debug, Serialize, ToSchema)]
pub struct Summary {
    users: i64,
    /// Users in the lobby now.
    online: usize,
    messages: i64,
    d1_retention: Option<f64>,
    d7_retention: Option<f64>,
    retention: RetentionPair,
    /// Content items by status (`pending`, `ready`, `fallback`).
    content: BTreeMap<String, i64>,
    /// Runs by status (`queued`, `running`, `done`, `dead`, `aborted`).
    runs: BTreeMap<String, i64>,
    circuit: CircuitSnapshot,
    spend: Spend,
    /// Jobs waiting to run.
    queue_depth: i64,
    backplane: BackplaneState,
}

/// The bus between processes: which (`local`, `postgres`, `redis`) and whether this process
/// hears the others now.
#[derive(Debug, Serialize, ToSchema)]
pub struct BackplaneState {
    kind: &'static str,
    up: bool,
}

/// Users, online, messages, D1 and D7 retention, content and runs by status, the circuit and spend.
#[utoipa::path(get, path = "/admin/api/metrics/summary", tag = "admin", operation_id = "metrics_summary",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The summary", body = Summary),
        AdminErrors, ReadErrors,
    ))]
pub async fn summary(_: Admin, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let figures = state.insights.figures(&state.store, state.clock.now_naive().date()).await?;
    let online = state.chat.presence().send(OnlinePlayers).await.map_err(|_| ApiError::Internal)?.len();
    let circuit = state.circuit.send(GetSnapshot).await.map_err(|_| ApiError::Internal)?;
    let mut by_status: BTreeMap<String, i64> = ContentStatus::ALL.iter().map(|s| (s.as_str().into(), 0)).collect();
    by_status.extend(figures.content);
    let mut runs_by_status: BTreeMap<String, i64> = RunStatus::ALL.iter().map(|s| (s.as_str().into(), 0)).collect();
    runs_by_status.extend(figures.runs);
    Ok(HttpResponse::Ok().json(Summary {
        users: figures.users,
        online,
        messages: figures.messages,
        d1_retention: rate(figures.d1),
        d7_retention: rate(figures.d7),
        retention: RetentionPair { d1: figures.d1.into(), d7: figures.d7.into() },
        content: by_status,
        runs: runs_by_status,
        circuit,
        spend: Spend { total_usd: usd(figures.spent_micros) },
        queue_depth: figures.queue_depth,
        backplane: BackplaneState { kind: state.backplane.name(), up: state.backplane.is_up() },
    }))
}

/// The last hour, sampled every 10 s, ending with the values now (the dashboard's charts).
#[utoipa::path(get, path = "/admin/api/metrics/history", tag = "admin", operation_id = "metrics_history",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The last hour: `t` (unix seconds) and every series as long as `t`", body = MetricHistoryView),
        AdminErrors, Fault,
    ))]
pub async fn metric_history(_: Admin, state: web::Data<AppState>) -> Result<web::Json<MetricHistoryView>, ApiError> {
    // A chart with a gap beats no charts: an unreadable queue depth is `null`, not an error.
    let queue_depth = match insights::queue_depth(&state.store).await {
        Ok(depth) => Some(depth),
        Err(e) => {
            tracing::warn!(error = %e, "could not read the queue depth for the history");
            None
        }
    };
    let view = state.metric_history.send(GetMetricHistory { queue_depth }).await.map_err(|_| ApiError::Internal)?;
    Ok(web::Json(view))
}
