//! Fake upstream LLM server for integration tests and benchmarks.
//!
//! A real HTTP server on 127.0.0.1 (random port) that speaks the Anthropic
//! Messages, OpenAI Responses and OpenAI Chat Completions wire formats,
//! including SSE streaming, and can be told to fail in various ways.
//!
//! It runs in its own `std::thread` with its own actix `System`, so it
//! outlives any test runtime and never blocks the caller's runtime.
//!
//! This file depends only on actix-web, serde_json, futures-util and bytes,
//! and is included both as `common::fake_llm` by the integration tests and via
//! `#[path]` by the benches.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::TcpStream;
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::http::StatusCode;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use bytes::Bytes;
use futures_util::stream;
use serde_json::{json, Map, Value};

/// Known output field names scanned for in request bodies that carry no
/// JSON schema (Anthropic).
const KNOWN_FIELDS: &[&str] =
    &["flavorText", "hookText", "announcementText", "resolutionText", "greeting", "personalityNote", "mood"];

/// Text used when no known field can be found.
const FALLBACK_TEXT: &str = "Fake generated prose.";
/// Model text of [`Mode::NotJsonText`].
const NOT_JSON_TEXT: &str = "Sure! Here is your quest: ...";
/// Pause between two SSE chunks so that each is its own TCP write.
const CHUNK_PAUSE: Duration = Duration::from_millis(1);
/// How long [`Mode::Hang`] waits before (never, in practice) answering.
const HANG_FOR: Duration = Duration::from_secs(3600);

/// How the fake answers a request.
#[allow(dead_code)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// 200 with a well-formed answer.
    Ok,
    /// Waits, then answers as `Ok`.
    Delay(Duration),
    /// That status with the provider's JSON error body (529 on Anthropic is
    /// an `overloaded_error`).
    Status(u16),
    /// 429 + `retry-after` header + the provider's rate-limit error body.
    RateLimited { retry_after_secs: u64 },
    /// Accepts the request and never answers (sleeps one hour without
    /// blocking other requests).
    Hang,
    /// 200, `application/json`, truncated garbage body.
    GarbageJson,
    /// 200, well-formed wire answer whose model text is `{"unexpected":1}`.
    SchemaInvalid,
    /// 200, well-formed wire answer whose model text is not JSON.
    NotJsonText,
    /// 200, well-formed wire answer whose model text is exactly this.
    Text(String),
    /// 401 whose error message repeats the received API key.
    EchoKey,
    /// That status with the provider's JSON error body carrying this message.
    StatusMessage { status: u16, message: String },
    /// Non-streaming only: 200 with the model's refusal (Anthropic `stop_reason: "refusal"`,
    /// a Responses `refusal` part, a Chat `message.refusal`).
    Refusal,
    /// Streaming only: sends that many text deltas, then drops the
    /// connection without the final events. Non-streaming: as `Ok`.
    CutStream { after_chunks: usize },
    /// Streaming only: sends that many text deltas, then the provider's
    /// mid-stream error event, and ends. Non-streaming: as `Ok`.
    StreamError { after_chunks: usize },
    /// Streaming only: sends that many text deltas, then goes silent with
    /// the connection open (never ends). Non-streaming: as `Ok`.
    StallStream { after_chunks: usize },
    /// Streaming only: sends that many text deltas, then ends the answer
    /// normally as cut at the output-token limit (Anthropic `max_tokens`,
    /// Responses `response.incomplete`, Chat `length`), with usage.
    /// Non-streaming: as `Ok`.
    MaxTokens { after_chunks: usize },
}

/// Token counts reported instead of the automatic ones (see [`FakeLlm::set_usage`]).
#[allow(dead_code)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FakeUsage {
    /// Uncached input tokens (Anthropic `input_tokens`; OpenAI: total minus cached).
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    /// Anthropic `cache_creation_input_tokens` (other providers have none).
    pub cache_write: u64,
}

/// One request received by the fake.
#[allow(dead_code)]
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Request path, without the query string (e.g. `/v1/messages`).
    pub path: String,
    /// Headers by lowercased name; repeated headers are joined with `", "`.
    pub headers: HashMap<String, String>,
    /// The body parsed as JSON, `Value::Null` if it is not JSON.
    pub body: Value,
    /// The body as text (lossy UTF-8).
    pub raw_body: String,
    /// When the request arrived.
    pub at: std::time::Instant,
}

