//! Test harness: a real lorewire on a free port with its own database (a temp SQLite file or
//! a fresh PostgreSQL database), the fake LLM server, and WebSocket / REST clients.

pub mod fake_llm;
pub mod fake_moderation;

use std::sync::Arc;
use std::time::Duration;

use awc::ws::{CloseCode, Codec, Frame, Message};
use diesel::{Connection, RunQueryDsl};
use futures_util::{SinkExt, StreamExt};
use lorewire::app::Running;
use lorewire::core::clock::{ManualClock, SharedClock, SystemClock};
use lorewire::core::config::{Config, Secret};
use lorewire::core::rate_limit::Rate;
use lorewire::llm::providers::Provider;
use serde_json::{json, Value};

pub use fake_llm::{FakeLlm, Mode};

pub const ADMIN_TOKEN: &str = "admin-test-token";
pub const API_KEY: &str = "sk-test-CANARY-0123456789abcdef";
/// How long a test waits for something that should happen at once.
pub const WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// Runs each listed test against SQLite and against PostgreSQL.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $( #[actix_web::test] async fn $name() { super::$name($crate::common::Db::Sqlite).await } )*
        }
        mod postgres {
            $( #[actix_web::test] async fn $name() { super::$name($crate::common::Db::Postgres).await } )*
        }
    };
}

