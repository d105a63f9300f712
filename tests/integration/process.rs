//! The real binary: CLI, kill -9 and restart, and the API key never leaking anywhere.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{eventually, get_json, http, post_json, Db, FakeLlm, Mode, TestDb, WsClient, ADMIN_TOKEN, API_KEY};

const BIN: &str = env!("CARGO_BIN_EXE_lorewire");

/// A `lorewire` process with its output captured.
pub(crate) struct Server {
    child: Child,
    port: u16,
    output: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    _cwd: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn command(db_url: &str, fake: &FakeLlm) -> (Command, tempfile::TempDir) {
    let cwd = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(BIN);
    cmd.current_dir(cwd.path())
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("OPENAI_API_KEY")
        .env("DATABASE_URL", db_url)
        .env("LOREWIRE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("LOREWIRE_LLM_PROVIDER", "anthropic")
        .env("LOREWIRE_LLM_BASE_URL", fake.anthropic_base_url())
        .env("LOREWIRE_LLM_API_KEY", API_KEY)
        .env("LOREWIRE_LLM_TIMEOUT_SECS", "3")
        .env("LOREWIRE_JOB_LEASE_SECS", "2")
        .env("RUST_LOG", "debug");
    (cmd, cwd)
}

impl Server {
    async fn start(db_url: &str, fake: &FakeLlm) -> Server {
        Self::start_with(db_url, fake, &[]).await
    }

    pub(crate) async fn start_with(db_url: &str, fake: &FakeLlm, env: &[(&str, &str)]) -> Server {
        Self::start_changed(db_url, fake, env, &[]).await
    }

    /// As [`Server::start_with`], with the variables in `unset` removed from the environment.
    async fn start_changed(db_url: &str, fake: &FakeLlm, env: &[(&str, &str)], unset: &[&str]) -> Server {
        let (mut cmd, cwd) = command(db_url, fake);
        cmd.envs(env.iter().copied());
        for var in unset {
            cmd.env_remove(var);
        }
        let port = free_port();
        cmd.env("LOREWIRE_BIND", format!("127.0.0.1:{port}"));
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("binary starts");
        let output = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        for (reader, apart) in [
            (Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>, None),
            (Box::new(child.stderr.take().unwrap()), Some(stderr.clone())),
        ] {
            let output = output.clone();
            std::thread::spawn(move || {
                // Bytes, not UTF-8 lines: a test must see exactly what the process wrote.
                let mut reader = BufReader::new(reader);
                let mut line = Vec::new();
                while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
                    let text = String::from_utf8_lossy(&line);
                    let text = text.trim_end_matches('\n');
                    for out in std::iter::once(&output).chain(apart.as_ref()) {
                        let mut out = out.lock().unwrap();
                        out.push_str(text);
                        out.push('\n');
                    }
                    line.clear();
                }
            });
        }
        let server = Server { child, port, output, stderr, _cwd: cwd };
        let url = server.url("/health");
        eventually("the binary to serve", || {
            let url = url.clone();
            async move {
                let resp = http().get(&url).timeout(Duration::from_millis(300)).send().await.ok()?;
                resp.status().is_success().then_some(())
            }
        })
        .await;
        server
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub(crate) fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().unwrap();
    }

    /// What the process wrote on stdout and stderr, one line after another.
    pub(crate) fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// What the process wrote on stderr (its log).
    pub(crate) fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Polls a content item until it leaves pending.
    pub(crate) async fn final_content(&self, token: &str, path: &str) -> Value {
        let url = self.url(path);
        eventually("the item to leave pending", || {
            let url = url.clone();
            async move {
                let (_, c) = get_json(&url, Some(token)).await;
                (c["status"] != "pending").then_some(c)
            }
        })
        .await
    }

    pub(crate) async fn player(&self) -> (WsClient, String) {
        let mut ws = WsClient::connect(&self.url("/ws")).await;
        ws.send(json!({"type": "session:start", "nickname": "Proc"})).await;
        let ack = ws.recv_type("session:ack").await;
        (ws, ack["token"].as_str().unwrap().to_owned())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) async fn test_db(db: Db) -> TestDb {
    actix_web::rt::task::spawn_blocking(move || TestDb::new(db)).await.unwrap()
}

async fn kill_9_and_restart_leaves_nothing_pending(db: Db) {
    let fake = FakeLlm::start();
    fake.set_mode(Mode::Hang);
    let db = test_db(db).await;
    let mut server = Server::start(&db.url, &fake).await;
    let (_ws, token) = server.player().await;
    for id in 1..=5 {
        let (status, _) =
            post_json(&server.url("/api/content"), &token, &json!({"kind": "quest", "subject_id": id})).await;
        assert_eq!(status, 202);
    }
    eventually("the upstream calls to be in flight", || async { (fake.request_count() >= 5).then_some(()) }).await;
    server.kill9();

    fake.set_mode(Mode::Ok);
    let server = Server::start(&db.url, &fake).await;
    for id in 1..=5 {
        let content = server.final_content(&token, &format!("/api/content/quest/{id}")).await;
        assert_eq!(content["status"], "ready", "{content}");
    }
}

/// A lobby message whose mood call was in flight when the process died gets its mood after
/// the restart.
async fn kill_9_leaves_no_mood_pending(db: Db) {
    let fake = FakeLlm::start();
    fake.set_mode(Mode::Hang);
    let db = test_db(db).await;
    let mut server = Server::start(&db.url, &fake).await;
    let (mut ws, _) = server.player().await;
    ws.lobby_frames = true;
    // Joined first: a message stored before the join's history is read arrives in the history
    // instead of as `message:new`.
    ws.recv_type("presence:state").await;
    ws.send(json!({"type": "message:send", "text": "still there?"})).await;
    let sent = ws.recv_type("message:new").await;
    eventually("the mood call to be in flight", || async { (fake.request_count() >= 1).then_some(()) }).await;
    server.kill9();

    fake.set_mode(Mode::Ok);
    let server = Server::start(&db.url, &fake).await;
    let settled = eventually("the mood to settle after the restart", || async {
        let (mut ws, _) = server.player().await;
        ws.lobby_frames = true;
        let history = ws.recv_type("lobby:history").await;
        let m = history["messages"][0].clone();
        (m["mood_status"] != "pending").then_some(m)
    })
    .await;
    assert_eq!(settled["id"], sent["message"]["id"]);
    assert_eq!((settled["mood"].as_str(), settled["mood_status"].as_str()), (Some("happy"), Some("ready")));
}

/// The key never appears in a frame, a response, or a log line (even when the provider
/// echoes it back in an error).
async fn api_key_never_leaks(db: Db) {
    let fake = FakeLlm::start();
    fake.set_mode(Mode::EchoKey);
    let db = test_db(db).await;
    let server = Server::start(&db.url, &fake).await;
    let mut seen = String::new();

    let (mut ws, token) = server.player().await;
    ws.send(json!({"type": "content:request", "kind": "npc", "subject_id": 1})).await;
    seen.push_str(&ws.recv().await.to_string());
    let update = ws.recv_type("content:update").await;
    assert_eq!(update["content"]["reason"], "api_error_401");
    seen.push_str(&update.to_string());

    let admin = |path: &str| http().get(server.url(path)).bearer_auth(ADMIN_TOKEN);
    let mut resp = admin("/admin/api/llm").send().await.unwrap();
    let llm: Value = resp.json().await.unwrap();
    assert_eq!(llm["api_key_set"], true);
    assert_eq!(llm["api_key_last4"], &API_KEY[API_KEY.len() - 4..]);
    assert!(llm["last_error"].as_str().unwrap().contains("[redacted]"), "{llm}");
    seen.push_str(&llm.to_string());

    let second_key = "sk-second-CANARY-fedcba9876543210";
    let mut resp = http()
        .put(server.url("/admin/api/llm"))
        .bearer_auth(ADMIN_TOKEN)
        .send_json(&json!({"api_key": second_key}))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    seen.push_str(&String::from_utf8_lossy(&resp.body().await.unwrap()));
    ws.send(json!({"type": "content:request", "kind": "npc", "subject_id": 2})).await;
    seen.push_str(&ws.recv_type("content:update").await.to_string());
    assert_eq!(fake.requests().last().unwrap().headers["x-api-key"], second_key);

    for path in ["/admin/api/llm", "/metrics", "/health", "/ready"] {
        let mut resp = admin(path).send().await.unwrap();
        seen.push_str(&String::from_utf8_lossy(&resp.body().await.unwrap()));
    }
    let (_, content) = get_json(&server.url("/api/content/npc/1"), Some(&token)).await;
    seen.push_str(&content.to_string());

    // Every request is logged with its method, path and status (tests/integration/logs.rs has the
    // rest); the last line may still be on its way through the pipe when the response is here.
    let requests = [("GET", "/admin/api/llm"), ("PUT", "/admin/api/llm"), ("GET", "/api/content/npc/1")];
    let logged = |logs: &str, (method, path): (&str, &str)| {
        let request = format!("method={method} path={path} ");
        logs.lines().any(|l| l.contains(" INFO ") && l.contains(&request) && l.contains("status=200"))
    };
    let logs = eventually("every request to be logged", || {
        let logs = server.output();
        async move { requests.iter().all(|r| logged(&logs, *r)).then_some(logs) }
    })
    .await;
    assert!(logs.contains("upstream call failed"), "logs were captured: {logs}");
    for key in [API_KEY, second_key] {
        assert!(!seen.contains(key), "the key reached a client: {seen}");
        assert!(!logs.contains(key), "the key reached the logs");
        assert!(!logs.contains(&key[3..]), "part of the key reached the logs");
    }
}

/// SIGTERM: sockets get 1001, unfinished work goes back to the queue, and the process exits
/// within `LOREWIRE_SHUTDOWN_SECS`; the next process finishes the work.
async fn sigterm_drains_and_hands_work_back(db: Db) {
    let fake = FakeLlm::start();
    fake.set_mode(Mode::Hang);
    let db = test_db(db).await;
    let mut server = Server::start_with(&db.url, &fake, &[("LOREWIRE_SHUTDOWN_SECS", "2")]).await;
    let (mut ws, token) = server.player().await;
    let (status, _) = post_json(&server.url("/api/content"), &token, &json!({"kind": "npc", "subject_id": 5})).await;
    assert_eq!(status, 202);
    eventually("the upstream call to be in flight", || async { (fake.request_count() >= 1).then_some(()) }).await;

    let started = std::time::Instant::now();
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) }, 0);
    assert_eq!(ws.expect_close().await, Some(1001));
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "still running after SIGTERM");
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}: {}", server.output());
    assert!(started.elapsed() < Duration::from_millis(3500), "took {:?}", started.elapsed());
    assert!(server.output().contains("re-queueing unfinished jobs"), "{}", server.output());

    fake.set_mode(Mode::Ok);
    let server = Server::start(&db.url, &fake).await;
    let content = server.final_content(&token, "/api/content/npc/5").await;
    assert_eq!(content["status"], "ready", "{content}");
}

