//! Generation runs at their limits: budget bookkeeping under concurrency (reconcile while other
//! processes reserve, concurrent first budgets, settlements that would go below zero), the
//! queue limit on admin re-queues, and answers cut at the output-token limit.

use std::time::Duration;

use diesel::RunQueryDsl;
use lorewire::llm::providers::Provider;
use lorewire::runs::{Price, Usage};
use lorewire::store::{billing, write_tx, Store};
use serde_json::{json, Value};

use crate::common::fake_llm::FakeUsage;
use crate::common::{eventually, get_json, post_json, spawn_with, Db, Mode, Setup, TestApp, TestDb};

/// Prices the tests set, per million tokens, in micro-dollars; each rate differs so a token
/// priced at the wrong rate shows.
const PRICE: Price = Price { input: 3_000_000, output: 15_000_000, cache_read: 300_000, cache_write: 3_750_000 };

async fn app_with(db: Db, provider: Provider, configure: impl FnOnce(&mut lorewire::config::Config)) -> TestApp {
    spawn_with(Setup { provider, ..Setup::new(db) }, configure).await
}

async fn set_price(app: &TestApp, model: &str) {
    let (status, body) = app
        .admin_put(
            &format!("/admin/api/prices/{model}"),
            json!({"input_usd": 3.0, "output_usd": 15.0, "cache_read_usd": 0.3, "cache_write_usd": 3.75}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

/// Starts a run over REST (it runs to its end whoever waits) and returns its id.
async fn start_run(app: &TestApp, token: &str, input: &str) -> String {
    let body = json!({"project_id": "p1", "action": "WRITE", "input": input});
    let (status, body) = post_json(&app.url("/api/generate"), token, &body).await;
    assert_eq!(status, 202, "{body}");
    body["run_id"].as_str().unwrap().to_owned()
}

async fn run_json(app: &TestApp, token: &str, run_id: &str) -> Value {
    let (status, run) = get_json(&app.url(&format!("/api/runs/{run_id}")), Some(token)).await;
    assert_eq!(status, 200, "{run}");
    run
}

async fn final_run(app: &TestApp, token: &str, run_id: &str) -> Value {
    eventually("the run to end", || async {
        let run = run_json(app, token, run_id).await;
        (!matches!(run["status"].as_str(), Some("queued" | "running"))).then_some(run)
    })
    .await
}

/// The project's cost events, newest first.
async fn cost_events(app: &TestApp, project: &str) -> Vec<Value> {
    let (status, body) = app.admin_get(&format!("/admin/api/costs?project_id={project}")).await;
    assert_eq!(status, 200, "{body}");
    body["events"].as_array().unwrap().clone()
}

fn usage_of(v: &Value) -> Usage {
    serde_json::from_value(v.clone()).unwrap()
}

fn micros(usd: &Value) -> i64 {
    (usd.as_f64().unwrap() * 1e6).round() as i64
}

/// A store of the test's own on a migrated database.
async fn store_for(db: &TestDb) -> Store {
    let url = db.url.clone();
    actix_web::rt::task::spawn_blocking(move || {
        let store = Store::connect(&url).unwrap();
        store.migrate().unwrap();
        store
    })
    .await
    .unwrap()
}

fn now() -> chrono::NaiveDateTime {
    chrono::Utc::now().naive_utc()
}

/// Another process admits a run (its budget reservation and its run row in one transaction)
/// while this one reconciles at start: the reservation committed meanwhile is kept. Then a
/// settlement releasing more than is reserved leaves zero instead of failing.
async fn reconcile_keeps_reservations_committed_meanwhile(db: Db) {
    let test_db = actix_web::rt::task::spawn_blocking(move || TestDb::new(db)).await.unwrap();
    let store = store_for(&test_db).await;
    store
        .run(|conn| {
            billing::put_budget(conn, "p1", 1_000_000, now())?;
            insert_active_run(conn, "r-earlier", 3_000)?;
            // Drift to be repaired: the budget holds nothing for the run above.
            diesel::sql_query("UPDATE budgets SET reserved_micros = 0").execute(conn)?;
            Ok(())
        })
        .await
        .unwrap();

    let (held_tx, held_rx) = std::sync::mpsc::channel();
    let other = store.clone();
    let admitting = std::thread::spawn(move || {
        other.run_blocking(|conn| {
            write_tx(conn, |conn| {
                assert!(billing::reserve(conn, "p1", 5_000, now())?);
                insert_active_run(conn, "r-meanwhile", 5_000)?;
                held_tx.send(()).unwrap();
                // Commits only after the reconciliation has begun.
                std::thread::sleep(Duration::from_millis(500));
                Ok(())
            })
        })
    });
    actix_web::rt::task::spawn_blocking(move || held_rx.recv().unwrap()).await.unwrap();
    let reconciled = store.run(|conn| billing::reconcile(conn, now())).await;
    admitting.join().unwrap().unwrap();
    assert_eq!(reconciled.unwrap(), 1);
    let budget = store.run(|conn| billing::budget(conn, "p1")).await.unwrap().unwrap();
    assert_eq!(budget.reserved_micros, 8_000, "both runs' reservations are held");

    store.run(|conn| billing::settle(conn, "p1", 9_000, 1_200, now())).await.unwrap();
    let budget = store.run(|conn| billing::budget(conn, "p1")).await.unwrap().unwrap();
    assert_eq!(budget.reserved_micros, 0, "released down to zero, not below");
    assert_eq!(budget.spent_micros, 1_200);
}

/// A queued run holding `reserved` on project p1, written as another process would.
fn insert_active_run(
    conn: &mut lorewire::store::DbConn,
    run_id: &str,
    reserved: i64,
) -> lorewire::store::StoreResult<()> {
    diesel::sql_query(format!(
        "INSERT INTO runs (run_id, project_id, action, input, model, dedup_key, status, reserved_micros, \
         created_at, updated_at) VALUES ('{run_id}', 'p1', 'WRITE', 'x', 'm', 'k-{run_id}', 'queued', {reserved}, \
         CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
    ))
    .execute(conn)?;
    Ok(())
}

/// Concurrent first `PUT /admin/api/budgets/{project}`: every one answers 200, and the budget
/// ends with one of the limits sent.
async fn concurrent_first_budget_puts_all_succeed(db: Db) {
    let app = app_with(db, Provider::Anthropic, |_| {}).await;
    for round in 0..5 {
        let path = format!("/admin/api/budgets/race{round}");
        let puts = (1..=4).map(|i| app.admin_put(&path, json!({"limit_usd": f64::from(i)})));
        for (status, body) in futures_util::future::join_all(puts).await {
            assert_eq!(status, 200, "{body}");
        }
        let (status, budget) = app.admin_get(&path).await;
        assert_eq!(status, 200, "{budget}");
        let limit = budget["limit_usd"].as_f64().unwrap();
        assert!([1.0, 2.0, 3.0, 4.0].contains(&limit), "{budget}");
        assert_eq!(budget["reserved_usd"], 0.0);
    }
}

/// An admin re-queue of a dead letter while LOREWIRE_QUEUE_LIMIT runs are queued is refused
/// as overloaded (429) and leaves the run dead.
async fn dead_letter_retry_respects_the_queue_limit(db: Db) {
    let app = app_with(db, Provider::Anthropic, |c| {
        c.llm_concurrency = 1;
        c.queue_limit = 1;
        c.max_attempts = 1;
        c.circuit_failures = 100;
        c.llm_timeout = Duration::from_secs(30);
    })
    .await;
    let token = app.player_token().await;
    app.fake.push_modes([Mode::StreamError { after_chunks: 1 }]);
    let dead = start_run(&app, &token, "doomed").await;
    assert_eq!(final_run(&app, &token, &dead).await["status"], "dead");

    app.fake.set_mode(Mode::Hang);
    let running = start_run(&app, &token, "hangs upstream").await;
    eventually("the second run to be upstream", || async { (app.fake.request_count() == 2).then_some(()) }).await;
    let queued = start_run(&app, &token, "waits in the queue").await;
    assert_eq!(run_json(&app, &token, &queued).await["status"], "queued");

    let (status, body) = app.admin_post(&format!("/admin/api/dead-letters/{dead}/retry")).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"], "overloaded");
    assert_eq!(run_json(&app, &token, &dead).await["status"], "dead");

    let _ = running;
}

/// An answer cut at the output-token limit (Anthropic `max_tokens`, Responses
/// `response.incomplete`, Chat `length`) ends the run normally: done with the text so far,
/// one attempt, one upstream call, charged once for the usage reported.
async fn answers_cut_at_max_tokens_end_normally(db: Db) {
    for provider in Provider::ALL {
        let app = app_with(db, provider, |c| c.retry_base = Duration::from_millis(20)).await;
        set_price(&app, provider.default_model()).await;
        app.fake.set_stream_chunks(vec!["One. ".into(), "Two. ".into(), "Three. ".into(), "Four.".into()]);
        app.fake.set_usage(Some(FakeUsage { input: 120, output: 64, ..FakeUsage::default() }));
        app.fake.set_mode(Mode::MaxTokens { after_chunks: 2 });
        let token = app.player_token().await;
        let run_id = start_run(&app, &token, "count to four").await;
        let run = final_run(&app, &token, &run_id).await;
        assert_eq!(run["status"], "done", "{provider}: {run}");
        assert_eq!(run["text"], "One. Two. ", "{provider}");
        assert_eq!(run["attempts"], 1, "{provider}");
        assert_eq!(app.fake.request_count(), 1, "{provider}: not retried");
        let usage = usage_of(&run["usage"]);
        assert_eq!(usage, Usage { input_tokens: 120, output_tokens: 64, ..Usage::default() }, "{provider}");
        let events = cost_events(&app, "p1").await;
        assert_eq!(events.len(), 1, "{provider}: charged once");
        assert_eq!(micros(&events[0]["cost_usd"]), PRICE.cost(&usage), "{provider}");
        assert_eq!(micros(&run["cost_usd"]), PRICE.cost(&usage), "{provider}");
    }
}

both_backends!(
    reconcile_keeps_reservations_committed_meanwhile,
    concurrent_first_budget_puts_all_succeed,
    dead_letter_retry_respects_the_queue_limit,
    answers_cut_at_max_tokens_end_normally,
);