/// The Redis the suite talks to (`LOREWIRE_TEST_REDIS_URL`, default the local one).
pub fn redis_url() -> String {
    std::env::var("LOREWIRE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A Redis key prefix of one test's own, so tests share one Redis without hearing each other.
pub fn redis_prefix() -> String {
    format!("lwtest:{}:", lorewire::domain::players::new_token().get(..12).unwrap())
}

pub fn pg_admin_url() -> String {
    // No TLS and no GSSAPI on the loopback: a test process exits while pool threads may still
    // be inside libpq, and the exit-time teardown of OpenSSL (under a live TLS connection) or
    // of Kerberos (under a GSSAPI negotiation) can crash it.
    std::env::var("LOREWIRE_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test?sslmode=disable&gssencmode=disable".into())
}

/// A database of one test's own.
pub struct TestDb {
    pub url: String,
    pub pg_name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub fn new(db: Db) -> TestDb {
        match db {
            Db::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = dir.path().join("lorewire.db").to_string_lossy().into_owned();
                TestDb { url, pg_name: None, _dir: Some(dir) }
            }
            Db::Postgres => {
                let name =
                    format!("lorewire_t_{}", lorewire::domain::players::new_token().get(..16).unwrap().to_owned());
                let admin = pg_admin_url();
                let mut conn = diesel::PgConnection::establish(&admin).expect("PostgreSQL for tests");
                diesel::sql_query(format!("CREATE DATABASE {name}")).execute(&mut conn).expect("create database");
                let (base, db) = admin.rsplit_once('/').unwrap();
                let query = db.split_once('?').map(|(_, q)| format!("?{q}")).unwrap_or_default();
                TestDb { url: format!("{base}/{name}{query}"), pg_name: Some(name), _dir: None }
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(name) = &self.pg_name {
            if let Ok(mut conn) = diesel::PgConnection::establish(&pg_admin_url()) {
                let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut conn);
            }
        }
    }
}

/// Test settings on top of the spec's defaults.
pub fn test_config(db_url: &str, fake: &FakeLlm, provider: Provider) -> Config {
    let mut config = Config::with_database(db_url);
    config.bind = "127.0.0.1:0".parse().unwrap();
    config.admin_token = Some(Secret::new(ADMIN_TOKEN));
    config.llm_provider = provider;
    config.llm_model = provider.default_model().into();
    config.llm_base_url = match provider {
        Provider::Anthropic => fake.anthropic_base_url(),
        Provider::OpenAi | Provider::OpenAiChat => fake.openai_base_url(),
    };
    config.llm_api_key = Some(Secret::new(API_KEY));
    config.llm_timeout = Duration::from_secs(2);
    config.job_poll = Duration::from_millis(100);
    config.workers = 2;
    // Every test client connects from 127.0.0.1; tests of the limit set their own.
    config.identity.new_players_rate = Rate { count: 1_000_000, per: Duration::from_secs(1) };
    // Tests that fire many requests from one player set the limits they test.
    config.usage.player_daily_tokens = None;
    config.usage.player_llm_rate = Rate { count: 1_000_000, per: Duration::from_secs(1) };
    // One test player may start many REST runs; the test of the cap sets its own.
    config.identity.player_unwatched_runs = 1_000_000;
    config
}

pub struct TestApp {
    pub running: Option<Running>,
    pub addr: std::net::SocketAddr,
    pub fake: Arc<FakeLlm>,
    pub db: TestDb,
    pub clock: ManualClock,
    pub config: Config,
}

pub struct Setup {
    pub db: Db,
    pub provider: Provider,
    /// Use a clock that moves only when the test says so.
    pub manual_clock: bool,
}

impl Setup {
    pub fn new(db: Db) -> Self {
        Setup { db, provider: Provider::Anthropic, manual_clock: false }
    }
}

pub async fn spawn_app(db: Db) -> TestApp {
    spawn_with(Setup::new(db), |_| {}).await
}

pub async fn spawn_with(setup: Setup, configure: impl FnOnce(&mut Config)) -> TestApp {
    init_logs();
    let fake = Arc::new(FakeLlm::start());
    let db = actix_web::rt::task::spawn_blocking(move || TestDb::new(setup.db)).await.unwrap();
    let mut config = test_config(&db.url, &fake, setup.provider);
    configure(&mut config);
    let clock = ManualClock::new(chrono::Utc::now());
    let shared: SharedClock = if setup.manual_clock { Arc::new(clock.clone()) } else { Arc::new(SystemClock) };
    let running = lorewire::app::start(config.clone(), shared).await.expect("app starts");
    TestApp { addr: running.addr, running: Some(running), fake, db, clock, config }
}

fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt().with_env_filter("info,lorewire=debug").with_test_writer().try_init();
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Stops the app gracefully, keeping the database (for restart tests).
    pub async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
    }

    /// Starts the app again on the same database with the same settings.
    pub async fn restart(&mut self, clock: SharedClock) {
        self.stop().await;
        let mut config = self.config.clone();
        config.bind = "127.0.0.1:0".parse().unwrap();
        let running = lorewire::app::start(config, clock).await.expect("app restarts");
        self.addr = running.addr;
        self.running = Some(running);
    }

    pub async fn ws(&self) -> WsClient {
        WsClient::connect(&self.url("/ws")).await
    }

    /// A socket with a started session; returns it with its ack.
    pub async fn player(&self, nickname: &str) -> (WsClient, Value) {
        let mut ws = self.ws().await;
        ws.send(json!({"type": "session:start", "nickname": nickname})).await;
        let ack = ws.recv_type("session:ack").await;
        (ws, ack)
    }

    /// Traffic for every series of the dashboard's history: three content items from the fake
    /// upstream, a chat message (and its mood) and a charged run, from a player who stays joined
    /// (returned, with their token).
    pub async fn history_traffic(&self) -> (WsClient, String) {
        let (mut ws, ack) = self.player("Ada").await;
        let token = ack["token"].as_str().unwrap().to_owned();
        for id in 1..=3 {
            assert_eq!(self.content_final(&token, "quest", id, json!({})).await["status"], "ready");
        }
        ws.lobby_frames = true;
        ws.recv_type("presence:state").await;
        ws.send(json!({"type": "message:send", "text": "to the charts", "ref": 1})).await;
        ws.recv_type("message:new").await;
        let body = json!({"project_id": "charts", "action": "WRITE", "input": "a bell"});
        let (status, run) = post_json(&self.url("/api/generate"), &token, &body).await;
        assert_eq!(status, 202, "{run}");
        let run = self.final_run(&token, run["run_id"].as_str().unwrap()).await;
        assert_eq!(run["status"], "done", "{run}");
        assert!(run["cost_usd"].as_f64().unwrap() > 0.0, "{run}");
        (ws, token)
    }

    pub async fn player_token(&self) -> String {
        let (_ws, ack) = self.player("Rest").await;
        ack["token"].as_str().unwrap().to_owned()
    }

    pub async fn admin_get(&self, path: &str) -> (u16, Value) {
        let mut resp = http().get(self.url(path)).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().limit(1 << 20).await.unwrap_or(Value::Null))
    }

    pub async fn admin_put(&self, path: &str, body: Value) -> (u16, Value) {
        let mut resp = http().put(self.url(path)).bearer_auth(ADMIN_TOKEN).send_json(&body).await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().limit(1 << 20).await.unwrap_or(Value::Null))
    }

    /// `GET /api/runs/{run_id}`, which must answer 200.
    pub async fn run_json(&self, token: &str, run_id: &str) -> Value {
        let (status, run) = get_json(&self.url(&format!("/api/runs/{run_id}")), Some(token)).await;
        assert_eq!(status, 200, "{run}");
        run
    }

    /// The run once it has ended (neither queued nor running).
    pub async fn final_run(&self, token: &str, run_id: &str) -> Value {
        eventually("the run to end", || async {
            let run = self.run_json(token, run_id).await;
            (!matches!(run["status"].as_str(), Some("queued" | "running"))).then_some(run)
        })
        .await
    }

    /// Sets `model`'s prices (micro-dollars per million tokens) through the admin API.
    pub async fn set_price(&self, model: &str, price: &lorewire::runs::Price) {
        let usd = |micros: i64| micros as f64 / 1e6;
        let body = json!({
            "input_usd": usd(price.input),
            "output_usd": usd(price.output),
            "cache_read_usd": usd(price.cache_read),
            "cache_write_usd": usd(price.cache_write),
        });
        let (status, body) = self.admin_put(&format!("/admin/api/prices/{model}"), body).await;
        assert_eq!(status, 200, "{body}");
    }

    pub async fn admin_post(&self, path: &str) -> (u16, Value) {
        let mut resp = http().post(self.url(path)).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().limit(1 << 20).await.unwrap_or(Value::Null))
    }

    /// The circuit as the admin API shows it.
    pub async fn circuit(&self) -> Value {
        self.admin_get("/admin/api/llm").await.1["circuit"].clone()
    }

    /// Requests an item over REST and waits until it leaves pending; returns the final Content.
    pub async fn content_final(&self, token: &str, kind: &str, subject_id: u64, extra: Value) -> Value {
        let mut body = json!({"kind": kind, "subject_id": subject_id});
        if let Value::Object(extra) = extra {
            body.as_object_mut().unwrap().extend(extra);
        }
        let (status, first) = post_json(&self.url("/api/content"), token, &body).await;
        assert_eq!(status, 202, "{first}");
        let path = format!("/api/content/{kind}/{subject_id}");
        let until = std::time::Instant::now() + WAIT;
        loop {
            let (status, content) = get_json(&self.url(&path), Some(token)).await;
            assert_eq!(status, 200, "{content}");
            if content["status"] != "pending" && content["version"].as_i64() > first["version"].as_i64() {
                return content;
            }
            assert!(std::time::Instant::now() < until, "item stayed pending: {content}");
            actix_web::rt::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A server speaking `provider` upstream, with `configure` applied to its config.
pub async fn spawn_provider(db: Db, provider: Provider, configure: impl FnOnce(&mut Config)) -> TestApp {
    spawn_with(Setup { provider, ..Setup::new(db) }, configure).await
}

pub fn http() -> awc::Client {
    awc::Client::builder().timeout(Duration::from_secs(30)).finish()
}

pub async fn get_json(url: &str, token: Option<&str>) -> (u16, Value) {
    let mut req = http().get(url);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let mut resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().limit(1 << 20).await.unwrap_or(Value::Null))
}

pub async fn post_json(url: &str, token: &str, body: &Value) -> (u16, Value) {
    let mut resp = http().post(url).bearer_auth(token).send_json(body).await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().limit(1 << 20).await.unwrap_or(Value::Null))
}