/// While draining, `/ready` is 503 and new work is refused.
async fn draining_refuses_new_work(db: Db) {
    let mut app = crate::common::spawn_with(crate::common::Setup::new(db), |c| {
        c.shutdown = Duration::from_secs(2);
    })
    .await;
    app.fake.set_mode(Mode::Hang);
    let token = app.player_token().await;
    let url = app.url("/api/content");
    assert_eq!(post_json(&url, &token, &json!({"kind": "quest", "subject_id": 1})).await.0, 202);
    eventually("the upstream call to be in flight", || async { (app.fake.request_count() >= 1).then_some(()) }).await;
    let running = app.running.take().unwrap();
    let stopping = actix_web::rt::spawn(running.shutdown());
    eventually("/ready to turn 503", || async { (get_json(&app.url("/ready"), None).await.0 == 503).then_some(()) })
        .await;
    let (status, body) = post_json(&url, &token, &json!({"kind": "quest", "subject_id": 2})).await;
    assert_eq!(status, 503, "{body}");
    stopping.await.unwrap();
}

/// With no admin token configured, one is generated and printed once on stdout (never in a
/// log line); it opens the admin API, and the next start makes a new one.
async fn generated_admin_token_is_printed_once_and_works(db: Db) {
    let fake = FakeLlm::start();
    let db = test_db(db).await;
    let printed = |server: &Server| -> Vec<String> {
        let output = server.output();
        output.lines().filter_map(|l| l.strip_prefix("LOREWIRE_ADMIN_TOKEN=")).map(str::to_owned).collect()
    };
    let mut server = Server::start_changed(&db.url, &fake, &[], &["LOREWIRE_ADMIN_TOKEN"]).await;
    let tokens =
        eventually("the token to be printed", || async { Some(printed(&server)).filter(|t| !t.is_empty()) }).await;
    assert_eq!(tokens.len(), 1, "printed once");
    let token = &tokens[0];
    assert!(token.len() >= 32, "a long random token: {token}");
    assert_eq!(server.output().matches(token.as_str()).count(), 1, "the token appears nowhere else");
    let url = server.url("/admin/api/llm");
    assert_eq!(get_json(&url, Some(token)).await.0, 200);
    assert_eq!(get_json(&url, Some(ADMIN_TOKEN)).await.0, 403);
    server.kill9();

    let server = Server::start_changed(&db.url, &fake, &[], &["LOREWIRE_ADMIN_TOKEN"]).await;
    let again =
        eventually("the token to be printed", || async { Some(printed(&server)).filter(|t| !t.is_empty()) }).await;
    assert_ne!(&again[0], token, "a new token per start");
    assert_eq!(get_json(&server.url("/admin/api/llm"), Some(token)).await.0, 403);
}

