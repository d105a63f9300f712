//! What a player can make of the upstream's faults: an answer invalid after repair or a model's
//! refusal is that item's fallback and never opens the circuit for everyone (a half-open
//! probe answered so closes it); the provider's own error text and any piece of the API key
//! stay out of every player's view and every admin list; an unknown provider in the stored
//! settings is named as such, not reported as a missing key.

use std::time::Duration;

use diesel::{ExpressionMethods, RunQueryDsl};
use lorewire::core::config::Secret;
use lorewire::llm::providers::Provider;
use lorewire::store::schema::llm_config;
use lorewire::store::Store;
use serde_json::{json, Value};

use crate::common::{http, post_json, spawn_with, Db, Mode, Setup, TestApp, WsClient};

/// Fewer than the items each test fails, so a counting circuit would open.
const FAILURES: u32 = 2;

/// 36 characters, as a provider's key.
const KEY: &str = "sk-ant-api03-CANARY-0123456789abcdef";

async fn faults_app(db: Db, provider: Provider) -> TestApp {
    spawn_with(Setup { provider, manual_clock: true, ..Setup::new(db) }, |c| {
        c.circuit_failures = FAILURES;
        c.circuit_window = Duration::from_secs(60);
        c.circuit_reset = Duration::from_secs(300);
    })
    .await
}

async fn content(app: &TestApp, token: &str, subject_id: u64) -> Value {
    app.content_final(token, "quest", subject_id, json!({})).await
}

/// Answers that are not valid after the re-ask, and refusals, from every provider: each item
/// falls back with its own reason, the circuit stays closed with nothing counted, the next
/// good answer is `ready`; and 5xx still open it.
async fn invalid_answers_and_refusals_never_open_the_circuit(db: Db) {
    for provider in Provider::ALL {
        let app = faults_app(db, provider).await;
        let token = app.player_token().await;
        let cases = [
            (Mode::NotJsonText, "invalid_json"),
            (Mode::SchemaInvalid, "invalid_response"),
            (Mode::GarbageJson, "invalid_response"),
            (Mode::Refusal, "invalid_response"),
        ];
        let mut subject_id = 0;
        for (mode, reason) in cases {
            app.fake.set_mode(mode.clone());
            for _ in 0..=FAILURES {
                subject_id += 1;
                let item = content(&app, &token, subject_id).await;
                assert_eq!(item["status"], "fallback", "{provider} {mode:?}: {item}");
                assert_eq!(item["reason"], reason, "{provider} {mode:?}: {item}");
            }
            let circuit = app.circuit().await;
            assert_eq!(circuit["state"], "closed", "{provider} {mode:?}: {circuit}");
            assert_eq!(circuit["failures"], 0, "{provider} {mode:?}: {circuit}");
        }

        app.fake.set_mode(Mode::Ok);
        let item = content(&app, &token, 100).await;
        assert_eq!(item["status"], "ready", "{provider}: {item}");

        app.fake.set_mode(Mode::Status(500));
        for id in 101..101 + u64::from(FAILURES) {
            assert_eq!(content(&app, &token, id).await["reason"], "api_error_500", "{provider}");
        }
        assert_eq!(app.circuit().await["state"], "open", "{provider}");
        let calls = app.fake.request_count();
        assert_eq!(content(&app, &token, 200).await["reason"], "circuit_open", "{provider}");
        assert_eq!(app.fake.request_count(), calls, "no call while open");
    }
}

/// The half-open probe gets an answer that is no use (a refusal, then text that is not JSON
/// even when asked again): the provider answered, so the circuit closes instead of staying
/// half-open or opening again.
async fn an_unusable_answer_to_the_half_open_probe_closes_the_circuit(db: Db) {
    let app = faults_app(db, Provider::Anthropic).await;
    let token = app.player_token().await;
    let mut subject_id = 0;
    for (probe_answer, reason) in [(Mode::Refusal, "invalid_response"), (Mode::NotJsonText, "invalid_json")] {
        app.fake.set_mode(Mode::Status(503));
        for _ in 0..FAILURES {
            subject_id += 1;
            content(&app, &token, subject_id).await;
        }
        assert_eq!(app.circuit().await["state"], "open", "{probe_answer:?}");
        app.clock.advance(Duration::from_secs(301));
        assert_eq!(app.circuit().await["state"], "half_open", "{probe_answer:?}");

        app.fake.set_mode(probe_answer.clone());
        subject_id += 1;
        assert_eq!(content(&app, &token, subject_id).await["reason"], reason, "{probe_answer:?}");
        let circuit = app.circuit().await;
        assert_eq!(circuit["state"], "closed", "{probe_answer:?}: {circuit}");
        assert_eq!(circuit["failures"], 0, "{probe_answer:?}: {circuit}");

        app.fake.set_mode(Mode::Ok);
        subject_id += 1;
        assert_eq!(content(&app, &token, subject_id).await["status"], "ready", "{probe_answer:?}");
    }
}

/// Every stretch of 8 characters of `KEY` that `text` holds.
fn key_pieces_in(text: &str) -> Vec<&'static str> {
    (0..=KEY.len() - 8).map(|i| &KEY[i..i + 8]).filter(|piece| text.contains(piece)).collect()
}

