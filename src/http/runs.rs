//! Generation runs over HTTP: `POST /api/generate`, `GET /api/runs/{id}` and the run's events
//! as Server-Sent Events (the admin's views of runs are in `run_admin`).
//! Handlers stay thin: parse, authorize, call the run service or the store, map errors.

use actix::prelude::*;
use actix_web::{web, HttpResponse};
use bytes::Bytes;
use bytestring::ByteString;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::auth::Player;
use super::edge::{no_run, not_shutting_down};
use super::responses::{Fault, PlayerErrors, ReadErrors};
use crate::api_error::{ApiError, ErrorBody};
use crate::hub::{self, SessionId, ToSession};
use crate::runs::service::{RunRefused, Started, Waiter};
use crate::runs::{self, RunStatus, RunView};
use crate::state::AppState;
use crate::ws::subscriptions::{Frame, Seen, Subscription};

/// Frames an SSE client may fall behind by before it is dropped.
const SSE_BACKLOG: usize = 512;
/// Longest silence on an SSE stream before a comment is sent.
const SSE_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(15);

/// A `generate:start` without `type`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct GenerateBody {
    /// 1..64 letters, digits, `-`, `_`, `.` or `:`.
    #[schema(example = "p1", pattern = "^[A-Za-z0-9._:-]{1,64}$")]
    project_id: String,
    /// WRITE, REWRITE or DESCRIBE.
    #[schema(value_type = runs::Action)]
    action: String,
    /// 1..16000 characters, not only whitespace; no control characters but newlines and tabs.
    #[schema(min_length = 1, max_length = 16000)]
    input: String,
    /// Run again even if an identical request has finished before.
    #[serde(default)]
    skip_cache: bool,
}

/// A run taken: its id and place in the queue; a finished identical run answers with
/// `cached: true`, and with no API key configured the run is `dead` at once.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunAccepted {
    run_id: String,
    /// Runs ahead of it in the queue.
    position: i64,
    /// A guess of the wait until it starts (queued runs only).
    #[schema(nullable = false)]
    #[serde(skip_serializing_if = "Option::is_none")]
    estimated_ms: Option<i64>,
    /// Answered from the stored text of an identical run, at no cost.
    #[schema(nullable = false)]
    #[serde(skip_serializing_if = "Option::is_none")]
    cached: Option<bool>,
    /// `dead` when no API key is configured.
    #[schema(nullable = false)]
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<RunStatus>,
}

impl From<RunRefused> for ApiError {
    fn from(e: RunRefused) -> Self {
        match e {
            RunRefused::BudgetExceeded(refusal) => ApiError::OverLimit(refusal),
            RunRefused::Overloaded(m) => ApiError::Overloaded(m),
            RunRefused::RateLimited(refusal) => ApiError::RateLimited(refusal),
            RunRefused::TooManyUnwatched(m) => ApiError::TooMany(m),
            RunRefused::Store(e) => e.into(),
        }
    }
}

/// Start a generation run (it runs to its end even if no one watches).
#[utoipa::path(post, path = "/api/generate", tag = "runs", request_body = GenerateBody,
    security(("player_token" = [])),
    responses(
        (status = 202, description = "The run is queued (or answered from an identical finished run)", body = RunAccepted),
        (status = 400, description = "The body is not a valid generation request", body = ErrorBody),
        (status = 402, description = "The project's budget has no room, or the model has no price", body = ErrorBody),
        (status = 429, description = "Too many runs queued, the player's LOREWIRE_PLAYER_UNWATCHED_RUNS REST runs are queued or running, or the database is busy", body = ErrorBody),
        (status = 503, description = "The database cannot take the request, or the server is shutting down", body = ErrorBody),
        PlayerErrors, Fault,
    ))]
pub async fn generate(
    Player(user): Player,
    state: web::Data<AppState>,
    body: web::Json<GenerateBody>,
) -> Result<HttpResponse, ApiError> {
    not_shutting_down(&state)?;
    let b = body.into_inner();
    let request = runs::validate(&b.project_id, &b.action, &b.input, b.skip_cache).map_err(ApiError::invalid)?;
    let none = RunAccepted { run_id: String::new(), position: 0, estimated_ms: None, cached: None, status: None };
    let body = match state.runs.start(request, Waiter::Rest, user.id).await? {
        Started::Queued { run_id, position, estimated_ms, .. } => {
            RunAccepted { run_id, position, estimated_ms: Some(estimated_ms), ..none }
        }
        Started::Cached(row) => RunAccepted { run_id: row.run_id, cached: Some(true), ..none },
        Started::NoConfig(row) => RunAccepted { run_id: row.run_id, status: Some(RunStatus::Dead), ..none },
    };
    Ok(HttpResponse::Accepted().json(body))
}

/// A run.
#[utoipa::path(get, path = "/api/runs/{run_id}", tag = "runs",
    params(("run_id" = String, Path, description = "From `POST /api/generate` or `run:queued`")),
    security(("player_token" = [])),
    responses(
        (status = 200, description = "The run", body = RunView),
        (status = 404, description = "No such run", body = ErrorBody),
        PlayerErrors, ReadErrors,
    ))]
pub async fn get_run(_: Player, state: web::Data<AppState>, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let run_id = path.into_inner();
    let row = state.runs.get(run_id.clone()).await?.ok_or_else(|| no_run(&run_id))?;
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

/// One Server-Sent Event of a run: the frame's type without `run:`, and the frame's JSON.
#[derive(Debug, ToSchema)]
pub struct RunEvent {
    /// `started`, `delta`, `done` or `error`.
    #[schema(example = "delta")]
    event: String,
    /// The frame (`run:started`, `run:delta`, `run:done`, `run:error`) as on the WebSocket.
    #[schema(content_media_type = "application/json")]
    data: String,
}

impl RunEvent {
    fn to_bytes(&self) -> Bytes {
        Bytes::from(format!("event: {}\ndata: {}\n\n", self.event, self.data))
    }
}

fn sse_event(text: &str) -> (Bytes, bool) {
    let (event, last) = sse_kind(text);
    (RunEvent { event, data: text.to_owned() }.to_bytes(), last)
}

/// The run's frames as Server-Sent Events: the text so far, then live, until done or error.
#[utoipa::path(get, path = "/api/runs/{run_id}/events", tag = "runs",
    params(("run_id" = String, Path, description = "From `POST /api/generate` or `run:queued`")),
    security(("player_token" = [])),
    responses(
        (status = 200, description = "Events `started`, `delta`, `done` and `error`, each with the JSON of the \
            frame of the same name (`run:started`, ...); the stream ends after `done` or `error`",
            body = RunEvent, content_type = "text/event-stream"),
        (status = 404, description = "No such run", body = ErrorBody),
        PlayerErrors, ReadErrors,
    ))]
pub async fn run_events(
    _: Player,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let run_id = path.into_inner();
    let id = state.next_session_id();
    let (tx, mut rx) = tokio::sync::mpsc::channel(SSE_BACKLOG);
    let forwarder = SseForwarder { tx }.start();
    state.hub.do_send(hub::Connect { id, recipient: forwarder.recipient() });
    let guard = HubGuard { hub: state.hub.clone(), id };
    // Subscribed before the catch-up is read: every frame is in one or the other.
    state.hub.do_send(hub::Subscribe { id, topic: runs::topic(&run_id) });
    let mut order = Subscription::holding();
    let catch_up = state.runs.catch_up(run_id.clone()).await?.ok_or_else(|| no_run(&run_id))?;
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