/// A corrupt circuit record in the database does not stop the start: the breaker resumes closed
/// and empty, and the log names the row and the column at fault.
async fn corrupt_circuit_record_is_logged_not_silently_emptied(db: Db) {
    use diesel::prelude::*;
    use lorewire::store::schema::llm_config;

    let fake = FakeLlm::start();
    let db = test_db(db).await;
    let mut server = Server::start(&db.url, &fake).await;
    server.kill9();
    let store = lorewire::store::Store::connect(&db.url).unwrap();
    store
        .write(|conn| {
            diesel::update(llm_config::table)
                .set((llm_config::circuit_failures.eq("{not json"), llm_config::circuit_state.eq("ajar")))
                .execute(conn)?;
            Ok(())
        })
        .await
        .unwrap();
    let server = Server::start(&db.url, &fake).await;
    let (status, llm) = get_json(&server.url("/admin/api/llm"), Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200);
    assert_eq!(llm["circuit"]["state"], "closed", "{llm}");
    assert_eq!(llm["circuit"]["failures"], 0, "{llm}");
    let logs = server.output();
    assert!(logs.contains("stored circuit history is corrupt"), "{logs}");
    assert!(logs.contains("circuit_failures") && logs.contains("llm_config 1"), "{logs}");
    assert!(logs.contains("stored circuit state is unknown"), "{logs}");
}

