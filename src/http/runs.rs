//! Generation runs over HTTP: `POST /api/generate`, `GET /api/runs/{id}`, the run's events as
//! Server-Sent Events, and the admin runs, costs, budgets, dead letters and prices.
//! Handlers stay thin: parse, authorize, call the run service or the store, map errors.

use std::collections::HashMap;

use actix::prelude::*;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use bytestring::ByteString;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::admin::authorize;
use super::error::ApiError;
use super::public::player;
use crate::hub::{self, SessionId, ToSession};
use crate::runs::service::{StartError, Started, Waiter};
use crate::runs::{self, parse_usd, usd, Price, RunStatus, RunView};
use crate::state::AppState;
use crate::store::billing;
use crate::store::runs::{self as rows, Requeued, RunRow};
use crate::ws::subscriptions::{Frame, Seen, Subscription};

/// Frames an SSE client may fall behind by before it is dropped.
const SSE_BACKLOG: usize = 512;
/// Longest silence on an SSE stream before a comment is sent.
const SSE_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(15);
/// Most rows an admin list returns.
const MAX_LIST: i64 = 1000;

#[derive(Debug, Deserialize)]
pub struct GenerateBody {
    project_id: String,
    action: String,
    input: String,
    #[serde(default)]
    skip_cache: bool,
}

impl From<StartError> for ApiError {
    fn from(e: StartError) -> Self {
        match e {
            StartError::BudgetExceeded(m) => ApiError::BudgetExceeded(m),
            StartError::Overloaded(m) => ApiError::Overloaded(m),
            StartError::Store(e) => e.into(),
        }
    }
}

pub async fn generate(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<GenerateBody>,
) -> Result<HttpResponse, ApiError> {
    player(&req, &state).await?;
    if state.is_shutting_down() {
        return Err(ApiError::Unavailable("the server is shutting down".into()));
    }
    let b = body.into_inner();
    let request = runs::validate(&b.project_id, &b.action, &b.input, b.skip_cache).map_err(ApiError::Invalid)?;
    let body = match state.runs.start(request, Waiter::Rest).await? {
        Started::Queued { run_id, position, estimated_ms, .. } => {
            json!({"run_id": run_id, "position": position, "estimated_ms": estimated_ms})
        }
        Started::Cached(row) => json!({"run_id": row.run_id, "position": 0, "cached": true}),
        Started::NoConfig(row) => json!({"run_id": row.run_id, "position": 0, "status": "dead"}),
    };
    Ok(HttpResponse::Accepted().json(body))
}

fn not_found(run_id: &str) -> ApiError {
    ApiError::NotFound(format!("no run `{run_id}`"))
}

pub async fn get_run(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    player(&req, &state).await?;
    let run_id = path.into_inner();
    let row = state.runs.get(run_id.clone()).await?.ok_or_else(|| not_found(&run_id))?;
    Ok(HttpResponse::Ok().json(row.view()?))
}

/// Forwards a run topic's frames from the Hub to one SSE response.
struct SseForwarder {
    tx: tokio::sync::mpsc::Sender<Frame>,
}

impl Actor for SseForwarder {
    type Context = Context<Self>;
}

impl Handler<ToSession> for SseForwarder {
    type Result = ();
    fn handle(&mut self, msg: ToSession, ctx: &mut Context<Self>) {
        match msg {
            ToSession::Frame { version, text, .. } => {
                // A client that stopped reading loses its stream, never slows the run.
                if self.tx.try_send((version, text)).is_err() {
                    ctx.stop();
                }
            }
            ToSession::Close { .. } => ctx.stop(),
        }
    }
}

/// Leaves the Hub when the response is dropped (client gone or stream ended).
struct HubGuard {
    hub: Addr<hub::Hub>,
    id: SessionId,
}

impl Drop for HubGuard {
    fn drop(&mut self) {
        self.hub.do_send(hub::Disconnect { id: self.id });
    }
}

/// `(event name, final?)` of a run frame.
fn sse_kind(text: &str) -> (String, bool) {
    let ty = serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| v.get("type").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_default();
    let name = ty.strip_prefix("run:").unwrap_or(&ty).to_owned();
    let last = matches!(name.as_str(), "done" | "error");
    (name, last)
}

