//! The circuit breaker, driven by a hand-moved clock: counting within the window, what never
//! counts, half-open's single probe, admin reset, persistence across a restart.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{eventually, spawn_with, Db, Mode, Setup, TestApp};

async fn breaker_app(db: Db) -> TestApp {
    spawn_with(Setup { manual_clock: true, ..Setup::new(db) }, |c| {
        c.circuit_failures = 3;
        c.circuit_window = Duration::from_secs(60);
        c.circuit_reset = Duration::from_secs(300);
        // Room for a deliberately slow probe.
        c.llm_timeout = Duration::from_secs(5);
    })
    .await
}

async fn reason(app: &TestApp, token: &str, subject_id: u64) -> Value {
    app.content_final(token, "quest", subject_id, json!({})).await["reason"].clone()
}

async fn opens_at_exactly_n_failures_in_the_window(db: Db) {
    let app = breaker_app(db).await;
    let token = app.player_token().await;
    app.fake.set_mode(Mode::Status(500));
    for id in 1..=2 {
        assert_eq!(reason(&app, &token, id).await, "api_error_500");
        let circuit = app.circuit().await;
        assert_eq!(circuit["state"], "closed");
        assert_eq!(circuit["failures"], id);
    }
    assert_eq!(reason(&app, &token, 3).await, "api_error_500");
    let circuit = app.circuit().await;
    assert_eq!(circuit["state"], "open");
    assert!(circuit["opened_at"].is_string() && circuit["resets_at"].is_string(), "{circuit}");
    assert_eq!(app.fake.request_count(), 3);

    // While open, no upstream call: fallbacks at once.
    app.fake.set_mode(Mode::Ok);
    for id in 4..=6 {
        assert_eq!(reason(&app, &token, id).await, "circuit_open");
    }
    assert_eq!(app.fake.request_count(), 3);
}

async fn failures_spread_beyond_the_window_do_not_open(db: Db) {
    let app = breaker_app(db).await;
    let token = app.player_token().await;
    app.fake.set_mode(Mode::Status(503));
    for id in 1..=6 {
        assert_eq!(reason(&app, &token, id).await, "api_error_503");
        app.clock.advance(Duration::from_secs(31));
    }
    let circuit = app.circuit().await;
    assert_eq!(circuit["state"], "closed", "{circuit}");
    assert_eq!(app.fake.request_count(), 6);
}

async fn client_errors_and_429_never_count(db: Db) {
    let app = breaker_app(db).await;
    let token = app.player_token().await;
    let modes = [Mode::Status(400), Mode::Status(404), Mode::Status(422), Mode::RateLimited { retry_after_secs: 0 }];
    for (i, mode) in modes.into_iter().enumerate() {
        app.fake.set_mode(mode);
        reason(&app, &token, i as u64 + 1).await;
    }
    app.fake.set_mode(Mode::Status(401));
    assert_eq!(reason(&app, &token, 10).await, "api_error_401");
    // A 401 parks the upstream (PROTOCOL §7): no call until its key changes or it is reset.
    assert_eq!(reason(&app, &token, 11).await, "circuit_open");
    let (_, llm) = app.admin_get("/admin/api/llm").await;
    assert_eq!(llm["circuit"]["state"], "closed");
    assert_eq!(llm["circuit"]["failures"], 0);
    // A 401 is shown to the admin to fix.
    let last_error = llm["last_error"].as_str().unwrap();
    assert!(last_error.contains("401"), "{last_error}");
    assert_eq!(app.fake.request_count(), 5);
    // Reset, it is called again.
    assert_eq!(app.admin_post("/admin/api/llm/circuit/reset").await.0, 200);
    assert_eq!(reason(&app, &token, 12).await, "api_error_401");
    assert_eq!(app.fake.request_count(), 6);
}

async fn open_circuit(app: &TestApp, token: &str) {
    app.fake.set_mode(Mode::Status(500));
    for id in 1000..1003 {
        reason(app, token, id).await;
    }
    assert_eq!(app.circuit().await["state"], "open");
}

async fn half_open_lets_exactly_one_probe_through(db: Db) {
    let app = breaker_app(db).await;
    let token = app.player_token().await;
    open_circuit(&app, &token).await;
    let calls = app.fake.request_count();

    app.clock.advance(Duration::from_secs(301));
    assert_eq!(app.circuit().await["state"], "half_open");
    // The probe is slow, so every other request is decided while it is in flight.
    app.fake.set_mode(Mode::Delay(Duration::from_secs(2)));
    let finals = futures_util::future::join_all((1..=10).map(|id| {
        let token = token.clone();
        let app = &app;
        async move { app.content_final(&token, "event", id, json!({})).await }
    }))
    .await;
    let ready = finals.iter().filter(|c| c["status"] == "ready").count();
    let open = finals.iter().filter(|c| c["reason"] == "circuit_open").count();
    assert_eq!((ready, open), (1, 9), "{finals:?}");
    assert_eq!(app.fake.request_count(), calls + 1);
    // The probe succeeded: closed again.
    assert_eq!(app.circuit().await["state"], "closed");
    assert_eq!(reason(&app, &token, 50).await, Value::Null);
}

