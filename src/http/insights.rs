//! Admin insight routes: `GET /admin/api/users`, `GET /admin/api/metrics/summary` and
//! `GET /admin/api/metrics/history`, and the retention arithmetic (README "REST"). Read-only;
//! every figure is correct on an empty database.

use std::collections::{BTreeMap, HashMap};

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::admin::authorize;
use crate::api_error::{ApiError, ErrorBody};
use crate::domain::content::ContentStatus;
use crate::domain::players::Variant;
use crate::history::{GetHistory, HistoryView};
use crate::llm::circuit::{CircuitSnapshot, GetSnapshot};
use crate::lobby::OnlineUsers;
use crate::runs::{usd, RunStatus};
use crate::state::AppState;
use crate::store::{billing, content as content_rows, jobs, messages, runs as run_rows};

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
        (status = 401, description = "No admin token", body = ErrorBody),
        (status = 403, description = "Wrong admin token", body = ErrorBody),
        (status = 429, description = "The database is busy", body = ErrorBody),
        (status = 503, description = "The database cannot take the request", body = ErrorBody),
        (status = 500, description = "A fault on lorewire's side", body = ErrorBody),
    ))]
pub async fn users(
    req: HttpRequest,
    state: web::Data<AppState>,
    query: web::Query<UsersQuery>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let limit = query.limit.unwrap_or(DEFAULT_USERS_LIMIT);
    if !(1..=MAX_USERS_LIMIT).contains(&limit) {
        return Err(ApiError::Invalid(format!("`limit` must be 1..{MAX_USERS_LIMIT}")));
    }
    let offset = query.offset.unwrap_or(0);
    if offset < 0 {
        return Err(ApiError::Invalid("`offset` must not be negative".into()));
    }
    let (total, page, counts) = state
        .store
        .run(move |conn| {
            let total = messages::user_count(conn)?;
            let page = messages::users_page(conn, limit, offset)?;
            let ids: Vec<i64> = page.iter().map(|u| u.0).collect();
            let counts: HashMap<i64, i64> = messages::count_by_user(conn, &ids)?.into_iter().collect();
            Ok((total, page, counts))
        })
        .await?;
    let online = state.lobby.addr().send(OnlineUsers).await.map_err(|_| ApiError::Internal)?;
    let users = page
        .into_iter()
        .map(|(id, nickname, created_at, last_seen_at)| UserView {
            user_id: id,
            nickname,
            variant: Variant::of(id),
            first_seen: DateTime::<Utc>::from_naive_utc_and_offset(created_at, Utc),
            last_seen: DateTime::<Utc>::from_naive_utc_and_offset(last_seen_at, Utc),
            message_count: counts.get(&id).copied().unwrap_or(0),
            online: online.contains(&id),
        })
        .collect();
    Ok(HttpResponse::Ok().json(UsersPage { total, limit, offset, users }))
}

/// D1 / D7 retention over the users whose D+n day has ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retention {
    pub eligible: u64,
    pub retained: u64,
}

impl Retention {
    /// `None` when no user is eligible yet.
    pub fn rate(&self) -> Option<f64> {
        (self.eligible > 0).then(|| self.retained as f64 / self.eligible as f64)
    }
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
        RetentionView { eligible: r.eligible, retained: r.retained, rate: r.rate() }
    }
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

/// Retention at day `n` from `(user_id, "YYYY-MM-DD")` rows: a user first seen on UTC day D
/// (their earliest row) is eligible once day D+n has ended (D+n < today) and retained if they
/// have a row for day D+n. Unreadable days are skipped.
pub fn retention(days: &[(i64, String)], today: NaiveDate, n: u64) -> Retention {
    let mut seen: BTreeMap<i64, Vec<NaiveDate>> = BTreeMap::new();
    for (user_id, day) in days {
        if let Ok(day) = NaiveDate::parse_from_str(day, "%Y-%m-%d") {
            seen.entry(*user_id).or_default().push(day);
        }
    }
    let mut result = Retention { eligible: 0, retained: 0 };
    for user_days in seen.values() {
        let Some(first) = user_days.iter().min() else { continue };
        let Some(target) = first.checked_add_days(chrono::Days::new(n)) else { continue };
        if target >= today {
            continue;
        }
        result.eligible += 1;
        if user_days.contains(&target) {
            result.retained += 1;
        }
    }
    result
}

