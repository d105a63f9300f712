//! Generation runs at their limits: budget bookkeeping under concurrency (reconcile while other
//! processes reserve, concurrent first budgets, settlements that would go below zero), the
//! queue limit on admin re-queues, answers cut at the output-token limit, the stream's idle
//! and total time limits, Chat chunks with `choices: null`, exact cache pricing, and the most
//! an attempt is charged (estimated output capped, never more than its reservation).

use std::time::{Duration, Instant};

use diesel::{ExpressionMethods, RunQueryDsl};
use lorewire::llm::providers::Provider;
use lorewire::runs::{estimate_tokens, prompt_token_bound, Action, Price, Usage};
use lorewire::store::schema::{budgets, runs};
use lorewire::store::{billing, write_tx, Store};
use serde_json::{json, Value};

use crate::common::fake_llm::FakeUsage;
use crate::common::{eventually, post_json, spawn_provider, Db, Mode, TestApp, TestDb};

/// Prices the tests set, per million tokens, in micro-dollars; each rate differs so a token
/// priced at the wrong rate shows.
const PRICE: Price = Price { input: 3_000_000, output: 15_000_000, cache_read: 300_000, cache_write: 3_750_000 };

/// Starts a run over REST (it runs to its end whoever waits) and returns its id.
async fn start_run(app: &TestApp, token: &str, input: &str) -> String {
    let body = json!({"project_id": "p1", "action": "WRITE", "input": input});
    let (status, body) = post_json(&app.url("/api/generate"), token, &body).await;
    assert_eq!(status, 202, "{body}");
    body["run_id"].as_str().unwrap().to_owned()
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
        .write(|conn| {
            billing::put_budget(conn, "p1", 1_000_000, now())?;
            insert_active_run(conn, "r-earlier", 3_000)?;
            // Drift to be repaired: the budget holds nothing for the run above.
            diesel::update(budgets::table).set(budgets::reserved_micros.eq(0)).execute(conn)?;
            Ok(())
        })
        .await
        .unwrap();

    let (held_tx, held_rx) = std::sync::mpsc::channel();
    // Another process: a store (and writer) of its own on the same database.
    let other = store_for(&test_db).await;
    let admitting = std::thread::spawn(move || {
        other.write_blocking(move |conn| {
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
    let reconciled = store.write(|conn| billing::reconcile(conn, now())).await;
    admitting.join().unwrap().unwrap();
    assert_eq!(reconciled.unwrap(), 1);
    let budget = store.run(|conn| billing::budget(conn, "p1")).await.unwrap().unwrap();
    assert_eq!(budget.reserved_micros, 8_000, "both runs' reservations are held");

    store.write(|conn| billing::settle(conn, "p1", 9_000, 1_200, now())).await.unwrap();
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
    diesel::insert_into(runs::table)
        .values((
            runs::run_id.eq(run_id),
            runs::project_id.eq("p1"),
            runs::action.eq("WRITE"),
            runs::input.eq("x"),
            runs::model.eq("m"),
            runs::dedup_key.eq(format!("k-{run_id}")),
            runs::status.eq("queued"),
            runs::reserved_micros.eq(reserved),
            runs::created_at.eq(now()),
            runs::updated_at.eq(now()),
        ))
        .execute(conn)?;
    Ok(())
}

/// Concurrent first `PUT /admin/api/budgets/{project}`: every one answers 200, and the budget
/// ends with one of the limits sent.
async fn concurrent_first_budget_puts_all_succeed(db: Db) {
    let app = spawn_provider(db, Provider::Anthropic, |_| {}).await;
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
    let app = spawn_provider(db, Provider::Anthropic, |c| {
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
    assert_eq!(app.final_run(&token, &dead).await["status"], "dead");

    app.fake.set_mode(Mode::Hang);
    let running = start_run(&app, &token, "hangs upstream").await;
    eventually("the second run to be upstream", || async { (app.fake.request_count() == 2).then_some(()) }).await;
    assert_eq!(app.run_json(&token, &running).await["status"], "running");
    let queued = start_run(&app, &token, "waits in the queue").await;
    assert_eq!(app.run_json(&token, &queued).await["status"], "queued");

    let (status, body) = app.admin_post(&format!("/admin/api/dead-letters/{dead}/retry")).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"], "overloaded");
    assert_eq!(app.run_json(&token, &dead).await["status"], "dead");
    let (_, letters) = app.admin_get("/admin/api/dead-letters").await;
    assert_eq!(letters["runs"][0]["run_id"], dead.as_str(), "still a dead letter: {letters}");
    assert_eq!(app.fake.request_count(), 2, "nothing more was sent upstream");
}

/// An answer cut at the output-token limit (Anthropic `max_tokens`, Responses
/// `response.incomplete`, Chat `length`) ends the run normally: done with the text so far,
/// one attempt, one upstream call, charged once for the usage reported.
async fn answers_cut_at_max_tokens_end_normally(db: Db) {
    for provider in Provider::ALL {
        let app = spawn_provider(db, provider, |c| c.retry_base = Duration::from_millis(20)).await;
        app.set_price(provider.default_model(), &PRICE).await;
        app.fake.set_stream_chunks(vec!["One. ".into(), "Two. ".into(), "Three. ".into(), "Four.".into()]);
        app.fake.set_usage(Some(FakeUsage { input: 120, output: 64, ..FakeUsage::default() }));
        app.fake.set_mode(Mode::MaxTokens { after_chunks: 2 });
        let token = app.player_token().await;
        let run_id = start_run(&app, &token, "count to four").await;
        let run = app.final_run(&token, &run_id).await;
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

/// A stream that goes silent after two deltas fails its attempt as a timeout once the idle
/// limit passes; the attempt is charged for the input reported and the text received, retried,
/// and dead after LOREWIRE_MAX_ATTEMPTS.
async fn stalled_stream_times_out_per_chunk(db: Db) {
    let app = spawn_provider(db, Provider::Anthropic, |c| {
        c.llm_timeout = Duration::from_millis(400);
        c.retry_base = Duration::from_millis(20);
        c.max_attempts = 2;
        c.circuit_failures = 100;
    })
    .await;
    app.set_price("claude-haiku-4-5-20251001", &PRICE).await;
    app.fake.set_stream_chunks(vec!["One. ".into(), "Two. ".into(), "Three. ".into(), "Four.".into()]);
    app.fake.set_usage(Some(FakeUsage { input: 90, output: 40, ..FakeUsage::default() }));
    app.fake.set_mode(Mode::StallStream { after_chunks: 2 });
    let token = app.player_token().await;
    let run_id = start_run(&app, &token, "a story that stalls").await;
    let run = app.final_run(&token, &run_id).await;
    assert_eq!(run["status"], "dead", "{run}");
    assert_eq!(run["attempts"], 2);
    assert_eq!(run["error"]["code"], "timeout", "{run}");
    assert_eq!(app.fake.request_count(), 2);

    let partial = Usage { input_tokens: 90, output_tokens: estimate_tokens("One. Two. "), ..Usage::default() };
    let events = cost_events(&app, "p1").await;
    assert_eq!(events.len(), 2, "one cost event per attempt: {events:?}");
    for event in &events {
        assert_eq!(usage_of(&event["usage"]), partial, "{event}");
        assert_eq!(micros(&event["cost_usd"]), PRICE.cost(&partial), "{event}");
    }
    assert_eq!(usage_of(&run["usage"]), partial.add(&partial));
}

/// LOREWIRE_RUN_TOTAL_SECS bounds the whole stream: chunks that each come well within the
/// idle limit still fail the attempt as a timeout once the total passes, charged for the text
/// received so far.
async fn slow_stream_hits_the_total_limit(db: Db) {
    let app = spawn_provider(db, Provider::Anthropic, |c| {
        c.llm_timeout = Duration::from_secs(2);
        c.run_total_limit = Duration::from_millis(600);
        c.max_attempts = 1;
        c.circuit_failures = 100;
    })
    .await;
    app.set_price("claude-haiku-4-5-20251001", &PRICE).await;
    app.fake.set_stream_chunks((0..40).map(|i| format!("w{i:02} ")).collect());
    app.fake.set_chunk_pause(Some(Duration::from_millis(100)));
    let token = app.player_token().await;
    let started = Instant::now();
    let run_id = start_run(&app, &token, "a very long saga").await;
    let run = app.final_run(&token, &run_id).await;
    assert!(started.elapsed() < Duration::from_secs(3), "the 4 s stream was stopped early");
    assert_eq!(run["status"], "dead", "{run}");
    assert_eq!(run["error"]["code"], "timeout", "{run}");
    assert_eq!(run["attempts"], 1);
    let usage = usage_of(&run["usage"]);
    assert!(usage.output_tokens > 0 && usage.output_tokens < estimate_tokens(&"w00 ".repeat(40)), "{usage:?}");
    let events = cost_events(&app, "p1").await;
    assert_eq!(events.len(), 1);
    assert_eq!(micros(&events[0]["cost_usd"]), PRICE.cost(&usage));
}

/// Chat Completions chunks with `"choices": null` (a keep-alive chunk, and the usage chunk)
/// are tolerated end to end: the run is done with the full text and the usage reported.
async fn chat_chunks_with_null_choices_are_tolerated(db: Db) {
    let app = spawn_provider(db, Provider::OpenAiChat, |_| {}).await;
    app.set_price("gpt-5-mini", &PRICE).await;
    app.fake.set_chat_null_choices(true);
    app.fake.set_stream_chunks(vec!["Salt ".into(), "and ".into(), "iron.".into()]);
    app.fake.set_usage(Some(FakeUsage { input: 100, output: 7, cache_read: 40, cache_write: 0 }));
    let token = app.player_token().await;
    let run_id = start_run(&app, &token, "a tidal charm").await;
    let run = app.final_run(&token, &run_id).await;
    assert_eq!(run["status"], "done", "{run}");
    assert_eq!(run["text"], "Salt and iron.");
    let usage = usage_of(&run["usage"]);
    assert_eq!(usage, Usage { input_tokens: 100, output_tokens: 7, cache_read_tokens: 40, cache_write_tokens: 0 });
    assert_eq!(micros(&run["cost_usd"]), PRICE.cost(&usage));
    let raw = &app.fake.requests()[0];
    assert_eq!(raw.body["stream_options"]["include_usage"], true);
}

/// Anthropic cache writes and reads are priced at their own rates: the run, its `run:done`,
/// its cost event and the budget's spend all carry exactly the cost worked out from the table.
async fn anthropic_cache_tokens_are_priced_exactly(db: Db) {
    let app = spawn_provider(db, Provider::Anthropic, |_| {}).await;
    app.set_price("claude-haiku-4-5-20251001", &PRICE).await;
    let (status, body) = app.admin_put("/admin/api/budgets/p1", json!({"limit_usd": 5.0})).await;
    assert_eq!(status, 200, "{body}");
    // Within the prompt's size, as a real prompt cache reports it.
    let reported = FakeUsage { input: 20, output: 321, cache_read: 150, cache_write: 90 };
    app.fake.set_usage(Some(reported));
    // From the table, per million tokens, rounded up to a whole micro-dollar:
    // 20 x $3 + 321 x $15 + 150 x $0.30 + 90 x $3.75 = 60 + 4815 + 45 + 337.5 micro-dollars.
    let expected_micros =
        (20 * PRICE.input + 321 * PRICE.output + 150 * PRICE.cache_read + 90 * PRICE.cache_write + 999_999) / 1_000_000;
    assert_eq!(expected_micros, 5_258);

    let (mut ws, ack) = app.player("Writer").await;
    let token = ack["token"].as_str().unwrap().to_owned();
    ws.send(
        json!({"type": "generate:start", "project_id": "p1", "action": "WRITE", "input": "the cached saga", "ref": 1}),
    )
    .await;
    let run_id = ws.recv_type("run:queued").await["run_id"].as_str().unwrap().to_owned();
    let done = ws.recv_type("run:done").await;
    assert_eq!(done["run_id"], run_id.as_str());
    let usage = Usage { input_tokens: 20, output_tokens: 321, cache_read_tokens: 150, cache_write_tokens: 90 };
    assert_eq!(usage_of(&done["usage"]), usage, "{done}");
    assert_eq!(micros(&done["cost_usd"]), expected_micros, "{done}");

    let run = app.run_json(&token, &run_id).await;
    assert_eq!(micros(&run["cost_usd"]), expected_micros, "{run}");
    let events = cost_events(&app, "p1").await;
    assert_eq!(events.len(), 1);
    assert_eq!(usage_of(&events[0]["usage"]), usage);
    assert_eq!(micros(&events[0]["cost_usd"]), expected_micros);
    let (_, budget) = app.admin_get("/admin/api/budgets/p1").await;
    assert_eq!(micros(&budget["spent_usd"]), expected_micros, "{budget}");
    assert_eq!(budget["reserved_usd"], 0.0, "{budget}");
}

/// Output estimated from a cut stream's text never passes the max output tokens asked for.
async fn output_estimate_is_capped_at_max_output_tokens(db: Db) {
    let app = spawn_provider(db, Provider::Anthropic, |c| {
        c.max_output_tokens = 8;
        c.max_attempts = 1;
        c.circuit_failures = 100;
    })
    .await;
    app.set_price("claude-haiku-4-5-20251001", &PRICE).await;
    // 80 bytes before the cut: over 8 tokens' estimate, under the text's bound (16 bytes a token).
    app.fake.set_stream_chunks(vec!["x".repeat(40), "y".repeat(40), "z".repeat(40)]);
    app.fake.set_usage(Some(FakeUsage { input: 30, output: 75, ..FakeUsage::default() }));
    app.fake.set_mode(Mode::CutStream { after_chunks: 2 });
    let token = app.player_token().await;
    let run_id = start_run(&app, &token, "far too long").await;
    let run = app.final_run(&token, &run_id).await;
    assert_eq!(run["status"], "dead", "{run}");
    assert_eq!(run["error"]["code"], "stream_cut", "{run}");
    let usage = usage_of(&run["usage"]);
    assert!(estimate_tokens(&"x".repeat(80)) > 8);
    assert_eq!(usage, Usage { input_tokens: 30, output_tokens: 8, ..Usage::default() });
    assert_eq!(micros(&run["cost_usd"]), PRICE.cost(&usage));
}

/// An attempt that costs more than its reservation (the provider reported more input than the
/// prompt bound allows) is charged the reservation, and the run, its cost event and the
/// budget's spend all say the same.
async fn attempt_over_its_reservation_is_charged_it_everywhere(db: Db) {
    let app = spawn_provider(db, Provider::Anthropic, |_| {}).await;
    app.set_price("claude-haiku-4-5-20251001", &PRICE).await;
    let (status, body) = app.admin_put("/admin/api/budgets/p1", json!({"limit_usd": 5.0})).await;
    assert_eq!(status, 200, "{body}");
    let input = "an oversized prompt";
    let reservation = PRICE.worst_case(
        prompt_token_bound(Action::Write.system_prompt(), &Action::Write.user_message(input)),
        u64::from(app.config.max_output_tokens),
    );
    app.fake.set_usage(Some(FakeUsage { input: 1_000_000, output: 10, ..FakeUsage::default() }));
    let token = app.player_token().await;
    let run_id = start_run(&app, &token, input).await;
    let run = app.final_run(&token, &run_id).await;
    assert_eq!(run["status"], "done", "{run}");
    assert!(PRICE.cost(&usage_of(&run["usage"])) > reservation);
    assert_eq!(micros(&run["cost_usd"]), reservation, "{run}");
    let events = cost_events(&app, "p1").await;
    assert_eq!(micros(&events[0]["cost_usd"]), reservation);
    let (_, budget) = app.admin_get("/admin/api/budgets/p1").await;
    assert_eq!(micros(&budget["spent_usd"]), reservation, "{budget}");
    assert_eq!(budget["reserved_usd"], 0.0, "{budget}");
}

both_backends!(
    reconcile_keeps_reservations_committed_meanwhile,
    concurrent_first_budget_puts_all_succeed,
    dead_letter_retry_respects_the_queue_limit,
    answers_cut_at_max_tokens_end_normally,
    stalled_stream_times_out_per_chunk,
    slow_stream_hits_the_total_limit,
    chat_chunks_with_null_choices_are_tolerated,
    anthropic_cache_tokens_are_priced_exactly,
    output_estimate_is_capped_at_max_output_tokens,
    attempt_over_its_reservation_is_charged_it_everywhere,
);