#[allow(dead_code)]
impl Recorded {
    /// The value of a header (name is case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(&name.to_ascii_lowercase()).map(String::as_str)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Provider {
    Anthropic,
    Responses,
    Chat,
}

impl Provider {
    fn from_path(path: &str) -> Option<Provider> {
        match path.trim_end_matches('/') {
            "/v1/messages" => Some(Provider::Anthropic),
            "/v1/responses" => Some(Provider::Responses),
            "/v1/chat/completions" => Some(Provider::Chat),
            _ => None,
        }
    }
}

struct Inner {
    default_mode: Mode,
    queued: VecDeque<Mode>,
    text: Option<String>,
    stream_chunks: Option<Vec<String>>,
    /// Pause between two SSE chunks (`None`: [`CHUNK_PAUSE`]).
    chunk_pause: Option<Duration>,
    usage: Option<FakeUsage>,
    /// Chat Completions streams carry `"choices": null` chunks.
    chat_null_choices: bool,
    requests: Vec<Recorded>,
    seen_prompts: HashSet<(Provider, String)>,
}

struct Shared {
    inner: Mutex<Inner>,
    /// Requests being answered now, and the most there ever were at once.
    in_flight: std::sync::atomic::AtomicUsize,
    max_in_flight: std::sync::atomic::AtomicUsize,
    /// Streamed answers the client stopped reading before their end (connection closed).
    streams_cut_by_client: std::sync::atomic::AtomicUsize,
}

/// Counts a request as in flight until its answer (or its cancellation) drops it.
struct InFlight<'a>(&'a Shared);

