//! The admin's view of generation runs over HTTP: the run list, costs, budgets, dead
//! letters and prices. Handlers stay thin: parse, call the run service or `runs::admin`, map
//! errors.

use std::collections::{BTreeMap, HashMap};

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::openapi::schema::{AnyOfBuilder, ObjectBuilder, Type};
use utoipa::{IntoParams, ToSchema};

use super::auth::Admin;
use super::edge::no_run;
use super::responses::{AdminErrors, Fault, ReadErrors, WriteErrors};
use crate::api_error::{typed_body, ApiError, ErrorBody};
use crate::domain::money::PriceUsd;
use crate::runs::{self, parse_usd, usd, RunStatus, RunView, Usage};
use crate::state::AppState;
use crate::store::billing::BudgetRow;
use crate::store::runs::{Requeued, RunRow, Unreadable};

/// Most rows an admin list returns.
const MAX_LIST: i64 = 1000;

/// The filters of the run list (empty values are ignored).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RunsQuery {
    /// Only this project's runs.
    #[param(pattern = "^[A-Za-z0-9._:-]{0,64}$")]
    project_id: Option<String>,
    #[param(schema_with = status_filter_schema)]
    status: Option<String>,
    #[param(schema_with = runs_limit_schema)]
    limit: Option<String>,
}

/// The filters of the cost events (empty values are ignored).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CostsQuery {
    /// Only this project's costs.
    #[param(pattern = "^[A-Za-z0-9._:-]{0,64}$")]
    project_id: Option<String>,
    #[param(schema_with = costs_limit_schema)]
    limit: Option<String>,
}

/// `status`: one run status, or empty for every status.
fn status_filter_schema() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(std::iter::once("").chain(RunStatus::ALL.iter().map(|s| s.as_str()))))
        .description(Some("Only runs with this status (empty: every status)."))
}

fn runs_limit_schema() -> AnyOfBuilder {
    limit_schema("At most this many (1..1000, empty: 100).")
}

fn costs_limit_schema() -> AnyOfBuilder {
    limit_schema("At most this many events, newest first (1..1000, empty: 1000).")
}

/// `limit`: a whole number from 1 to `MAX_LIST`, or empty for the default (as a form sends it).
fn limit_schema(description: &str) -> AnyOfBuilder {
    AnyOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(1)).maximum(Some(MAX_LIST)))
        .item(ObjectBuilder::new().schema_type(Type::String).max_length(Some(0)))
        .description(Some(description))
}

/// Runs, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunList {
    runs: Vec<RunView>,
    /// Rows left out of `runs` because they are corrupt (each is logged too).
    skipped: Vec<SkippedRun>,
}

/// A stored run that breaks the rules (an unknown action or status, an unreadable value).
#[derive(Debug, Serialize, ToSchema)]
pub struct SkippedRun {
    /// The run's id, or `#<row id>` when even that cannot be read.
    run_id: String,
    /// What is wrong with it.
    error: String,
}

fn limit_of(limit: Option<&str>, default: i64) -> Result<i64, ApiError> {
    match limit {
        None | Some("") => Ok(default),
        Some(l) => l
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=MAX_LIST).contains(n))
            .ok_or_else(|| ApiError::Invalid(format!("`limit` must be a whole number from 1 to {MAX_LIST}"))),
    }
}

fn project_filter(project_id: Option<String>) -> Result<Option<String>, ApiError> {
    match project_id.filter(|p| !p.is_empty()) {
        None => Ok(None),
        Some(p) => runs::validate_project_id(&p).map(Some).map_err(ApiError::invalid),
    }
}

/// The rows that can be shown; a corrupt one is left out, named in `skipped` and logged, so one
/// bad row cannot hide the others.
fn run_list((rows, unreadable): (Vec<RunRow>, Vec<Unreadable>)) -> RunList {
    let mut skipped: Vec<SkippedRun> =
        unreadable.into_iter().map(|u| SkippedRun { run_id: u.run_id, error: u.error }).collect();
    let mut runs = Vec::with_capacity(rows.len());
    for row in &rows {
        match row.view() {
            Ok(view) => runs.push(view),
            Err(e) => skipped.push(SkippedRun { run_id: row.run_id.clone(), error: e.to_string() }),
        }
    }
    for s in &skipped {
        tracing::warn!(run = %s.run_id, error = %s.error, "corrupt run row left out of the admin's list");
    }
    RunList { runs, skipped }
}

/// One charged attempt.
#[derive(Debug, Serialize, ToSchema)]
pub struct CostEvent {
    run_id: String,
    project_id: String,
    model: String,
    attempt: i32,
    usage: Usage,
    cost_usd: f64,
    created_at: DateTime<Utc>,
}

