//! The browser client and admin dashboard in headless Chromium: each test starts lorewire
//! in-process (SQLite, fake LLM) and runs one scenario of `tests/browser/*.mjs` with node and
//! playwright-core. Prerequisites (`scripts/test` installs them): node, Chromium at /usr/bin/chromium
//! (or `LOREWIRE_CHROMIUM`), and `npm ci` in tests/browser. A missing one fails the test with
//! what to install; it never passes silently.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lorewire::hub::CloseAll;
use serde_json::json;

use crate::common::{spawn_app, spawn_with, Db, Event, Mode, Setup, TestApp, ADMIN_TOKEN};

/// A scenario that runs longer than this is killed.
const SCENARIO_LIMIT: Duration = Duration::from_secs(50);

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

fn chromium() -> String {
    std::env::var("LOREWIRE_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into())
}

/// Fails with what is missing and how to install it.
fn preflight() {
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.as_ref().is_ok_and(|o| o.status.success()),
        "browser tests need node (apt-get install -y nodejs npm): {node:?}"
    );
    assert!(
        Path::new(&chromium()).exists(),
        "browser tests need Chromium at {}: apt-get update && apt-get install -y chromium chromium-driver \
         (or set LOREWIRE_CHROMIUM)",
        chromium()
    );
    assert!(
        browser_dir().join("node_modules/playwright-core").exists(),
        "browser tests need playwright-core: (cd tests/browser && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci)"
    );
}