/// The provider's 500 says what went wrong in its own words and echoes 31 of the key's 36
/// characters: players read lorewire's words only (content `reason`, `run:error` over the
/// WebSocket and SSE, `GET /api/runs/{id}`), the admin's run list does too, and the admin's
/// `last_error` keeps the provider's words with the key's piece redacted.
async fn upstream_error_text_and_key_pieces_never_reach_players(db: Db) {
    let app = spawn_with(Setup::new(db), |c| {
        c.llm_api_key = Some(Secret::new(KEY));
        c.max_attempts = 1;
        c.circuit_failures = 100;
    })
    .await;
    let echoed = &KEY[3..34];
    let upstream_words = "Internal failure while checking credentials";
    app.fake.set_mode(Mode::StatusMessage { status: 500, message: format!("{upstream_words} for {echoed}.") });
    let mut player_views = Vec::new();

    let (mut ws, ack) = app.player("Mallory").await;
    let token = ack["token"].as_str().unwrap().to_owned();
    let item = app.content_final(&token, "npc", 7, json!({})).await;
    assert_eq!(item["reason"], "api_error_500", "{item}");
    player_views.push(item.to_string());

    ws.send(json!({"type": "generate:start", "project_id": "p1", "action": "WRITE", "input": "a bell", "ref": 1}))
        .await;
    let run_id = ws.recv_type("run:queued").await["run_id"].as_str().unwrap().to_owned();
    let end = ws.recv_type("run:error").await;
    assert_eq!(end["code"], "api_error_500", "{end}");
    assert_eq!(end["message"], "the model provider answered with an error (HTTP 500)", "{end}");
    player_views.push(end.to_string());

    let run = app.final_run(&token, &run_id).await;
    assert_eq!(run["status"], "dead", "{run}");
    assert_eq!(run["error"], json!({"code": "api_error_500", "message": end["message"]}), "{run}");
    player_views.push(run.to_string());
    let mut resp = http().get(app.url(&format!("/api/runs/{run_id}/events"))).bearer_auth(&token).send().await.unwrap();
    let events = String::from_utf8(resp.body().limit(1 << 20).await.unwrap().to_vec()).unwrap();
    assert!(events.contains("event: error") && events.contains("(HTTP 500)"), "{events}");
    player_views.push(events);

    for view in &player_views {
        assert!(!view.contains(upstream_words), "a player reads the provider's words: {view}");
        assert!(!view.contains("upstream answered"), "{view}");
        assert_eq!(key_pieces_in(view), Vec::<&str>::new(), "{view}");
    }

    let (_, runs) = app.admin_get("/admin/api/runs").await;
    assert_eq!(runs["runs"][0]["error"]["message"], end["message"], "{runs}");
    assert_eq!(key_pieces_in(&runs.to_string()), Vec::<&str>::new(), "{runs}");
    let (_, llm) = app.admin_get("/admin/api/llm").await;
    let last_error = llm["last_error"].as_str().unwrap_or_else(|| panic!("no last_error: {llm}"));
    assert!(last_error.starts_with("api_error_500"), "{last_error}");
    assert!(last_error.contains(upstream_words) && last_error.contains("[redacted]"), "{last_error}");
    assert_eq!(key_pieces_in(&llm.to_string()), Vec::<&str>::new(), "{llm}");
    ws.close().await;
}

/// A provider this version does not know, written straight into the stored settings (by a
/// newer version, or by hand): the admin reads its name, items fall back `no_config` without a
/// call, and a run is refused with an error that names it; nowhere is it "no API key".
async fn an_unknown_stored_provider_is_named(db: Db) {
    let app = spawn_with(Setup::new(db), |_| {}).await;
    let store = Store::connect(&app.db.url).unwrap();
    store
        .write(|conn| {
            Ok(diesel::update(llm_config::table).set(llm_config::provider.eq("claude-next")).execute(conn)?)
        })
        .await
        .unwrap();
    let named = "unknown provider `claude-next`";

    let (_, llm) = app.admin_get("/admin/api/llm").await;
    assert_eq!(llm["provider"], "claude-next", "{llm}");
    let last_error = llm["last_error"].as_str().unwrap_or_else(|| panic!("no last_error: {llm}"));
    assert!(last_error.contains(named), "{last_error}");
    let notice = llm["notice"].as_str().unwrap_or_else(|| panic!("no notice: {llm}"));
    assert!(notice.contains(named) && !notice.contains("No API key"), "{notice}");

    let token = app.player_token().await;
    let item = app.content_final(&token, "quest", 1, json!({})).await;
    assert_eq!((item["status"].as_str(), item["reason"].as_str()), (Some("fallback"), Some("no_config")), "{item}");

    let body = json!({"project_id": "p1", "action": "WRITE", "input": "a bell"});
    let (status, accepted) = post_json(&app.url("/api/generate"), &token, &body).await;
    assert_eq!(status, 202, "{accepted}");
    let run = app.final_run(&token, accepted["run_id"].as_str().unwrap()).await;
    assert_eq!(run["error"]["code"], "no_config", "{run}");
    let message = run["error"]["message"].as_str().unwrap();
    assert!(message.contains(named) && !message.contains("API key"), "{message}");

    let mut ws = WsClient::connect(&app.url("/ws")).await;
    ws.send(json!({"type": "session:start", "nickname": "Writer"})).await;
    ws.recv_type("session:ack").await;
    ws.send(json!({"type": "generate:start", "project_id": "p1", "action": "DESCRIBE", "input": "a well", "ref": 2}))
        .await;
    let end = ws.recv_type("run:error").await;
    assert_eq!(end["code"], "no_config", "{end}");
    assert!(end["message"].as_str().unwrap().contains(named), "{end}");
    assert_eq!(app.fake.request_count(), 0);
    ws.close().await;
}

both_backends!(
    invalid_answers_and_refusals_never_open_the_circuit,
    an_unusable_answer_to_the_half_open_probe_closes_the_circuit,
    upstream_error_text_and_key_pieces_never_reach_players,
    an_unknown_stored_provider_is_named,
);