/// What was spent, and on what.
#[derive(Debug, Serialize, ToSchema)]
pub struct Costs {
    total_usd: f64,
    /// Newest first.
    events: Vec<CostEvent>,
}

/// A project's budget; `limit_usd` is null while it has none.
#[derive(Debug, Serialize, ToSchema)]
pub struct Budget {
    project_id: String,
    limit_usd: Option<f64>,
    spent_usd: f64,
    reserved_usd: f64,
}

/// `PUT /admin/api/budgets/{project_id}`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct BudgetBody {
    /// US dollars.
    #[schema(example = 12.5, minimum = 0, maximum = 1_000_000_000)]
    limit_usd: f64,
}

/// The run list, newest first.
#[utoipa::path(get, path = "/admin/api/runs", tag = "admin", params(RunsQuery),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The runs", body = RunList),
        (status = 400, description = "A filter is not valid", body = ErrorBody),
        AdminErrors, ReadErrors,
    ))]
pub async fn admin_runs(
    _: Admin,
    state: web::Data<AppState>,
    query: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    // Read by hand rather than as `RunsQuery` so a repeated or unknown key is not an error.
    let q = RunsQuery {
        project_id: query.get("project_id").cloned(),
        status: query.get("status").cloned(),
        limit: query.get("limit").cloned(),
    };
    let project = project_filter(q.project_id)?;
    let status = match q.status.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(RunStatus::parse(s).ok_or_else(|| {
            ApiError::Invalid(format!("unknown status `{s}` (expected queued, running, done, dead or aborted)"))
        })?),
    };
    let limit = limit_of(q.limit.as_deref(), 100)?;
    let list = runs::admin::list(&state.store, project, status, limit).await?;
    Ok(HttpResponse::Ok().json(run_list(list)))
}

/// The total spent and the cost events, newest first.
#[utoipa::path(get, path = "/admin/api/costs", tag = "admin", params(CostsQuery),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The costs", body = Costs),
        (status = 400, description = "A filter is not valid", body = ErrorBody),
        AdminErrors, ReadErrors,
    ))]
pub async fn admin_costs(
    _: Admin,
    state: web::Data<AppState>,
    query: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    let q = CostsQuery { project_id: query.get("project_id").cloned(), limit: query.get("limit").cloned() };
    let project = project_filter(q.project_id)?;
    let limit = limit_of(q.limit.as_deref(), MAX_LIST)?;
    let (total, events) = runs::admin::costs(&state.store, project, limit).await?;
    let tokens = |n: i64| n.max(0) as u64;
    let events = events
        .into_iter()
        .map(|e| CostEvent {
            usage: Usage {
                input_tokens: tokens(e.input_tokens),
                output_tokens: tokens(e.output_tokens),
                cache_read_tokens: tokens(e.cache_read_tokens),
                cache_write_tokens: tokens(e.cache_write_tokens),
            },
            cost_usd: usd(e.cost_micros),
            created_at: DateTime::<Utc>::from_naive_utc_and_offset(e.created_at, Utc),
            run_id: e.run_id,
            project_id: e.project_id,
            model: e.model,
            attempt: e.attempt,
        })
        .collect();
    Ok(HttpResponse::Ok().json(Costs { total_usd: usd(total), events }))
}

fn budget_view(project_id: &str, b: Option<&BudgetRow>, spent_without_budget: i64) -> Budget {
    match b {
        Some(b) => Budget {
            project_id: project_id.to_owned(),
            limit_usd: Some(usd(b.limit_micros)),
            spent_usd: usd(b.spent_micros),
            reserved_usd: usd(b.reserved_micros),
        },
        None => Budget {
            project_id: project_id.to_owned(),
            limit_usd: None,
            spent_usd: usd(spent_without_budget),
            reserved_usd: 0.0,
        },
    }
}

/// A project's budget (a project without one shows what it has spent).
#[utoipa::path(get, path = "/admin/api/budgets/{project_id}", tag = "admin",
    params(("project_id" = String, Path, description = "1..64 letters, digits, `-`, `_`, `.` or `:`", pattern = "^[A-Za-z0-9._:-]{1,64}$")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The budget", body = Budget),
        (status = 400, description = "Not a valid project id", body = ErrorBody),
        AdminErrors, ReadErrors,
    ))]
pub async fn get_budget(
    _: Admin,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let project_id = runs::validate_project_id(&path.into_inner()).map_err(ApiError::invalid)?;
    let (budget, spent) = runs::admin::budget(&state.store, project_id.clone()).await?;
    Ok(HttpResponse::Ok().json(budget_view(&project_id, budget.as_ref(), spent)))
}