/// With no key and no model server of one's own, the start says once that every item will fall
/// back and where to read how to try a local model; with a key it says nothing of the sort.
async fn no_key_is_told_at_start(kind: Db) {
    let fake = FakeLlm::start();
    let db = test_db(kind).await;
    let notice = "every content item will fall back with `no_config`";
    let mut server = Server::start_changed(&db.url, &fake, &[], &["LOREWIRE_LLM_API_KEY"]).await;
    let line = eventually("the notice to be logged", || async {
        server.output().lines().find(|l| l.contains(notice)).map(str::to_owned)
    })
    .await;
    assert!(line.contains("WARN") && line.contains("Try it with a local model"), "{line}");
    assert_eq!(server.output().matches(notice).count(), 1);
    server.kill9();

    // Settings are seeded once per database: a keyed start needs a database of its own.
    let keyed = test_db(kind).await;
    let server = Server::start(&keyed.url, &fake).await;
    let (_, llm) = get_json(&server.url("/admin/api/llm"), Some(ADMIN_TOKEN)).await;
    assert_eq!(llm["notice"], Value::Null, "{llm}");
    assert!(!server.output().contains(notice));
}

both_backends!(
    no_key_is_told_at_start,
    generated_admin_token_is_printed_once_and_works,
    corrupt_circuit_record_is_logged_not_silently_emptied,
    kill_9_and_restart_leaves_nothing_pending,
    kill_9_leaves_no_mood_pending,
    api_key_never_leaks,
    sigterm_drains_and_hands_work_back,
    draining_refuses_new_work,
);

#[test]
fn help_lists_every_setting() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for var in [
        "DATABASE_URL",
        "LOREWIRE_BIND",
        "LOREWIRE_ADMIN_TOKEN",
        "LOREWIRE_LLM_PROVIDER",
        "LOREWIRE_LLM_API_KEY",
        "LOREWIRE_LLM_MODEL",
        "LOREWIRE_LLM_BASE_URL",
        "LOREWIRE_LLM_TIMEOUT_SECS",
        "LOREWIRE_LLM_CONCURRENCY",
        "LOREWIRE_CIRCUIT_FAILURES",
        "LOREWIRE_CIRCUIT_WINDOW_SECS",
        "LOREWIRE_CIRCUIT_RESET_SECS",
        "LOREWIRE_SHUTDOWN_SECS",
        "LOREWIRE_ALLOWED_ORIGINS",
        "LOREWIRE_REDIS_URL",
        "LOREWIRE_REDIS_PREFIX",
        "LOREWIRE_LOG_FORMAT",
        "serve",
        "migrate",
    ] {
        assert!(help.contains(var), "--help does not mention {var}:\n{help}");
    }
}

#[test]
fn migrate_creates_the_schema_and_bad_settings_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    let out = Command::new(BIN).current_dir(dir.path()).arg("migrate").env("DATABASE_URL", &db).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(db.exists());

    // The real connection error, not a generic one.
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .arg("migrate")
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/nothing")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.to_lowercase().contains("connection refused"), "{err}");

    let out = Command::new(BIN).current_dir(dir.path()).env("LOREWIRE_LLM_PROVIDER", "gemini").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("gemini"));
}