/// Users, online, messages, D1 and D7 retention, content and runs by status, the circuit and spend.
#[utoipa::path(get, path = "/admin/api/metrics/summary", tag = "admin", operation_id = "metrics_summary",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The summary", body = Summary),
        (status = 401, description = "No admin token", body = ErrorBody),
        (status = 403, description = "Wrong admin token", body = ErrorBody),
        (status = 429, description = "The database is busy", body = ErrorBody),
        (status = 503, description = "The database cannot take the request", body = ErrorBody),
        (status = 500, description = "A fault on lorewire's side", body = ErrorBody),
    ))]
pub async fn summary(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let (users, message_count, content, days, depth, runs, spent) = state
        .store
        .run(|conn| {
            Ok((
                messages::user_count(conn)?,
                messages::count(conn)?,
                content_rows::count_by_status(conn)?,
                messages::user_days(conn)?,
                jobs::depth(conn)?,
                run_rows::count_by_status(conn)?,
                billing::total_cost(conn, None)?,
            ))
        })
        .await?;
    let online = state.lobby.addr().send(OnlineUsers).await.map_err(|_| ApiError::Internal)?.len();
    let circuit = state.circuit.send(GetSnapshot).await.map_err(|_| ApiError::Internal)?;
    let today = state.clock.now_naive().date();
    let d1 = retention(&days, today, 1);
    let d7 = retention(&days, today, 7);
    let mut by_status: BTreeMap<String, i64> = ContentStatus::ALL.iter().map(|s| (s.as_str().into(), 0)).collect();
    by_status.extend(content);
    let mut runs_by_status: BTreeMap<String, i64> = RunStatus::ALL.iter().map(|s| (s.as_str().into(), 0)).collect();
    runs_by_status.extend(runs);
    Ok(HttpResponse::Ok().json(Summary {
        users,
        online,
        messages: message_count,
        d1_retention: d1.rate(),
        d7_retention: d7.rate(),
        retention: RetentionPair { d1: d1.into(), d7: d7.into() },
        content: by_status,
        runs: runs_by_status,
        circuit,
        spend: Spend { total_usd: usd(spent) },
        queue_depth: depth,
        backplane: BackplaneState { kind: state.backplane.name(), up: state.backplane.is_up() },
    }))
}

/// The last hour, sampled every 10 s, ending with the values now (the dashboard's charts).
#[utoipa::path(get, path = "/admin/api/metrics/history", tag = "admin", operation_id = "metrics_history",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The last hour: `t` (unix seconds) and every series as long as `t`", body = HistoryView),
        (status = 401, description = "No admin token", body = ErrorBody),
        (status = 403, description = "Wrong admin token", body = ErrorBody),
        (status = 500, description = "A fault on lorewire's side", body = ErrorBody),
    ))]
pub async fn history(req: HttpRequest, state: web::Data<AppState>) -> Result<web::Json<HistoryView>, ApiError> {
    authorize(&req, &state)?;
    // A chart with a gap beats no charts: an unreadable queue depth is `null`, not an error.
    let queue_depth = match state.store.run(jobs::depth).await {
        Ok(depth) => Some(depth),
        Err(e) => {
            tracing::warn!(error = %e, "could not read the queue depth for the history");
            None
        }
    };
    let view = state.history.send(GetHistory { queue_depth }).await.map_err(|_| ApiError::Internal)?;
    Ok(web::Json(view))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    fn rows(pairs: &[(i64, &str)]) -> Vec<(i64, String)> {
        pairs.iter().map(|(u, day)| (*u, day.to_string())).collect()
    }

    #[test]
    fn no_eligible_user_means_no_rate() {
        assert_eq!(retention(&[], d("2026-11-23"), 1).rate(), None);
        // First seen yesterday: D+1 is today, not ended yet.
        let days = rows(&[(1, "2026-11-22"), (1, "2026-11-23")]);
        assert_eq!(retention(&days, d("2026-11-23"), 1), Retention { eligible: 0, retained: 0 });
    }

    #[test]
    fn d1_and_d7_count_the_exact_day() {
        let today = d("2026-11-23");
        let days = rows(&[
            // Eligible for D1 and D7; retained at D1 (11-11) and D7 (11-17).
            (1, "2026-11-10"),
            (1, "2026-11-11"),
            (1, "2026-11-17"),
            // Eligible for both; seen on D+2 only: retained at neither.
            (2, "2026-11-10"),
            (2, "2026-11-12"),
            // Eligible for D1 only (D+7 = 11-27 not ended); retained at D1.
            (3, "2026-11-20"),
            (3, "2026-11-21"),
        ]);
        assert_eq!(retention(&days, today, 1), Retention { eligible: 3, retained: 2 });
        assert_eq!(retention(&days, today, 7), Retention { eligible: 2, retained: 1 });
        assert_eq!(retention(&days, today, 7).rate(), Some(0.5));
    }
}