/// Set a project's spending limit (a new budget starts from what the project has spent).
#[utoipa::path(put, path = "/admin/api/budgets/{project_id}", tag = "admin", request_body = BudgetBody,
    params(("project_id" = String, Path, description = "1..64 letters, digits, `-`, `_`, `.` or `:`", pattern = "^[A-Za-z0-9._:-]{1,64}$")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The budget as stored now", body = Budget),
        (status = 400, description = "Not a valid project id or limit", body = ErrorBody),
        AdminErrors, WriteErrors,
    ))]
pub async fn put_budget(
    _: Admin,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let project_id = runs::validate_project_id(&path.into_inner()).map_err(ApiError::invalid)?;
    let body: BudgetBody = typed_body(body.into_inner())?;
    let limit = parse_usd(body.limit_usd, "limit_usd").map_err(ApiError::invalid)?;
    let now = state.clock.now_naive();
    let row = runs::admin::set_budget(&state.store, project_id.clone(), limit, now).await?;
    tracing::info!(project = %project_id, limit_micros = limit, "budget set by admin");
    Ok(HttpResponse::Ok().json(budget_view(&project_id, Some(&row), 0)))
}

/// Dead runs (every attempt failed), newest first.
#[utoipa::path(get, path = "/admin/api/dead-letters", tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The dead runs", body = RunList),
        AdminErrors, ReadErrors,
    ))]
pub async fn dead_letters(_: Admin, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let list = runs::admin::list(&state.store, None, Some(RunStatus::Dead), MAX_LIST).await?;
    Ok(HttpResponse::Ok().json(run_list(list)))
}

/// Queue a dead run again, with fresh attempts.
#[utoipa::path(post, path = "/admin/api/dead-letters/{run_id}/retry", tag = "admin",
    params(("run_id" = String, Path, description = "A dead run's id")),
    security(("admin_token" = [])),
    responses(
        (status = 202, description = "The run, queued again", body = RunView),
        (status = 402, description = "The project's budget has no room to run it again", body = ErrorBody),
        (status = 404, description = "No such run", body = ErrorBody),
        (status = 409, description = "The run is not dead, or an identical run is queued or running", body = ErrorBody),
        (status = 429, description = "The run queue is full, or the database is busy", body = ErrorBody),
        (status = 503, description = "The database cannot take the request", body = ErrorBody),
        AdminErrors, Fault,
    ))]
pub async fn retry_dead_letter(
    _: Admin,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let run_id = path.into_inner();
    match state.runs.retry_dead(run_id.clone()).await? {
        Requeued::Queued(row) => Ok(HttpResponse::Accepted().json(row.view()?)),
        Requeued::NotFound => Err(no_run(&run_id)),
        Requeued::NotDead => Err(ApiError::Conflict(format!("run `{run_id}` is not a dead letter"))),
        Requeued::Duplicate => {
            Err(ApiError::Conflict(format!("an identical run to `{run_id}` is queued or running already")))
        }
        Requeued::BudgetExceeded => {
            Err(ApiError::BudgetExceeded("the project's budget has no room to run it again".into()))
        }
        Requeued::Overloaded => Err(ApiError::Overloaded("the run queue is full; try again later".into())),
    }
}

/// Prices per million tokens, by model.
#[utoipa::path(get, path = "/admin/api/prices", tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Every known model's prices, by model name", body = BTreeMap<String, PriceUsd>),
        AdminErrors, ReadErrors,
    ))]
pub async fn get_prices(_: Admin, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let list = runs::admin::prices(&state.store).await?;
    let map: BTreeMap<String, PriceUsd> = list.iter().map(|p| (p.model.clone(), PriceUsd::from(&p.price()))).collect();
    Ok(HttpResponse::Ok().json(map))
}

/// Set one model's prices per million tokens.
#[utoipa::path(put, path = "/admin/api/prices/{model}", tag = "admin", request_body = PriceUsd,
    params(("model" = String, Path, description = "The model name, 1..200 characters without control characters", min_length = 1, max_length = 200)),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The model's prices as stored now, under its name", body = BTreeMap<String, PriceUsd>),
        (status = 400, description = "Not a valid model name or price", body = ErrorBody),
        AdminErrors, WriteErrors,
    ))]
pub async fn put_price(
    _: Admin,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let model = path.into_inner();
    if model.trim().is_empty() || model.chars().count() > 200 || model.chars().any(char::is_control) {
        return Err(ApiError::Invalid("the model name must be 1..200 characters without control characters".into()));
    }
    let body: PriceUsd = typed_body(body.into_inner())?;
    let price = body.to_price().map_err(ApiError::invalid)?;
    let now = state.clock.now_naive();
    runs::admin::set_price(&state.store, model.clone(), price, now).await?;
    tracing::info!(model = %model, "price set by admin");
    Ok(HttpResponse::Ok().json(BTreeMap::from([(model, PriceUsd::from(&price))])))
}