async fn failed_probe_reopens(db: Db) {
    let app = breaker_app(db).await;
    let token = app.player_token().await;
    open_circuit(&app, &token).await;
    let first_open = app.circuit().await["opened_at"].clone();
    app.clock.advance(Duration::from_secs(301));
    assert_eq!(reason(&app, &token, 1).await, "api_error_500");
    let circuit = app.circuit().await;
    assert_eq!(circuit["state"], "open");
    assert_ne!(circuit["opened_at"], first_open);
    assert_eq!(reason(&app, &token, 2).await, "circuit_open");
}

/// A probe that is aborted before the provider answers says nothing about the provider: the
/// circuit stays half-open and the next request is the probe.
async fn aborted_probe_leaves_the_circuit_half_open(db: Db) {
    let app = breaker_app(db).await;
    let token = app.player_token().await;
    open_circuit(&app, &token).await;
    app.clock.advance(Duration::from_secs(301));
    assert_eq!(app.circuit().await["state"], "half_open");

    app.fake.set_mode(Mode::Hang);
    let calls = app.fake.request_count();
    let (mut ws, _) = app.player("Prober").await;
    ws.send(json!({"type": "generate:start", "project_id": "p", "action": "WRITE", "input": "a bell", "ref": 1})).await;
    let run_id = ws.recv_type("run:queued").await["run_id"].as_str().unwrap().to_owned();
    eventually("the probe to reach the provider", || async { (app.fake.request_count() > calls).then_some(()) }).await;
    ws.send(json!({"type": "generate:abort", "run_id": run_id})).await;
    assert_eq!(ws.recv_type("run:error").await["code"], "aborted");
    assert_eq!(app.circuit().await["state"], "half_open");

    // The slot is free once the cancelled call is reported: a later request is the probe.
    app.fake.set_mode(Mode::Ok);
    let next = std::sync::atomic::AtomicU64::new(60);
    eventually("a request to go through as the new probe", || async {
        let id = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        reason(&app, &token, id).await.is_null().then_some(())
    })
    .await;
    assert_eq!(app.circuit().await["state"], "closed");
}

async fn admin_reset_closes_the_circuit(db: Db) {
    let app = breaker_app(db).await;
    let token = app.player_token().await;
    open_circuit(&app, &token).await;
    let (status, body) = app.admin_post("/admin/api/llm/circuit/reset").await;
    assert_eq!(status, 200);
    assert_eq!(body["circuit"]["state"], "closed");
    app.fake.set_mode(Mode::Ok);
    let calls = app.fake.request_count();
    assert_eq!(reason(&app, &token, 9).await, Value::Null);
    assert_eq!(app.fake.request_count(), calls + 1);
}

async fn state_survives_a_restart(db: Db) {
    let mut app = breaker_app(db).await;
    let token = app.player_token().await;
    open_circuit(&app, &token).await;
    let before = app.circuit().await;
    app.restart(Arc::new(app.clock.clone())).await;
    let after = app.circuit().await;
    assert_eq!(after["state"], "open");
    assert_eq!(after["opened_at"], before["opened_at"]);
    assert_eq!(after["resets_at"], before["resets_at"]);
    app.fake.set_mode(Mode::Ok);
    let calls = app.fake.request_count();
    assert_eq!(reason(&app, &token, 1).await, "circuit_open");
    assert_eq!(app.fake.request_count(), calls);
    // The re-armed breaker still half-opens when its time comes.
    app.clock.advance(Duration::from_secs(301));
    assert_eq!(reason(&app, &token, 2).await, Value::Null);
    assert_eq!(app.circuit().await["state"], "closed");
}

/// With the real clock, the `run_later` timer moves open -> half-open by itself.
async fn timer_half_opens_on_its_own(db: Db) {
    let app = spawn_with(Setup::new(db), |c| {
        c.circuit_failures = 2;
        c.circuit_reset = Duration::from_millis(800);
    })
    .await;
    let token = app.player_token().await;
    app.fake.set_mode(Mode::Status(500));
    reason(&app, &token, 1).await;
    reason(&app, &token, 2).await;
    let store = lorewire::store::Store::connect(&app.db.url).unwrap();
    let stored_state = || {
        let store = store.clone();
        async move {
            let row = store.run(lorewire::store::llm_config::get).await.unwrap().unwrap();
            Some(row.circuit_state)
        }
    };
    assert_eq!(stored_state().await.unwrap(), "open");
    eventually("the persisted circuit to half-open", || async { stored_state().await.filter(|s| s == "half_open") })
        .await;
}

both_backends!(
    opens_at_exactly_n_failures_in_the_window,
    failures_spread_beyond_the_window_do_not_open,
    client_errors_and_429_never_count,
    half_open_lets_exactly_one_probe_through,
    failed_probe_reopens,
    aborted_probe_leaves_the_circuit_half_open,
    admin_reset_closes_the_circuit,
    state_survives_a_restart,
    timer_half_opens_on_its_own,
);