fn sse_event(text: &str) -> (Bytes, bool) {
    let (name, last) = sse_kind(text);
    (Bytes::from(format!("event: {name}\ndata: {text}\n\n")), last)
}

/// The run's frames as Server-Sent Events: the text so far, then live, until done or error.
pub async fn run_events(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    player(&req, &state).await?;
    let run_id = path.into_inner();
    let id = state.next_session_id();
    let (tx, mut rx) = tokio::sync::mpsc::channel(SSE_BACKLOG);
    let forwarder = SseForwarder { tx }.start();
    state.hub.do_send(hub::Connect { id, recipient: forwarder.recipient() });
    let guard = HubGuard { hub: state.hub.clone(), id };
    // Subscribed before the catch-up is read: every frame is in one or the other.
    state.hub.do_send(hub::Subscribe { id, topic: runs::topic(&run_id) });
    let mut order = Subscription::holding();
    let catch_up = state.runs.catch_up(run_id.clone()).await?.ok_or_else(|| not_found(&run_id))?;
    // What arrived while the catch-up was read waits in the channel: it is held back as a
    // session holds it, then follows the catch-up in order.
    while let Ok((version, text)) = rx.try_recv() {
        order.offer(version, text);
    }
    let held = order.release(Seen::catch_up(&catch_up.frames));
    let pending = catch_up.frames.into_iter().map(|(_, text)| text).chain(held).collect();

    let state = SseState { rx, pending, finished: catch_up.finished, order, done: false, _guard: guard };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if st.done {
                return None;
            }
            let text = match st.pending.pop_front() {
                Some(text) => text,
                None if st.finished => return None,
                None => match tokio::time::timeout(SSE_KEEP_ALIVE, st.rx.recv()).await {
                    Ok(frame) => {
                        let (version, text) = frame?;
                        match st.order.offer(version, text) {
                            Some(text) => text,
                            // Already sent in the catch-up.
                            None => continue,
                        }
                    }
                    // A comment now and then keeps proxies from closing a quiet stream (a long queue).
                    Err(_) => return Some((Ok(Bytes::from_static(b": keep-alive\n\n")), st)),
                },
            };
            let (bytes, last) = sse_event(&text);
            st.done = last;
            return Some((Ok::<_, actix_web::Error>(bytes), st));
        }
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        .insert_header(("x-accel-buffering", "no"))
        .streaming(stream))
}

/// One SSE response: the catch-up frames, then live frames newer than the last one sent,
/// ending after the run's final frame.
struct SseState {
    rx: tokio::sync::mpsc::Receiver<Frame>,
    pending: std::collections::VecDeque<ByteString>,
    finished: bool,
    /// Which live frames the client has already (the same ordering as a session's).
    order: Subscription,
    done: bool,
    _guard: HubGuard,
}

// ---------------------------------------------------------------------------
// Admin
// ---------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
pub struct RunsQuery {
    project_id: Option<String>,
    status: Option<String>,
    limit: Option<String>,
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
        Some(p) => runs::validate_project_id(&p).map(Some).map_err(ApiError::Invalid),
    }
}

fn views(rows: &[rows::RunRow]) -> Result<Vec<RunView>, ApiError> {
    Ok(rows.iter().map(RunRow::view).collect::<Result<_, _>>()?)
}

pub async fn admin_runs(
    req: HttpRequest,
    state: web::Data<AppState>,
    query: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
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
    let list = state.store.run(move |conn| rows::list(conn, project.as_deref(), status, limit)).await?;
    Ok(HttpResponse::Ok().json(json!({"runs": views(&list)?})))
}