/// A WebSocket client that answers the server's pings (awc does not by itself).
pub struct WsClient {
    framed: actix_codec::Framed<awc::BoxedSocket, Codec>,
    pub answer_pings: bool,
    /// Every session is in the lobby; its frames (`lobby:*`, `presence:*`, `message:*`) are
    /// skipped unless a test turns this on.
    pub lobby_frames: bool,
    /// The reason of the close frame the server sent, once it came.
    pub close_reason: Option<String>,
}

fn is_lobby_frame(frame: &Value) -> bool {
    let ty = frame["type"].as_str().unwrap_or("");
    ty.starts_with("lobby:") || ty.starts_with("presence:") || ty.starts_with("message:")
}

/// What the socket gave next.
#[derive(Debug)]
pub enum Event {
    Json(Value),
    Close(Option<u16>),
    Ping,
    Eof,
}

impl WsClient {
    pub async fn connect(url: &str) -> WsClient {
        Self::connect_with(url, None).await.expect("websocket connects")
    }

    pub async fn connect_with(url: &str, origin: Option<&str>) -> Result<WsClient, u16> {
        Self::connect_with_headers(url, origin, &[]).await
    }

    pub async fn connect_with_headers(
        url: &str,
        origin: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Result<WsClient, u16> {
        let mut req = awc::Client::builder().timeout(Duration::from_secs(10)).finish().ws(url).max_frame_size(1 << 24);
        if let Some(origin) = origin {
            req = req.origin(origin);
        }
        for (name, value) in headers {
            req = req.set_header(*name, *value);
        }
        match req.connect().await {
            Ok((_, framed)) => Ok(WsClient { framed, answer_pings: true, lobby_frames: false, close_reason: None }),
            Err(awc::error::WsClientError::InvalidResponseStatus(status)) => Err(status.as_u16()),
            Err(e) => panic!("websocket connect failed: {e}"),
        }
    }

    pub async fn send(&mut self, frame: Value) {
        self.framed.send(Message::Text(frame.to_string().into())).await.expect("send frame");
    }

    pub async fn send_raw(&mut self, msg: Message) {
        self.framed.send(msg).await.expect("send frame");
    }

    /// The next event within `wait`, or `None` when nothing came.
    pub async fn next_event(&mut self, wait: Duration) -> Option<Event> {
        let until = tokio::time::Instant::now() + wait;
        loop {
            let frame = match tokio::time::timeout_at(until, self.framed.next()).await {
                Err(_) => return None,
                Ok(None) => return Some(Event::Eof),
                Ok(Some(Err(_))) => return Some(Event::Eof),
                Ok(Some(Ok(frame))) => frame,
            };
            match frame {
                Frame::Text(bytes) => {
                    let frame: Value = serde_json::from_slice(&bytes).expect("server sends JSON");
                    if !self.lobby_frames && is_lobby_frame(&frame) {
                        continue;
                    }
                    return Some(Event::Json(frame));
                }
                Frame::Ping(payload) => {
                    if self.answer_pings {
                        let _ = self.framed.send(Message::Pong(payload)).await;
                    } else {
                        return Some(Event::Ping);
                    }
                }
                Frame::Close(reason) => {
                    self.close_reason = reason.as_ref().and_then(|r| r.description.clone());
                    return Some(Event::Close(reason.map(|r| u16::from(r.code))));
                }
                _ => {}
            }
        }
    }

    /// The next JSON frame (fails the test on anything else or after `WAIT`).
    pub async fn recv(&mut self) -> Value {
        match self.next_event(WAIT).await {
            Some(Event::Json(v)) => v,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// Skips frames until one of type `ty` arrives.
    pub async fn recv_type(&mut self, ty: &str) -> Value {
        let until = std::time::Instant::now() + WAIT;
        loop {
            let left = until.saturating_duration_since(std::time::Instant::now());
            match self.next_event(left).await {
                Some(Event::Json(v)) if v["type"] == ty => return v,
                Some(Event::Json(_)) => continue,
                other => panic!("expected {ty}, got {other:?}"),
            }
        }
    }

    /// Asserts no JSON frame arrives within `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        if let Some(Event::Json(v)) = self.next_event(wait).await {
            panic!("expected no frame, got {v}");
        }
    }

    /// Waits for the close frame and returns its code.
    pub async fn expect_close(&mut self) -> Option<u16> {
        let until = std::time::Instant::now() + WAIT;
        loop {
            let left = until.saturating_duration_since(std::time::Instant::now());
            match self.next_event(left).await {
                Some(Event::Close(code)) => return code,
                Some(Event::Eof) => return None,
                Some(_) => continue,
                None => panic!("socket was not closed"),
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.framed.send(Message::Close(Some(CloseCode::Normal.into()))).await;
    }
}

/// Waits until `check` returns `Some`, polling; fails after `WAIT`.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let until = std::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(std::time::Instant::now() < until, "timed out waiting for {what}");
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
}