impl<'a> InFlight<'a> {
    fn enter(shared: &'a Shared) -> Self {
        use std::sync::atomic::Ordering::SeqCst;
        let now = shared.in_flight.fetch_add(1, SeqCst) + 1;
        shared.max_in_flight.fetch_max(now, SeqCst);
        InFlight(shared)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking test must not poison the fake for everyone else.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Handle on a running fake LLM server. Dropping it stops the server.
#[allow(dead_code)]
pub struct FakeLlm {
    port: u16,
    shared: Arc<Shared>,
    handle: ServerHandle,
    thread: Mutex<Option<(JoinHandle<()>, mpsc::Receiver<()>)>>,
}

#[allow(dead_code)]
impl FakeLlm {
    /// Starts the server on 127.0.0.1:0 in its own thread with its own actix
    /// `System`. Returns once it accepts connections.
    pub fn start() -> FakeLlm {
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                default_mode: Mode::Ok,
                queued: VecDeque::new(),
                text: None,
                stream_chunks: None,
                chunk_pause: None,
                usage: None,
                chat_null_choices: false,
                requests: Vec::new(),
                seen_prompts: HashSet::new(),
            }),
            in_flight: Default::default(),
            max_in_flight: Default::default(),
            streams_cut_by_client: Default::default(),
        });
        let (ready_tx, ready_rx) = mpsc::channel::<(u16, ServerHandle)>();
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let app_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("fake-llm".into())
            .spawn(move || {
                let system = actix_web::rt::System::new();
                let result = system.block_on(async move {
                    let data = web::Data::from(app_shared);
                    let server = HttpServer::new(move || {
                        App::new()
                            .app_data(data.clone())
                            .app_data(web::PayloadConfig::new(64 * 1024 * 1024))
                            .default_service(web::to(handle_request))
                    })
                    .workers(2)
                    .tcp_nodelay(true)
                    .disable_signals()
                    .shutdown_timeout(1)
                    .bind(("127.0.0.1", 0))?;
                    let port = server
                        .addrs()
                        .first()
                        .map(|a| a.port())
                        .ok_or_else(|| std::io::Error::other("fake llm: no bound address"))?;
                    let running = server.run();
                    let _ = ready_tx.send((port, running.handle()));
                    running.await
                });
                if let Err(e) = result {
                    eprintln!("fake llm server error: {e}");
                }
                let _ = done_tx.send(());
            })
            .expect("fake llm: spawn server thread");
        let (port, handle) = ready_rx.recv_timeout(Duration::from_secs(30)).expect("fake llm: server did not start");
        // The socket listens as soon as it is bound; make sure the accept loop
        // is really up before handing the server out.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "fake llm: server does not accept connections");
            std::thread::sleep(Duration::from_millis(5));
        }
        FakeLlm { port, shared, handle, thread: Mutex::new(Some((thread, done_rx))) }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:{port}` (Anthropic clients append `/v1/messages`).
    pub fn anthropic_base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:{port}/v1` (OpenAI clients append `/responses` or
    /// `/chat/completions`).
    pub fn openai_base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    /// Default mode for every following request (after queued modes).
    pub fn set_mode(&self, mode: Mode) {
        self.shared.lock().default_mode = mode;
    }

    /// One-shot modes consumed in order before the default applies.
    pub fn push_modes(&self, modes: impl IntoIterator<Item = Mode>) {
        self.shared.lock().queued.extend(modes);
    }

    /// Drops the one-shot modes not yet consumed.
    pub fn clear_queued_modes(&self) {
        self.shared.lock().queued.clear();
    }

    /// The model's answer text; `None` = automatic (JSON built from the
    /// schema's required fields or known field names in the request).
    pub fn set_text(&self, text: Option<String>) {
        self.shared.lock().text = text;
    }

    /// For streaming: the text deltas to send (their concatenation is the
    /// full answer text). An empty vector restores the default (the answer
    /// text split into ~4 pieces).
    pub fn set_stream_chunks(&self, chunks: Vec<String>) {
        self.shared.lock().stream_chunks = if chunks.is_empty() { None } else { Some(chunks) };
    }

    /// Pause between two streamed chunks (slow streams); `None` restores the default.
    pub fn set_chunk_pause(&self, pause: Option<Duration>) {
        self.shared.lock().chunk_pause = pause;
    }

    /// Token counts every answer reports; `None` restores the automatic ones
    /// (from the body and text lengths, cache reads for a repeated system prompt).
    pub fn set_usage(&self, usage: Option<FakeUsage>) {
        self.shared.lock().usage = usage;
    }

    /// Chat Completions streams: a keep-alive chunk with `"choices": null`
    /// before the first delta, and the usage chunk with `"choices": null`
    /// instead of `[]` (as some compatible servers send).
    pub fn set_chat_null_choices(&self, on: bool) {
        self.shared.lock().chat_null_choices = on;
    }

    /// Every request received, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.lock().requests.clone()
    }

    pub fn request_count(&self) -> usize {
        self.shared.lock().requests.len()
    }

    /// The most requests that were being answered at the same time (a
    /// streamed answer counts until its headers are sent).
    /// Streamed answers whose client went away before their last event.
    pub fn streams_cut_by_client(&self) -> usize {
        self.shared.streams_cut_by_client.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn max_in_flight(&self) -> usize {
        self.shared.max_in_flight.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Forgets the recorded requests (not the prompt-cache state).
    pub fn reset_requests(&self) {
        self.shared.lock().requests.clear();
    }

    /// Forgets which system prompts were seen, so the next request with any
    /// system prompt reports no cached tokens again.
    pub fn reset_prompt_cache(&self) {
        self.shared.lock().seen_prompts.clear();
    }

    /// Stops the server (non-graceful: open connections, including hanging
    /// ones, are dropped) and waits up to 5 s for its thread to end.
    /// Idempotent; also done on drop.
    pub fn stop(&self) {
        let taken = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some((thread, done)) = taken {
            // The command is sent synchronously; the returned future only
            // reports completion.
            drop(self.handle.stop(false));
            if done.recv_timeout(Duration::from_secs(5)).is_ok() {
                let _ = thread.join();
            }
        }
    }
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------
// Request handling
// ---------------------------------------------------------------------------

async fn handle_request(req: HttpRequest, body: Bytes, shared: web::Data<Shared>) -> HttpResponse {
    let _in_flight = InFlight::enter(&shared);
    let raw_body = String::from_utf8_lossy(&body).into_owned();
    let json_body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut headers: HashMap<String, String> = HashMap::new();
    for (name, value) in req.headers().iter() {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers
            .entry(name.as_str().to_ascii_lowercase())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
    let path = req.path().to_string();

    let mode = {
        let mut inner = shared.lock();
        inner.requests.push(Recorded {
            path: path.clone(),
            headers: headers.clone(),
            body: json_body.clone(),
            raw_body: raw_body.clone(),
            at: std::time::Instant::now(),
        });
        let next = inner.queued.pop_front();
        next.unwrap_or_else(|| inner.default_mode.clone())
    };

    let provider = match Provider::from_path(&path) {
        Some(p) if req.method() == actix_web::http::Method::POST => p,
        _ => {
            return HttpResponse::NotFound().json(json!({
                "error": {"message": format!("fake llm: no route for {} {}", req.method(), path),
                          "type": "not_found_error", "code": null}
            }))
        }
    };

    match mode {
        Mode::Hang => {
            actix_web::rt::time::sleep(HANG_FOR).await;
            error_response(provider, 504, "fake llm: hang ended")
        }
        Mode::Delay(d) => {
            actix_web::rt::time::sleep(d).await;
            answer(provider, &mode, &json_body, &raw_body, &shared)
        }
        Mode::Status(code) => error_response(provider, code, "fake llm: injected failure"),
        Mode::StatusMessage { status, message } => error_response(provider, status, &message),
        Mode::Refusal => refusal_response(provider, &json_body),
        Mode::RateLimited { retry_after_secs } => {
            let body = match provider {
                Provider::Anthropic => json!({
                    "type": "error",
                    "error": {"type": "rate_limit_error",
                              "message": "This request would exceed your rate limit (fake)."}
                }),
                Provider::Responses | Provider::Chat => json!({
                    "error": {"message": "Rate limit reached for requests (fake).",
                              "type": "requests", "code": "rate_limit_exceeded"}
                }),
            };
            HttpResponse::TooManyRequests()
                .insert_header(("retry-after", retry_after_secs.to_string()))
                .insert_header(("request-id", "req_fake"))
                .json(body)
        }
        Mode::EchoKey => {
            let key = headers
                .get("x-api-key")
                .cloned()
                .or_else(|| {
                    headers.get("authorization").map(|a| {
                        a.strip_prefix("Bearer ").or_else(|| a.strip_prefix("bearer ")).unwrap_or(a).to_string()
                    })
                })
                .unwrap_or_default();
            let body = match provider {
                Provider::Anthropic => json!({
                    "type": "error",
                    "error": {"type": "authentication_error",
                              "message": format!("invalid x-api-key: {key}")}
                }),
                Provider::Responses | Provider::Chat => json!({
                    "error": {"message": format!("Incorrect API key provided: {key}."),
                              "type": "invalid_request_error", "code": "invalid_api_key"}
                }),
            };
            HttpResponse::Unauthorized().json(body)
        }
        Mode::GarbageJson => {
            HttpResponse::Ok().content_type("application/json").body("{\"id\": \"msg_01\", \"content\": [")
        }
        Mode::Ok
        | Mode::SchemaInvalid
        | Mode::NotJsonText
        | Mode::Text(_)
        | Mode::CutStream { .. }
        | Mode::StreamError { .. }
        | Mode::StallStream { .. }
        | Mode::MaxTokens { .. } => answer(provider, &mode, &json_body, &raw_body, &shared),
    }
}

/// A 200 answer in which the model refuses.
fn refusal_response(provider: Provider, body: &Value) -> HttpResponse {
    let model = body.get("model").and_then(Value::as_str).unwrap_or("fake-model");
    let refusal = "I can't help with that request.";
    let json = match provider {
        Provider::Anthropic => json!({
            "id": "msg_fake_refusal", "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": "refusal", "stop_sequence": null,
            "usage": {"input_tokens": 10, "output_tokens": 0}
        }),
        Provider::Responses => json!({
            "id": "resp_fake_refusal", "object": "response", "status": "completed", "model": model,
            "output": [{"type": "message", "role": "assistant",
                        "content": [{"type": "refusal", "refusal": refusal}]}],
            "usage": {"input_tokens": 10, "output_tokens": 7}
        }),
        Provider::Chat => json!({
            "id": "chatcmpl-fake-refusal", "object": "chat.completion", "model": model,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": null, "refusal": refusal}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 7}
        }),
    };
    HttpResponse::Ok().insert_header(("request-id", "req_fake")).json(json)
}

/// The provider's JSON error response for `status`.
fn error_response(provider: Provider, status: u16, message: &str) -> HttpResponse {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = match provider {
        Provider::Anthropic => {
            let kind = match status {
                400 => "invalid_request_error",
                401 => "authentication_error",
                403 => "permission_error",
                404 => "not_found_error",
                413 => "request_too_large",
                429 => "rate_limit_error",
                529 => "overloaded_error",
                _ => "api_error",
            };
            let message = if status == 529 { "Overloaded" } else { message };
            json!({"type": "error", "error": {"type": kind, "message": message}})
        }
        Provider::Responses | Provider::Chat => {
            let kind = if (400..500).contains(&status) { "invalid_request_error" } else { "server_error" };
            json!({"error": {"message": message, "type": kind, "code": null}})
        }
    };
    HttpResponse::build(code).insert_header(("request-id", "req_fake")).json(body)
}

/// Token counts of one answer.
struct Usage {
    input: u64,
    output: u64,
    cached: u64,
    cache_write: u64,
}

/// A successful answer (streaming or not).
fn answer(provider: Provider, mode: &Mode, body: &Value, raw_body: &str, shared: &web::Data<Shared>) -> HttpResponse {
    let streaming = body.get("stream").and_then(Value::as_bool) == Some(true);
    let model = body.get("model").and_then(Value::as_str).unwrap_or("fake-model").to_string();
    let system = system_prompt(provider, body);

    let (text, chunks, cached_before, pause, fixed_usage, null_choices) = {
        let mut inner = shared.lock();
        let pause = inner.chunk_pause.unwrap_or(CHUNK_PAUSE);
        let (text, chunks) = match mode {
            Mode::SchemaInvalid => {
                let t = "{\"unexpected\":1}".to_string();
                let c = split_chunks(&t);
                (t, c)
            }
            Mode::NotJsonText => {
                let t = NOT_JSON_TEXT.to_string();
                let c = split_chunks(&t);
                (t, c)
            }
            Mode::Text(t) => (t.clone(), split_chunks(t)),
            _ => match (&inner.stream_chunks, &inner.text) {
                (Some(chunks), _) if streaming => (chunks.concat(), chunks.clone()),
                (_, Some(t)) => (t.clone(), split_chunks(t)),
                (_, None) => {
                    let t = automatic_text(provider, body, raw_body);
                    let c = split_chunks(&t);
                    (t, c)
                }
            },
        };
        let seen = !inner.seen_prompts.insert((provider, system));
        (text, chunks, seen, pause, inner.usage, inner.chat_null_choices)
    };

    let input = (raw_body.len() / 4) as u64;
    let usage = match fixed_usage {
        // OpenAI counts cached tokens inside the input; Anthropic apart from it.
        Some(u) if provider == Provider::Anthropic => {
            Usage { input: u.input, output: u.output, cached: u.cache_read, cache_write: u.cache_write }
        }
        Some(u) => Usage { input: u.input + u.cache_read, output: u.output, cached: u.cache_read, cache_write: 0 },
        None => Usage {
            input,
            output: text.len().div_ceil(4) as u64,
            cached: if cached_before { input / 2 } else { 0 },
            cache_write: 0,
        },
    };

    if !streaming {
        let json = match provider {
            Provider::Anthropic => anthropic_message(&model, &text, &usage),
            Provider::Responses => responses_object(&model, &text, &usage),
            Provider::Chat => chat_completion(&model, &text, &usage),
        };
        return HttpResponse::Ok().insert_header(("request-id", "req_fake")).json(json);
    }

    let include_usage = body.pointer("/stream_options/include_usage").and_then(Value::as_bool) == Some(true);
    let events = match provider {
        Provider::Anthropic => anthropic_events(&model, &chunks, &usage, mode),
        Provider::Responses => responses_events(&model, &text, &chunks, &usage, mode),
        Provider::Chat => chat_events(&model, &chunks, &usage, mode, include_usage, null_choices),
    };
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        .insert_header(("request-id", "req_fake"))
        .streaming(sse_stream(events, pause, shared.clone().into_inner()))
}

/// The system prompt of a request, as a cache key.
fn system_prompt(provider: Provider, body: &Value) -> String {
    let from_messages = |key: &str| -> String {
        body.get(key)
            .and_then(Value::as_array)
            .map(|msgs| {
                msgs.iter()
                    .filter(|m| matches!(m.get("role").and_then(Value::as_str), Some("system") | Some("developer")))
                    .map(|m| m.get("content").cloned().unwrap_or(Value::Null).to_string())
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default()
    };
    match provider {
        Provider::Anthropic => body.get("system").map(Value::to_string).unwrap_or_default(),
        Provider::Responses => {
            let instructions = body.get("instructions").map(Value::to_string).unwrap_or_default();
            format!("{instructions}\n{}", from_messages("input"))
        }
        Provider::Chat => from_messages("messages"),
    }
}

/// The automatic answer text: a JSON object with the required fields.
fn automatic_text(provider: Provider, body: &Value, raw_body: &str) -> String {
    let schema = match provider {
        Provider::Responses => body.pointer("/text/format/schema"),
        Provider::Chat => body.pointer("/response_format/json_schema/schema"),
        Provider::Anthropic => None,
    };
    let required: Vec<String> = schema
        .and_then(|s| s.get("required"))
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default();

    let mut object = Map::new();
    if !required.is_empty() {
        let properties = schema.and_then(|s| s.get("properties"));
        for field in &required {
            let prop = properties.and_then(|p| p.get(field));
            object.insert(field.clone(), value_for(field, prop));
        }
    } else {
        for field in KNOWN_FIELDS {
            if contains_word(raw_body, field) {
                object.insert(field.to_string(), value_for(field, None));
            }
        }
    }
    if object.is_empty() {
        FALLBACK_TEXT.to_string()
    } else {
        Value::Object(object).to_string()
    }
}

/// The value for one field: "Fake {field} for the adventure." ("happy" for
/// `mood`), adapted to the schema's enum or type when one is given.
fn value_for(field: &str, prop: Option<&Value>) -> Value {
    let default = if field == "mood" { "happy".to_string() } else { format!("Fake {field} for the adventure.") };
    let Some(prop) = prop else {
        return Value::String(default);
    };
    if let Some(options) = prop.get("enum").and_then(Value::as_array) {
        if options.iter().any(|o| o.as_str() == Some(default.as_str())) {
            return Value::String(default);
        }
        if let Some(first) = options.first() {
            return first.clone();
        }
    }
    let ty = match prop.get("type") {
        Some(Value::String(t)) => t.as_str(),
        // e.g. ["string", "null"]
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).find(|t| *t != "null").unwrap_or("string"),
        _ => "string",
    };
    match ty {
        "integer" | "number" => json!(1),
        "boolean" => json!(true),
        "array" => json!([]),
        "object" => json!({}),
        _ => Value::String(default),
    }
}

/// Whether `word` occurs in `haystack` not surrounded by identifier chars.
fn contains_word(haystack: &str, word: &str) -> bool {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    haystack.match_indices(word).any(|(i, _)| {
        let before = haystack[..i].chars().next_back();
        let after = haystack[i + word.len()..].chars().next();
        !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
    })
}

/// Splits `text` into 4 nearly equal pieces on char boundaries (fewer if it
/// has fewer than 4 chars, none if empty).
fn split_chunks(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let pieces = chars.len().min(4);
    (0..pieces)
        .map(|i| {
            let start = i * chars.len() / pieces;
            let end = (i + 1) * chars.len() / pieces;
            chars[start..end].iter().collect()
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Non-streaming wire objects
// ---------------------------------------------------------------------------

fn anthropic_message(model: &str, text: &str, usage: &Usage) -> Value {
    json!({
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": null,
        "usage": {
            "input_tokens": usage.input,
            "output_tokens": usage.output,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": usage.cached
        }
    })
}

fn responses_object(model: &str, text: &str, usage: &Usage) -> Value {
    json!({
        "id": "resp_fake",
        "object": "response",
        "created_at": 0,
        "status": "completed",
        "model": model,
        "output": [
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {
                "type": "message",
                "id": "msg_1",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}]
            }
        ],
        "usage": {
            "input_tokens": usage.input,
            "input_tokens_details": {"cached_tokens": usage.cached},
            "output_tokens": usage.output,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": usage.input + usage.output
        }
    })
}

fn chat_completion(model: &str, text: &str, usage: &Usage) -> Value {
    json!({
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": "stop"
        }],
        "usage": {
            "prompt_tokens": usage.input,
            "completion_tokens": usage.output,
            "total_tokens": usage.input + usage.output,
            "prompt_tokens_details": {"cached_tokens": usage.cached}
        }
    })
}

// ---------------------------------------------------------------------------
// Streaming
// ---------------------------------------------------------------------------

/// One piece of an SSE body.
enum Piece {
    /// Bytes written as their own chunk.
    Data(String),
    /// Drop the connection (the body stream fails, so the server closes the
    /// connection without the terminating chunk).
    Cut,
    /// Send nothing more and keep the connection open.
    Stall,
}

fn event(name: &str, data: &Value) -> Piece {
    Piece::Data(format!("event: {name}\ndata: {data}\n\n"))
}

fn data_line(data: &Value) -> Piece {
    Piece::Data(format!("data: {data}\n\n"))
}

/// The deltas to send and what follows them.
enum Tail {
    Finish,
    Cut,
    Error,
    Stall,
    MaxTokens,
}

fn plan<'a>(chunks: &'a [String], mode: &Mode) -> (&'a [String], Tail) {
    match *mode {
        Mode::CutStream { after_chunks } => (&chunks[..after_chunks.min(chunks.len())], Tail::Cut),
        Mode::StreamError { after_chunks } => (&chunks[..after_chunks.min(chunks.len())], Tail::Error),
        Mode::StallStream { after_chunks } => (&chunks[..after_chunks.min(chunks.len())], Tail::Stall),
        Mode::MaxTokens { after_chunks } => (&chunks[..after_chunks.min(chunks.len())], Tail::MaxTokens),
        _ => (chunks, Tail::Finish),
    }
}

fn anthropic_events(model: &str, chunks: &[String], usage: &Usage, mode: &Mode) -> Vec<Piece> {
    let (deltas, tail) = plan(chunks, mode);
    let mut out = vec![
        event(
            "message_start",
            &json!({
                "type": "message_start",
                "message": {
                    "id": "msg_fake",
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [],
                    "stop_reason": null,
                    "stop_sequence": null,
                    "usage": {
                        "input_tokens": usage.input,
                        "output_tokens": 1,
                        "cache_creation_input_tokens": usage.cache_write,
                        "cache_read_input_tokens": usage.cached
                    }
                }
            }),
        ),
        event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0,
                    "content_block": {"type": "text", "text": ""}}),
        ),
        event("ping", &json!({"type": "ping"})),
    ];
    for d in deltas {
        out.push(event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": d}}),
        ));
    }
    match tail {
        Tail::Cut => out.push(Piece::Cut),
        Tail::Stall => out.push(Piece::Stall),
        Tail::Error => out.push(event(
            "error",
            &json!({"type": "error",
                    "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        )),
        Tail::Finish | Tail::MaxTokens => {
            let stop_reason = if matches!(tail, Tail::MaxTokens) { "max_tokens" } else { "end_turn" };
            out.push(event("content_block_stop", &json!({"type": "content_block_stop", "index": 0})));
            out.push(event(
                "message_delta",
                &json!({"type": "message_delta",
                        "delta": {"stop_reason": stop_reason, "stop_sequence": null},
                        "usage": {"output_tokens": usage.output}}),
            ));
            out.push(event("message_stop", &json!({"type": "message_stop"})));
        }
    }
    out
}

fn responses_events(model: &str, text: &str, chunks: &[String], usage: &Usage, mode: &Mode) -> Vec<Piece> {
    let (deltas, tail) = plan(chunks, mode);
    let mut seq = 0u64;
    let mut next_seq = || {
        seq += 1;
        seq - 1
    };
    let in_progress = json!({
        "id": "resp_fake",
        "object": "response",
        "created_at": 0,
        "status": "in_progress",
        "model": model,
        "output": [],
        "usage": null
    });
    let mut out = vec![
        event(
            "response.created",
            &json!({"type": "response.created", "sequence_number": next_seq(),
                    "response": in_progress}),
        ),
        event(
            "response.in_progress",
            &json!({"type": "response.in_progress", "sequence_number": next_seq(),
                    "response": in_progress}),
        ),
        event(
            "response.output_item.added",
            &json!({"type": "response.output_item.added", "sequence_number": next_seq(),
                    "output_index": 0,
                    "item": {"type": "message", "id": "msg_1", "status": "in_progress",
                             "role": "assistant", "content": []}}),
        ),
    ];
    for d in deltas {
        out.push(event(
            "response.output_text.delta",
            &json!({"type": "response.output_text.delta", "sequence_number": next_seq(),
                    "item_id": "msg_1", "output_index": 0, "content_index": 0, "delta": d}),
        ));
    }
    match tail {
        Tail::Cut => out.push(Piece::Cut),
        Tail::Stall => out.push(Piece::Stall),
        Tail::MaxTokens => {
            let partial: String = deltas.concat();
            let mut response = responses_object(model, &partial, usage);
            response["status"] = json!("incomplete");
            response["incomplete_details"] = json!({"reason": "max_output_tokens"});
            out.push(event(
                "response.incomplete",
                &json!({"type": "response.incomplete", "sequence_number": next_seq(), "response": response}),
            ));
        }
        Tail::Error => out.push(event(
            "response.failed",
            &json!({
                "type": "response.failed",
                "sequence_number": next_seq(),
                "response": {
                    "id": "resp_fake",
                    "object": "response",
                    "status": "failed",
                    "model": model,
                    "output": [],
                    "error": {"code": "server_error",
                              "message": "The model failed to generate a response (fake)."}
                }
            }),
        )),
        Tail::Finish => {
            out.push(event(
                "response.output_text.done",
                &json!({"type": "response.output_text.done", "sequence_number": next_seq(),
                        "item_id": "msg_1", "output_index": 0, "content_index": 0,
                        "text": text}),
            ));
            out.push(event(
                "response.output_item.done",
                &json!({"type": "response.output_item.done", "sequence_number": next_seq(),
                        "output_index": 0,
                        "item": {"type": "message", "id": "msg_1", "status": "completed",
                                 "role": "assistant",
                                 "content": [{"type": "output_text", "text": text,
                                              "annotations": []}]}}),
            ));
            out.push(event(
                "response.completed",
                &json!({"type": "response.completed", "sequence_number": next_seq(),
                        "response": responses_object(model, text, usage)}),
            ));
        }
    }
    out
}

fn chat_events(
    model: &str,
    chunks: &[String],
    usage: &Usage,
    mode: &Mode,
    include_usage: bool,
    null_choices: bool,
) -> Vec<Piece> {
    let (deltas, tail) = plan(chunks, mode);
    let chunk = |delta: Value, finish: Value| {
        let mut c = json!({
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]
        });
        if include_usage {
            c["usage"] = Value::Null;
        }
        c
    };
    let mut out = Vec::new();
    if null_choices {
        out.push(data_line(&json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0,
                                   "model": model, "choices": null})));
    }
    for (i, d) in deltas.iter().enumerate() {
        out.push(data_line(&chunk(json!({"role": "assistant", "content": d}), Value::Null)));
        if i == 0 {
            out.push(Piece::Data(": ping\n\n".to_string()));
        }
    }
    if deltas.is_empty() {
        out.push(Piece::Data(": ping\n\n".to_string()));
    }
    match tail {
        Tail::Cut => out.push(Piece::Cut),
        Tail::Stall => out.push(Piece::Stall),
        Tail::Error => out.push(data_line(&json!({
            "error": {"message": "The server had an error while processing your request (fake).",
                      "type": "server_error", "code": null}
        }))),
        Tail::Finish | Tail::MaxTokens => {
            let finish = if matches!(tail, Tail::MaxTokens) { "length" } else { "stop" };
            out.push(data_line(&chunk(json!({}), json!(finish))));
            if include_usage {
                out.push(data_line(&json!({
                    "id": "chatcmpl-fake",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": model,
                    "choices": if null_choices { Value::Null } else { json!([]) },
                    "usage": {
                        "prompt_tokens": usage.input,
                        "completion_tokens": usage.output,
                        "total_tokens": usage.input + usage.output,
                        "prompt_tokens_details": {"cached_tokens": usage.cached}
                    }
                })));
            }
            out.push(Piece::Data("data: [DONE]\n\n".to_string()));
        }
    }
    out
}

/// A body stream writing each piece as its own chunk, ~1 ms apart.
/// Counts a streamed answer as cut by its client unless it got to its end.
struct StreamEnd {
    shared: Arc<Shared>,
    reached: bool,
}

impl Drop for StreamEnd {
    fn drop(&mut self) {
        if !self.reached {
            self.shared.streams_cut_by_client.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

fn sse_stream(
    pieces: Vec<Piece>,
    pause: Duration,
    shared: Arc<Shared>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + 'static {
    let end = StreamEnd { shared, reached: false };
    stream::unfold((VecDeque::from(pieces), true, end), move |(mut pieces, first, mut end)| async move {
        let piece = pieces.pop_front()?;
        if !first {
            actix_web::rt::time::sleep(pause).await;
        }
        let item = match piece {
            Piece::Data(s) => Ok(Bytes::from(s)),
            Piece::Stall => {
                actix_web::rt::time::sleep(HANG_FOR).await;
                return None;
            }
            Piece::Cut => Err(std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "fake llm: stream cut")),
        };
        // After a cut nothing more is sent.
        if item.is_err() {
            pieces.clear();
        }
        end.reached = pieces.is_empty();
        Some((item, (pieces, false, end)))
    })
}