/// Runs `tests/browser/<name>.mjs` against the app; `on_request` does what the scenario asks
/// of the server side (`@@<what>` lines) before it is told `@@done`.
async fn scenario(app: &TestApp, name: &'static str, on_request: impl Fn(&str) + Send + 'static) {
    preflight();
    let base = app.url("");
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser-screenshots");
    let outcome = actix_web::rt::task::spawn_blocking(move || {
        let mut child = Command::new("node")
            .arg(browser_dir().join(format!("{name}.mjs")))
            .arg(&base)
            .arg(ADMIN_TOKEN)
            .current_dir(browser_dir())
            .env("LOREWIRE_SCREENSHOT_DIR", &shots)
            .env("LOREWIRE_CHROMIUM", chromium())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("node starts");
        let started = Instant::now();
        let mut stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let err_text = Arc::new(Mutex::new(String::new()));
        let err_sink = err_text.clone();
        let err_reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                err_sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        // The scenario cannot hang the suite: kill it at the limit.
        let pid = child.id();
        let watchdog = std::thread::spawn(move || {
            while started.elapsed() < SCENARIO_LIMIT {
                std::thread::sleep(Duration::from_millis(200));
                // SAFETY: kill(2) with signal 0 only checks that the process exists.
                if unsafe { libc::kill(pid as i32, 0) } != 0 {
                    return;
                }
            }
            // SAFETY: the pid is our own child, still running.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        });
        let mut out = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(what) = line.strip_prefix("@@") {
                on_request(what.trim());
                let _ = writeln!(stdin, "@@done");
                let _ = stdin.flush();
            }
            out.push_str(&line);
            out.push('\n');
        }
        let status = child.wait().expect("node exits");
        let _ = err_reader.join();
        let _ = watchdog.join();
        let err = err_text.lock().unwrap().clone();
        (status, out, err, started.elapsed())
    })
    .await
    .expect("scenario thread");
    let (status, out, err, took) = outcome;
    assert!(
        status.success(),
        "browser scenario `{name}` failed ({status}, after {took:?})\n--- stdout ---\n{out}--- stderr ---\n{err}"
    );
    println!("{out}");
}

#[actix_web::test]
async fn two_players_see_each_other_and_chat() {
    let app = spawn_app(Db::Sqlite).await;
    scenario(&app, "presence_chat", |_| {}).await;
}

/// Four players online on sockets of their own, one of whom leaves when the scenario asks.
#[actix_web::test]
async fn the_online_count_shows_and_show_more_pages_the_list() {
    let app = spawn_with(Setup::new(Db::Sqlite), |c| c.presence_list_max = 2).await;
    let leave = Arc::new(AtomicBool::new(false));
    for i in 0..4 {
        let (mut ws, _) = app.player(&format!("Rival{i}")).await;
        let leave = (i == 0).then(|| leave.clone());
        // Read on (answering pings) until told to leave.
        actix_web::rt::spawn(async move {
            loop {
                if leave.as_ref().is_some_and(|l| l.load(Ordering::SeqCst)) {
                    return ws.close().await;
                }
                if matches!(ws.next_event(Duration::from_millis(50)).await, Some(Event::Close(_) | Event::Eof)) {
                    return;
                }
            }
        });
    }
    scenario(&app, "presence_pages", move |what| {
        assert_eq!(what, "leave");
        leave.store(true, Ordering::SeqCst);
    })
    .await;
}

#[actix_web::test]
async fn content_card_turns_ready_live() {
    let app = spawn_app(Db::Sqlite).await;
    app.fake.set_mode(Mode::Delay(Duration::from_millis(1500)));
    scenario(&app, "content_live", |_| {}).await;
}

#[actix_web::test]
async fn page_reconnects_resubscribes_and_shows_the_final_state() {
    let app = spawn_app(Db::Sqlite).await;
    // Long enough to go offline first, short of the 2 s upstream timeout of the tests.
    app.fake.set_mode(Mode::Delay(Duration::from_millis(1200)));
    let hub = app.running.as_ref().unwrap().state.hub.clone();
    scenario(&app, "reconnect", move |what| {
        assert_eq!(what, "drop-sockets", "unknown request from the scenario");
        // What a server restart or a network cut looks like to the page.
        hub.do_send(CloseAll { code: 1012, reason: "service restart" });
    })
    .await;
}

/// The client library with the studio's login refreshes its JWT before it expires (no leeway:
/// without the refresh the session would close with 4001 and reconnect).
#[actix_web::test]
async fn client_library_refreshes_its_jwt_before_expiry() {
    let app = spawn_with(Setup::new(Db::Sqlite), |c| {
        c.identity.mode = lorewire::core::identity::AuthMode::Jwt;
        c.identity.jwt_secret = Some(lorewire::core::config::Secret::new("browser-jwt-secret-0123456789"));
        c.identity.leeway = Duration::ZERO;
    })
    .await;
    scenario(&app, "jwt_session", |what| panic!("unknown request from the scenario: {what}")).await;
}

#[actix_web::test]
async fn generation_panel_streams_aborts_and_admin_lists_runs() {
    let app = spawn_with(Setup::new(Db::Sqlite), |c| c.max_attempts = 1).await;
    let fake = app.fake.clone();
    let base = app.url("");
    let token = app.player_token().await;
    scenario(&app, "generation", move |what| match what {
        "slow-stream" => {
            fake.set_stream_chunks((0..40).map(|i| format!("word{i} ")).collect());
            fake.set_chunk_pause(Some(Duration::from_millis(200)));
        }
        "dead-letter" => {
            fake.set_stream_chunks(Vec::new());
            fake.set_chunk_pause(None);
            fake.set_mode(Mode::Status(500));
            // A REST run with one attempt allowed: the 500 dead-letters it.
            let body = json!({"project_id": "browser", "action": "DESCRIBE", "input": "a cursed bell"});
            let (base, token) = (base.clone(), token.clone());
            let status = std::thread::spawn(move || {
                actix_web::rt::System::new().block_on(async move {
                    let (status, run) = crate::common::post_json(&format!("{base}/api/generate"), &token, &body).await;
                    assert_eq!(status, 202, "{run}");
                    let url = format!("{base}/api/runs/{}", run["run_id"].as_str().unwrap());
                    crate::common::eventually("the run to be dead", || async {
                        (crate::common::get_json(&url, Some(&token)).await.1["status"] == "dead").then_some(())
                    })
                    .await;
                })
            })
            .join();
            assert!(status.is_ok(), "the dead letter was not made");
            fake.set_mode(Mode::Ok);
        }
        other => panic!("unknown request from the scenario: {other}"),
    })
    .await;
}

#[actix_web::test]
async fn treatment_player_sees_the_visual_novel() {
    let app = spawn_app(Db::Sqlite).await;
    scenario(&app, "visual_novel", |_| {}).await;
}

#[actix_web::test]
async fn admin_sees_the_circuit_open_and_resets_it() {
    let words = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(words.path(), "bad\n").unwrap();
    let path = words.path().to_owned();
    let app = spawn_with(Setup::new(Db::Sqlite), move |c| c.moderation.words = Some(path)).await;
    // A flag for the dashboard's moderation list: a refused nickname.
    let mut ws = app.ws().await;
    ws.send(json!({"type": "session:start", "nickname": "B4D Bo"})).await;
    assert_eq!(ws.recv().await["message"], "nickname not allowed");
    let token = app.player_token().await;
    app.fake.set_mode(Mode::Status(500));
    for id in 1..=3 {
        app.content_final(&token, "event", id, json!({})).await;
    }
    assert_eq!(app.circuit().await["state"], "open");
    app.fake.set_mode(Mode::Ok);
    scenario(&app, "admin", |_| {}).await;
    assert_eq!(app.circuit().await["state"], "closed");
}

/// The dashboard lists every upstream with its circuit and last error, and resets one.
#[actix_web::test]
async fn admin_sees_every_upstream_and_resets_one() {
    let app = spawn_with(Setup::new(Db::Sqlite), |c| c.circuit_failures = 1).await;
    let second = crate::common::FakeLlm::start();
    second.set_mode(Mode::Status(500));
    let body = json!({"provider": "anthropic", "base_url": second.anthropic_base_url(), "model": "second-model",
        "api_key": "sk-CANARY-second-0000", "priority": 1});
    let (status, added) = crate::common::post_json(&app.url("/admin/api/upstreams"), ADMIN_TOKEN, &body).await;
    assert_eq!((status, added["id"].as_i64()), (201, Some(2)), "{added}");
    // The first disabled for one item: it goes to the second, which fails and opens.
    app.admin_put("/admin/api/upstreams/1", json!({"enabled": false})).await;
    let token = app.player_token().await;
    assert_eq!(app.content_final(&token, "event", 1, json!({})).await["reason"], "api_error_500");
    app.admin_put("/admin/api/upstreams/1", json!({"enabled": true})).await;
    scenario(&app, "upstreams", |_| {}).await;
    assert_eq!(app.admin_get("/admin/api/upstreams/2").await.1["circuit"]["state"], "closed");
}

#[actix_web::test]
async fn pages_load_without_failed_requests_or_console_errors() {
    let app = spawn_app(Db::Sqlite).await;
    scenario(&app, "pages_clean", |_| {}).await;
}

#[actix_web::test]
async fn admin_charts_show_the_traffic_of_the_last_hour() {
    let app = spawn_app(Db::Sqlite).await;
    // Traffic for every chart, and a player who stays joined while the dashboard is open.
    let (ws, _) = app.history_traffic().await;
    scenario(&app, "charts", |_| {}).await;
    ws.close().await;
}

/// The admin's spend panel after a player's content request (15 tokens at the test price:
/// $0.00007), its Block and Unblock buttons and its limits form.
#[actix_web::test]
async fn admin_sees_a_players_spend_and_blocks_the_player() {
    let app = spawn_with(Setup::new(Db::Sqlite), |c| c.usage.studio_daily_tokens = Some(1_000_000)).await;
    let price = lorewire::runs::Price { input: 2_000_000, output: 10_000_000, cache_read: 0, cache_write: 0 };
    app.set_price(&app.config.llm_model, &price).await;
    app.fake.set_usage(Some(crate::common::fake_llm::FakeUsage { input: 10, output: 5, ..Default::default() }));
    scenario(&app, "spend", |what| panic!("unknown request from the scenario: {what}")).await;
    let (_, usage) = app.admin_get("/admin/api/usage").await;
    assert_eq!(usage["tokens"], 15, "{usage}");
    let user = usage["top"][0]["user_id"].as_i64().unwrap();
    let (_, player) = app.admin_get(&format!("/admin/api/players/{user}")).await;
    assert_eq!(player["blocked"], false, "unblocked at the end: {player}");
}

/// A player whose daily tokens fit no call: the page says so where the content request and
/// the run start were made; then, over a start rate of one a minute, how long to wait.
#[actix_web::test]
async fn player_page_shows_why_a_limit_refused_the_request() {
    let app = spawn_with(Setup::new(Db::Sqlite), |c| c.usage.player_daily_tokens = Some(1)).await;
    scenario(&app, "limits_refused", |what| panic!("unknown request from the scenario: {what}")).await;
    let (_, usage) = app.admin_get("/admin/api/usage").await;
    assert_eq!(usage["top"].as_array().map(Vec::len), Some(1), "one item was made: {usage}");
}