pub async fn admin_costs(
    req: HttpRequest,
    state: web::Data<AppState>,
    query: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let project = project_filter(query.get("project_id").cloned())?;
    let limit = limit_of(query.get("limit").map(String::as_str), MAX_LIST)?;
    let (total, events) = state
        .store
        .run(move |conn| {
            Ok((billing::total_cost(conn, project.as_deref())?, billing::cost_events(conn, project.as_deref(), limit)?))
        })
        .await?;
    let events: Vec<Value> = events
        .iter()
        .map(|e| {
            json!({
                "run_id": e.run_id,
                "project_id": e.project_id,
                "model": e.model,
                "attempt": e.attempt,
                "usage": {
                    "input_tokens": e.input_tokens,
                    "output_tokens": e.output_tokens,
                    "cache_read_tokens": e.cache_read_tokens,
                    "cache_write_tokens": e.cache_write_tokens,
                },
                "cost_usd": usd(e.cost_micros),
                "created_at": chrono::DateTime::<chrono::Utc>::from_naive_utc_and_offset(e.created_at, chrono::Utc),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({"total_usd": usd(total), "events": events})))
}

fn budget_view(project_id: &str, b: Option<&billing::BudgetRow>, spent_without_budget: i64) -> Value {
    match b {
        Some(b) => json!({
            "project_id": project_id,
            "limit_usd": usd(b.limit_micros),
            "spent_usd": usd(b.spent_micros),
            "reserved_usd": usd(b.reserved_micros),
        }),
        None => json!({
            "project_id": project_id,
            "limit_usd": null,
            "spent_usd": usd(spent_without_budget),
            "reserved_usd": 0.0,
        }),
    }
}

pub async fn get_budget(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let project_id = runs::validate_project_id(&path.into_inner()).map_err(ApiError::Invalid)?;
    let p = project_id.clone();
    let (budget, spent) =
        state.store.run(move |conn| Ok((billing::budget(conn, &p)?, billing::total_cost(conn, Some(&p))?))).await?;
    Ok(HttpResponse::Ok().json(budget_view(&project_id, budget.as_ref(), spent)))
}

pub async fn put_budget(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let project_id = runs::validate_project_id(&path.into_inner()).map_err(ApiError::Invalid)?;
    let limit = match body.get("limit_usd") {
        None => return Err(ApiError::Invalid("send {\"limit_usd\": <dollars>}".into())),
        Some(v) => parse_usd(v, "limit_usd").map_err(ApiError::Invalid)?,
    };
    let now = state.clock.now_naive();
    let p = project_id.clone();
    let row = state.store.run(move |conn| billing::put_budget(conn, &p, limit, now)).await?;
    tracing::info!(project = %project_id, limit_micros = limit, "budget set by admin");
    Ok(HttpResponse::Ok().json(budget_view(&project_id, Some(&row), 0)))
}

pub async fn dead_letters(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let list = state.store.run(|conn| rows::list(conn, None, Some(RunStatus::Dead), MAX_LIST)).await?;
    Ok(HttpResponse::Ok().json(json!({"runs": views(&list)?})))
}

pub async fn retry_dead_letter(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let run_id = path.into_inner();
    match state.runs.retry_dead(run_id.clone()).await? {
        Requeued::Queued(row) => Ok(HttpResponse::Accepted().json(row.view()?)),
        Requeued::NotFound => Err(not_found(&run_id)),
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

pub async fn get_prices(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let list = state.store.run(billing::prices).await?;
    let map: Map<String, Value> = list.iter().map(|p| (p.model.clone(), p.price().to_json())).collect();
    Ok(HttpResponse::Ok().json(Value::Object(map)))
}

pub async fn put_price(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let model = path.into_inner();
    if model.trim().is_empty() || model.chars().count() > 200 || model.chars().any(char::is_control) {
        return Err(ApiError::Invalid("the model name must be 1..200 characters without control characters".into()));
    }
    let field = |name: &str| -> Result<i64, ApiError> {
        let v = body.get(name).ok_or_else(|| {
            ApiError::Invalid(format!(
                "`{name}` is missing; send input_usd, output_usd, cache_read_usd and cache_write_usd per million tokens"
            ))
        })?;
        parse_usd(v, name).map_err(ApiError::Invalid)
    };
    let price = Price {
        input: field("input_usd")?,
        output: field("output_usd")?,
        cache_read: field("cache_read_usd")?,
        cache_write: field("cache_write_usd")?,
    };
    let now = state.clock.now_naive();
    let m = model.clone();
    state.store.run(move |conn| billing::put_price(conn, &m, &price, now)).await?;
    tracing::info!(model = %model, "price set by admin");
    Ok(HttpResponse::Ok().json(json!({ model: price.to_json() })))
}
