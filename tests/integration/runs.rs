//! Generation runs: streaming from each provider over WebSocket and SSE, retries with backoff,
//! dead letters, priority, the circuit, budgets under concurrency, abort, dedup, bad input.

use std::time::{Duration, Instant};

use lorewire::llm::providers::Provider;
use lorewire::runs::{prompt_token_bound, Action, Price, Usage};
use serde_json::{json, Value};

use crate::common::{eventually, get_json, http, post_json, spawn_provider, Db, Mode, TestApp, WsClient};

/// Prices the tests set, per million tokens (USD): round numbers so costs are easy to check.
const TEST_PRICE: Price = Price { input: 2_000_000, output: 10_000_000, cache_read: 200_000, cache_write: 2_500_000 };

fn start(project: &str, action: &str, input: &str, r: Value) -> Value {
    json!({"type": "generate:start", "project_id": project, "action": action, "input": input, "ref": r})
}

/// Everything a client saw of one run: the deltas after the last `run:started`, how many
/// `run:started` came, and the final frame. Checks that `seq` has no gaps.
struct Seen {
    started: Vec<Value>,
    deltas: Vec<String>,
    end: Value,
}

async fn follow(ws: &mut WsClient, run_id: &str) -> Seen {
    follow_after(ws, run_id, Vec::new()).await
}

/// As [`follow`], for a client that already read `deltas` of the current attempt.
async fn follow_after(ws: &mut WsClient, run_id: &str, deltas: Vec<String>) -> Seen {
    let mut seen = Seen { started: Vec::new(), deltas, end: Value::Null };
    loop {
        let frame = ws.recv().await;
        if frame["run_id"] != run_id {
            continue;
        }
        match frame["type"].as_str().unwrap() {
            "run:started" => {
                seen.started.push(frame);
                seen.deltas.clear();
            }
            "run:delta" => {
                assert_eq!(frame["seq"], seen.deltas.len(), "seq has a gap: {frame}");
                seen.deltas.push(frame["text"].as_str().unwrap().to_owned());
            }
            "run:done" | "run:error" => {
                seen.end = frame;
                return seen;
            }
            other => panic!("unexpected frame {other}: {frame}"),
        }
    }
}

async fn costs(app: &TestApp, project: &str) -> Value {
    let (status, body) = app.admin_get(&format!("/admin/api/costs?project_id={project}")).await;
    assert_eq!(status, 200, "{body}");
    body
}

fn usage_of(v: &Value) -> Usage {
    serde_json::from_value(v.clone()).unwrap()
}

fn close_to(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

/// WRITE over a WebSocket: queued -> started -> deltas -> done, the text and usage stored,
/// priced from the table, with one cost event.
async fn ws_run_streams_and_is_charged(db: Db) {
    let app = spawn_provider(db, Provider::Anthropic, |_| {}).await;
    app.set_price("claude-haiku-4-5-20251001", &TEST_PRICE).await;
    app.fake.set_stream_chunks(vec!["Once ".into(), "upon ".into(), "a ".into(), "time.".into()]);
    let (mut ws, ack) = app.player("Writer").await;
    let token = ack["token"].as_str().unwrap().to_owned();

    ws.send(start("p1", "WRITE", "a tale of the ashen well", json!(1))).await;
    let queued = ws.recv().await;
    assert_eq!(queued["type"], "run:queued", "{queued}");
    assert_eq!(queued["ref"], 1);
    assert_eq!(queued["position"], 0);
    assert!(queued["estimated_ms"].as_i64().unwrap() > 0);
    let run_id = queued["run_id"].as_str().unwrap().to_owned();

    let seen = follow(&mut ws, &run_id).await;
    assert_eq!(seen.started.len(), 1);
    assert_eq!(seen.started[0]["model"], "claude-haiku-4-5-20251001");
    assert!(seen.started[0].get("attempt").is_none());
    assert_eq!(seen.deltas, ["Once ", "upon ", "a ", "time."]);
    let done = seen.end;
    assert_eq!(done["type"], "run:done", "{done}");
    assert_eq!(done["text"], "Once upon a time.");
    assert!(done.get("cached").is_none());
    let usage = usage_of(&done["usage"]);
    assert!(usage.input_tokens > 0 && usage.output_tokens > 0, "{done}");
    assert!(close_to(done["cost_usd"].as_f64().unwrap(), TEST_PRICE.cost(&usage) as f64 / 1e6), "{done}");

    // The request: streamed, capped at the configured output tokens, the input delimited.
    let request = app.fake.requests().last().unwrap().body.clone();
    assert_eq!(request["stream"], true);
    assert_eq!(request["max_tokens"], app.config.max_output_tokens);
    assert!(request["messages"][0]["content"].as_str().unwrap().contains("a tale of the ashen well"));

    let run = app.run_json(&token, &run_id).await;
    assert_eq!(run["status"], "done");
    assert_eq!(run["text"], "Once upon a time.");
    assert_eq!(run["action"], "WRITE");
    assert_eq!(run["attempts"], 1);
    assert_eq!(run["usage"], done["usage"]);
    assert!(run["finished_at"].is_string());
    let costs = costs(&app, "p1").await;
    assert_eq!(costs["events"].as_array().unwrap().len(), 1, "{costs}");
    assert!(close_to(costs["total_usd"].as_f64().unwrap(), done["cost_usd"].as_f64().unwrap()));

    let (_, list) = app.admin_get("/admin/api/runs?project_id=p1&status=done&limit=5").await;
    assert_eq!(list["runs"][0]["run_id"], run_id.as_str());
}

/// OpenAI Responses and Chat Completions stream too; cached prompt tokens are reported and
/// priced at the cache-read rate.
async fn openai_formats_stream_with_cached_usage(db: Db) {
    for provider in [Provider::OpenAi, Provider::OpenAiChat] {
        let app = spawn_provider(db, provider, |_| {}).await;
        app.set_price("gpt-5-mini", &TEST_PRICE).await;
        let (mut ws, _) = app.player("Writer").await;
        let mut usages = Vec::new();
        for (i, input) in ["the first lighthouse", "the second lighthouse"].into_iter().enumerate() {
            ws.send(start("p1", "DESCRIBE", input, json!(i))).await;
            let queued = ws.recv_type("run:queued").await;
            let seen = follow(&mut ws, queued["run_id"].as_str().unwrap()).await;
            assert_eq!(seen.end["type"], "run:done", "{provider}: {}", seen.end);
            assert_eq!(seen.deltas.concat(), seen.end["text"].as_str().unwrap());
            assert!(!seen.deltas.is_empty());
            let usage = usage_of(&seen.end["usage"]);
            assert!(close_to(seen.end["cost_usd"].as_f64().unwrap(), TEST_PRICE.cost(&usage) as f64 / 1e6));
            usages.push(usage);
        }
        assert_eq!(usages[0].cache_read_tokens, 0, "{provider}");
        assert!(usages[1].cache_read_tokens > 0, "{provider}: the second call hit the prompt cache");
        let request = app.fake.requests().last().unwrap().body.clone();
        assert_eq!(request["stream"], true);
        if provider == Provider::OpenAiChat {
            assert_eq!(request["stream_options"]["include_usage"], true);
        }
    }
}

/// A stream cut after two deltas is retried: `run:started` again with `attempt: 2`, seq from
/// 0; the cut attempt is charged for what it used (its own cost event).
async fn cut_stream_is_retried_and_charged(db: Db) {
    for provider in Provider::ALL {
        let app = spawn_provider(db, provider, |c| c.retry_base = Duration::from_millis(20)).await;
        app.set_price(provider.default_model(), &TEST_PRICE).await;
        app.fake.set_stream_chunks(vec!["One. ".into(), "Two. ".into(), "Three. ".into(), "Four.".into()]);
        app.fake.push_modes([Mode::CutStream { after_chunks: 2 }]);
        let (mut ws, ack) = app.player("Writer").await;
        ws.send(start("p1", "WRITE", "count to four", json!(1))).await;
        let run_id = ws.recv_type("run:queued").await["run_id"].as_str().unwrap().to_owned();
        let seen = follow(&mut ws, &run_id).await;
        // Two run:started, unless the retry began before this client caught up (then the
        // catch-up holds the current attempt only).
        assert!((1..=2).contains(&seen.started.len()), "{provider}");
        assert_eq!(seen.started.last().unwrap()["attempt"], 2, "{provider}");
        assert_eq!(seen.deltas.concat(), "One. Two. Three. Four.");
        assert_eq!(seen.end["text"], "One. Two. Three. Four.");
        let run = app.run_json(ack["token"].as_str().unwrap(), &run_id).await;
        assert_eq!(run["attempts"], 2);
        let events = costs(&app, "p1").await["events"].as_array().unwrap().clone();
        assert_eq!(events.len(), 2, "{provider}: one cost event per charged attempt");
        // Newest first: the cut attempt is the second. It used input and the text received.
        let cut = usage_of(&events[1]["usage"]);
        assert!(cut.output_tokens >= "One. Two. ".len() as u64 / 4, "{provider}: {cut:?}");
        assert!(cut.input_tokens + cut.cache_read_tokens > 0, "{provider}: {cut:?}");
        assert!(events[1]["cost_usd"].as_f64().unwrap() > 0.0);
    }
}

/// Mid-stream errors fail the attempt; after LOREWIRE_MAX_ATTEMPTS the run is dead, listed
/// as a dead letter, and an admin retry runs it again to the end.
async fn mid_stream_errors_dead_letter_and_admin_retry(db: Db) {
    for provider in Provider::ALL {
        let app = spawn_provider(db, provider, |c| {
            c.retry_base = Duration::from_millis(20);
            c.max_attempts = 2;
            c.circuit_failures = 100;
        })
        .await;
        app.fake.set_mode(Mode::StreamError { after_chunks: 1 });
        let (mut ws, ack) = app.player("Writer").await;
        let token = ack["token"].as_str().unwrap().to_owned();
        ws.send(start("p1", "REWRITE", "the old text", json!(1))).await;
        let run_id = ws.recv_type("run:queued").await["run_id"].as_str().unwrap().to_owned();
        let seen = follow(&mut ws, &run_id).await;
        // The client may have caught up only once the second attempt began.
        assert!((1..=2).contains(&seen.started.len()), "{provider}");
        assert_eq!(seen.started.last().unwrap()["attempt"], 2, "{provider}");
        assert_eq!(seen.end["type"], "run:error", "{provider}: {}", seen.end);
        assert_eq!(seen.end["code"], "stream_error");
        assert_eq!(app.fake.request_count(), 2);

        let run = app.run_json(&token, &run_id).await;
        assert_eq!(run["status"], "dead");
        assert_eq!(run["attempts"], 2);
        assert_eq!(run["error"]["code"], "stream_error");
        let (_, dead) = app.admin_get("/admin/api/dead-letters").await;
        assert_eq!(dead["runs"].as_array().unwrap().len(), 1);
        assert_eq!(dead["runs"][0]["run_id"], run_id.as_str());

        app.fake.set_mode(Mode::Ok);
        let (status, body) = app.admin_post(&format!("/admin/api/dead-letters/{run_id}/retry")).await;
        assert_eq!(status, 202, "{body}");
        let run = app.final_run(&token, &run_id).await;
        assert_eq!(run["status"], "done", "{run}");
        assert_eq!(run["attempts"], 1);
        let (_, dead) = app.admin_get("/admin/api/dead-letters").await;
        assert_eq!(dead["runs"].as_array().unwrap().len(), 0);
        let (status, _) = app.admin_post(&format!("/admin/api/dead-letters/{run_id}/retry")).await;
        assert_eq!(status, 409, "only dead runs are re-queued");
    }
}

/// Retry n waits between 0.5x and 1x of base x 2^(n-1); attempts stop at the maximum.
async fn retries_back_off_within_bounds(db: Db) {
    let base = Duration::from_millis(250);
    let app = spawn_provider(db, Provider::Anthropic, |c| {
        c.retry_base = base;
        c.max_attempts = 4;
        c.circuit_failures = 100;
    })
    .await;
    app.fake.set_mode(Mode::Status(500));
    let token = app.player_token().await;
    let (status, body) =
        post_json(&app.url("/api/generate"), &token, &json!({"project_id": "p1", "action": "WRITE", "input": "x"}))
            .await;
    assert_eq!(status, 202, "{body}");
    let run = app.final_run(&token, body["run_id"].as_str().unwrap()).await;
    assert_eq!(run["status"], "dead");
    assert_eq!(run["attempts"], 4);
    assert_eq!(run["error"]["code"], "api_error_500");
    let times: Vec<Instant> = app.fake.requests().iter().map(|r| r.at).collect();
    assert_eq!(times.len(), 4);
    // Slack for the claim and the request itself on a loaded machine; the lower bound is exact.
    let slack = Duration::from_millis(400);
    for n in 1..=3u32 {
        let full = base * 2u32.pow(n - 1);
        let gap = times[n as usize] - times[n as usize - 1];
        assert!(gap >= full / 2, "retry {n} came after {gap:?}, before {:?}", full / 2);
        assert!(gap <= full + slack, "retry {n} came after {gap:?}, over {full:?}");
    }
}

/// Queued runs go REWRITE, then WRITE, then DESCRIBE, oldest first within an action.
async fn queued_runs_follow_priority(db: Db) {
    let app = spawn_provider(db, Provider::Anthropic, |c| {
        c.llm_concurrency = 1;
        c.llm_timeout = Duration::from_secs(5);
    })
    .await;
    // The blocker holds the only slot long enough for every other run to be queued behind it.
    app.fake.push_modes([Mode::Delay(Duration::from_secs(2))]);
    let token = app.player_token().await;
    let post = |action: &str, input: &str| {
        let body = json!({"project_id": "p1", "action": action, "input": input});
        let url = app.url("/api/generate");
        let token = token.clone();
        async move {
            let (status, body) = post_json(&url, &token, &body).await;
            assert_eq!(status, 202, "{body}");
            body
        }
    };
    post("WRITE", "blocker").await;
    eventually("the first run to be upstream", || async { (app.fake.request_count() == 1).then_some(()) }).await;
    let mut last = None;
    for (action, input) in [("DESCRIBE", "d1"), ("WRITE", "w1"), ("REWRITE", "r1"), ("WRITE", "w2"), ("REWRITE", "r2")]
    {
        last = Some(post(action, input).await);
    }
    assert_eq!(last.unwrap()["position"], 1, "the second REWRITE waits behind the first only");
    assert_eq!(app.fake.request_count(), 1, "the blocker must still hold the slot");
    eventually("every run to be upstream", || async { (app.fake.request_count() == 6).then_some(()) }).await;
    let order: Vec<String> = app
        .fake
        .requests()
        .iter()
        .map(|r| {
            let user = r.body["messages"][0]["content"].as_str().unwrap();
            ["blocker", "d1", "w1", "r1", "w2", "r2"]
                .into_iter()
                .find(|i| user.contains(&format!("\n\"{i}\"\n")))
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(order, ["blocker", "r1", "r2", "w1", "w2", "d1"]);
}

/// While the circuit is open a failed run waits queued without spending attempts, and goes
/// on once the circuit closes.
async fn open_circuit_keeps_runs_queued(db: Db) {
    let app = spawn_provider(db, Provider::Anthropic, |c| {
        c.retry_base = Duration::from_millis(20);
        c.circuit_failures = 1;
        c.max_attempts = 2;
    })
    .await;
    app.fake.set_mode(Mode::Status(503));
    let token = app.player_token().await;
    let (_, body) =
        post_json(&app.url("/api/generate"), &token, &json!({"project_id": "p1", "action": "WRITE", "input": "x"}))
            .await;
    let run_id = body["run_id"].as_str().unwrap().to_owned();
    eventually("the circuit to open", || async { (app.circuit().await["state"] == "open").then_some(()) }).await;
    actix_web::rt::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(app.fake.request_count(), 1, "no call while the circuit is open");
    let run = app.run_json(&token, &run_id).await;
    assert_eq!(run["status"], "queued", "{run}");
    assert_eq!(run["attempts"], 1);

    app.fake.set_mode(Mode::Ok);
    app.admin_post("/admin/api/llm/circuit/reset").await;
    let run = app.final_run(&token, &run_id).await;
    assert_eq!(run["status"], "done", "{run}");
    assert_eq!(run["attempts"], 2);
}

/// A 429 does not spend an attempt: the run waits out `retry-after`, then goes on.
async fn rate_limited_run_waits_without_spending_attempts(db: Db) {
    let app = spawn_provider(db, Provider::Anthropic, |c| c.max_attempts = 1).await;
    app.fake.push_modes([Mode::RateLimited { retry_after_secs: 1 }]);
    let token = app.player_token().await;
    let (_, body) =
        post_json(&app.url("/api/generate"), &token, &json!({"project_id": "p1", "action": "WRITE", "input": "x"}))
            .await;
    let run = app.final_run(&token, body["run_id"].as_str().unwrap()).await;
    assert_eq!(run["status"], "done", "with one attempt allowed, the 429 did not count: {run}");
    assert_eq!(run["attempts"], 1);
    let times: Vec<Instant> = app.fake.requests().iter().map(|r| r.at).collect();
    assert_eq!(times.len(), 2);
    assert!(times[1] - times[0] >= Duration::from_millis(900), "retry-after honoured: {:?}", times[1] - times[0]);
}

/// 100 concurrent runs against a budget with room for exactly 10 worst cases: 10 admitted,
/// 90 refused with `error:budget_exceeded` (HTTP 402 over REST), and spent + reserved never
/// passes the limit.
async fn budget_admits_exactly_what_fits(db: Db) {
    let app = spawn_provider(db, Provider::Anthropic, |c| {
        c.llm_timeout = Duration::from_secs(20);
        c.max_output_tokens = 500;
    })
    .await;
    let model = "claude-haiku-4-5-20251001";
    app.set_price(model, &TEST_PRICE).await;
    // Nothing settles while the requests come in, so what fits is exactly the reservations.
    app.fake.set_mode(Mode::Delay(Duration::from_secs(3)));
    let inputs: Vec<String> = (0..100).map(|i| format!("scene number {i:03}")).collect();
    let worst = TEST_PRICE
        .worst_case(prompt_token_bound(Action::Write.system_prompt(), &Action::Write.user_message(&inputs[0])), 500);
    let limit_micros = worst * 10 + worst / 2;
    let (status, budget) =
        app.admin_put("/admin/api/budgets/p1", json!({"limit_usd": limit_micros as f64 / 1e6})).await;
    assert_eq!(status, 200, "{budget}");
    assert_eq!(budget["spent_usd"], 0.0);

    // 100 sessions, then one generate:start from each, all at once.
    let mut sockets: Vec<WsClient> = Vec::with_capacity(100);
    for _ in 0..10 {
        let batch = futures_util::future::join_all((0..10).map(|_| app.player("Burst"))).await;
        sockets.extend(batch.into_iter().map(|(ws, _)| ws));
    }
    let (_, ack) = app.player("Rest").await;
    let token = ack["token"].as_str().unwrap().to_owned();
    let url = app.url("/api/generate");
    for (ws, input) in sockets.iter_mut().zip(&inputs) {
        ws.send(start("p1", "WRITE", input, json!(input))).await;
    }
    let answers = futures_util::future::join_all(sockets.iter_mut().map(|ws| ws.recv())).await;
    let admitted: Vec<&Value> = answers.iter().filter(|a| a["type"] == "run:queued").collect();
    let refused: Vec<&Value> = answers.iter().filter(|a| a["type"] == "error:budget_exceeded").collect();
    assert_eq!(admitted.len(), 10, "{answers:?}");
    assert_eq!(refused.len(), 90, "{answers:?}");
    assert!(refused.iter().chain(&admitted).all(|a| inputs.contains(&a["ref"].as_str().unwrap().to_owned())));

    let limit = limit_micros as f64 / 1e6;
    for run in &admitted {
        let run_id = run["run_id"].as_str().unwrap();
        loop {
            let (_, b) = app.admin_get("/admin/api/budgets/p1").await;
            let (spent, reserved) = (b["spent_usd"].as_f64().unwrap(), b["reserved_usd"].as_f64().unwrap());
            assert!(spent + reserved <= limit + 1e-9, "overshoot: {b}");
            if app.run_json(&token, run_id).await["status"] == "done" {
                break;
            }
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let (_, b) = app.admin_get("/admin/api/budgets/p1").await;
    assert_eq!(b["reserved_usd"], 0.0, "{b}");
    let total = costs(&app, "p1").await["total_usd"].as_f64().unwrap();
    assert!(close_to(b["spent_usd"].as_f64().unwrap(), total), "{b} vs {total}");
    assert!(total > 0.0 && total <= limit);
    assert_eq!(app.fake.request_count(), 10);

    // A model without a price is refused for a project with a budget (fail closed).
    app.admin_put("/admin/api/llm", json!({"model": "unpriced-model"})).await;
    let (status, body) =
        post_json(&url, &token, &json!({"project_id": "p1", "action": "WRITE", "input": "one more"})).await;
    assert_eq!(status, 402, "{body}");
    assert!(body["message"].as_str().unwrap().contains("price"));
    // ... but a project without a budget may use it.
    let (status, _) = post_json(&url, &token, &json!({"project_id": "p2", "action": "WRITE", "input": "free"})).await;
    assert_eq!(status, 202);
}

/// Sets a budget's `reserved` behind lorewire's back (a stand-in for drift left by a crash).
/// Through the store, so it waits out a write the stopped server may still be finishing.
async fn tamper_reserved(url: &str, micros: i64) {
    use diesel::{ExpressionMethods, RunQueryDsl};
    use lorewire::store::schema::budgets;
    let url = url.to_owned();
    actix_web::rt::task::spawn_blocking(move || {
        let store = lorewire::store::Store::connect(&url).unwrap();
        store
            .write_blocking(move |conn| {
                Ok(diesel::update(budgets::table).set(budgets::reserved_micros.eq(micros)).execute(conn)?)
            })
            .unwrap()
    })
    .await
    .unwrap();
}

/// At start, every budget's `reserved` is set to what its unfinished runs hold; the run then
/// continues and settles.
async fn reservations_are_reconciled_at_start(db: Db) {
    let mut app = spawn_provider(db, Provider::Anthropic, |c| {
        c.shutdown = Duration::from_secs(1);
        c.llm_timeout = Duration::from_secs(30);
    })
    .await;
    app.set_price("claude-haiku-4-5-20251001", &TEST_PRICE).await;
    app.admin_put("/admin/api/budgets/p1", json!({"limit_usd": 1.0})).await;
    app.fake.set_mode(Mode::Hang);
    let token = app.player_token().await;
    let input = "a run interrupted by a stop";
    let (_, body) =
        post_json(&app.url("/api/generate"), &token, &json!({"project_id": "p1", "action": "WRITE", "input": input}))
            .await;
    let run_id = body["run_id"].as_str().unwrap().to_owned();
    eventually("the call to be upstream", || async { (app.fake.request_count() == 1).then_some(()) }).await;
    let worst = TEST_PRICE.worst_case(
        prompt_token_bound(Action::Write.system_prompt(), &Action::Write.user_message(input)),
        u64::from(app.config.max_output_tokens),
    );
    let (_, budget) = app.admin_get("/admin/api/budgets/p1").await;
    assert!(close_to(budget["reserved_usd"].as_f64().unwrap(), worst as f64 / 1e6), "{budget}");

    app.stop().await;
    tamper_reserved(&app.db.url, 777_777).await;
    app.fake.set_mode(Mode::Delay(Duration::from_millis(1500)));
    app.restart(std::sync::Arc::new(lorewire::core::clock::SystemClock)).await;
    let (_, budget) = app.admin_get("/admin/api/budgets/p1").await;
    assert!(close_to(budget["reserved_usd"].as_f64().unwrap(), worst as f64 / 1e6), "reconciled: {budget}");

    let run = app.final_run(&token, &run_id).await;
    assert_eq!(run["status"], "done", "{run}");
    let (_, budget) = app.admin_get("/admin/api/budgets/p1").await;
    assert_eq!(budget["reserved_usd"], 0.0, "{budget}");
    assert!(close_to(budget["spent_usd"].as_f64().unwrap(), run["cost_usd"].as_f64().unwrap()), "{budget} {run}");
}

/// `generate:abort` mid-stream: the run ends aborted, charged for the text received; closing
/// the socket does the same. A REST run is not aborted by anyone leaving.
async fn abort_mid_stream_charges_partial_usage(db: Db) {
    let app = spawn_provider(db, Provider::OpenAi, |_| {}).await;
    app.set_price("gpt-5-mini", &TEST_PRICE).await;
    app.fake.set_stream_chunks((0..40).map(|i| format!("word{i:02} ")).collect());
    app.fake.set_chunk_pause(Some(Duration::from_millis(50)));
    let (mut ws, ack) = app.player("Writer").await;
    let token = ack["token"].as_str().unwrap().to_owned();

    ws.send(start("p1", "WRITE", "a long saga", json!(1))).await;
    let run_id = ws.recv_type("run:queued").await["run_id"].as_str().unwrap().to_owned();
    ws.recv_type("run:delta").await;
    ws.recv_type("run:delta").await;
    ws.send(json!({"type": "generate:abort", "run_id": run_id, "ref": "stop"})).await;
    let reply = ws.recv_type("run:error").await;
    assert_eq!(reply["ref"], "stop");
    assert_eq!(reply["code"], "aborted");
    let run = app.final_run(&token, &run_id).await;
    assert_eq!(run["status"], "aborted", "{run}");
    let usage = usage_of(&run["usage"]);
    assert!(usage.output_tokens > 0 && usage.output_tokens < 40 * 8 / 4, "{run}");
    assert!(usage.input_tokens > 0, "input estimated from the prompt when the stream never reported it");
    assert!(run["cost_usd"].as_f64().unwrap() > 0.0);
    assert_eq!(costs(&app, "p1").await["events"].as_array().unwrap().len(), 1);

    // Closing the socket aborts its run too.
    let (mut ws2, _) = app.player("Leaver").await;
    ws2.send(start("p1", "WRITE", "another saga", json!(2))).await;
    let run2 = ws2.recv_type("run:queued").await["run_id"].as_str().unwrap().to_owned();
    ws2.recv_type("run:delta").await;
    ws2.close().await;
    let run = app.final_run(&token, &run2).await;
    assert_eq!(run["status"], "aborted", "{run}");

    // While a joiner still waits, one session leaving does not abort the run.
    let (mut a, _) = app.player("Starter").await;
    let (mut b, _) = app.player("Joiner").await;
    a.send(start("p1", "WRITE", "a shared saga", json!("a"))).await;
    let shared = a.recv_type("run:queued").await["run_id"].as_str().unwrap().to_owned();
    b.send(start("p1", "WRITE", "a shared saga", json!("b"))).await;
    assert_eq!(b.recv_type("run:queued").await["run_id"], shared.as_str());
    a.recv_type("run:delta").await;
    a.send(json!({"type": "generate:abort", "run_id": shared})).await;
    assert_eq!(a.recv_type("run:error").await["code"], "aborted");
    app.fake.set_chunk_pause(Some(Duration::from_millis(2)));
    let seen = follow(&mut b, &shared).await;
    assert_eq!(seen.end["type"], "run:done", "the joiner still waited: {}", seen.end);
    assert_eq!(app.run_json(&token, &shared).await["status"], "done");

    // A REST run runs to its end.
    let (_, body) =
        post_json(&app.url("/api/generate"), &token, &json!({"project_id": "p1", "action": "WRITE", "input": "rest"}))
            .await;
    let run = app.final_run(&token, body["run_id"].as_str().unwrap()).await;
    assert_eq!(run["status"], "done");
}

/// Identical requests while running join one run (one upstream call, both get every frame);
/// after it finished they are answered from storage at no cost, unless `skip_cache`.
async fn duplicates_join_and_replay(db: Db) {
    let app = spawn_provider(db, Provider::Anthropic, |_| {}).await;
    app.fake.set_stream_chunks((0..10).map(|i| format!("part{i} ")).collect());
    app.fake.set_chunk_pause(Some(Duration::from_millis(30)));
    let (mut a, _) = app.player("A").await;
    let (mut b, _) = app.player("B").await;
    a.send(start("p1", "DESCRIBE", "the moon gate", json!("a"))).await;
    let run_id = a.recv_type("run:queued").await["run_id"].as_str().unwrap().to_owned();
    let first = a.recv_type("run:delta").await;
    assert_eq!(first["seq"], 0);
    // B joins late: it still gets every delta from seq 0.
    b.send(start("p1", "DESCRIBE", "the moon gate", json!("b"))).await;
    let joined = b.recv_type("run:queued").await;
    assert_eq!(joined["run_id"], run_id.as_str());
    assert_eq!(joined["ref"], "b");
    let seen_b = follow(&mut b, &run_id).await;
    let seen_a = follow_after(&mut a, &run_id, vec![first["text"].as_str().unwrap().to_owned()]).await;
    assert_eq!(seen_b.end["type"], "run:done");
    assert_eq!(seen_b.deltas.concat(), seen_b.end["text"].as_str().unwrap());
    assert_eq!(seen_b.deltas.len(), 10);
    assert_eq!(seen_a.end["text"], seen_b.end["text"]);
    assert_eq!(seen_a.deltas, seen_b.deltas);
    assert_eq!(app.fake.request_count(), 1);

    // Finished: replayed from storage, free.
    a.send(start("p1", "DESCRIBE", "the moon gate", json!("again"))).await;
    let queued = a.recv_type("run:queued").await;
    assert_eq!(queued["run_id"], run_id.as_str());
    let replay = follow(&mut a, &run_id).await;
    assert_eq!(replay.end["cached"], true);
    assert_eq!(replay.end["cost_usd"], 0.0);
    assert_eq!(replay.end["text"], seen_b.end["text"]);
    assert_eq!(replay.deltas.concat(), seen_b.end["text"].as_str().unwrap());
    assert_eq!(app.fake.request_count(), 1);

    // Another project, action or input is not a duplicate; skip_cache makes a new run.
    a.send(json!({"type": "generate:start", "project_id": "p1", "action": "DESCRIBE", "input": "the moon gate",
                  "skip_cache": true}))
        .await;
    let fresh = a.recv_type("run:queued").await["run_id"].as_str().unwrap().to_owned();
    assert_ne!(fresh, run_id);
    assert_eq!(follow(&mut a, &fresh).await.end["type"], "run:done");
    a.send(start("p2", "DESCRIBE", "the moon gate", json!(3))).await;
    let other = a.recv_type("run:queued").await["run_id"].as_str().unwrap().to_owned();
    assert_eq!(follow(&mut a, &other).await.end["type"], "run:done");
    assert_eq!(app.fake.request_count(), 3);
}

/// REST start, the run's events as SSE (also for a subscriber who comes late), GET the run.
async fn rest_run_with_server_sent_events(db: Db) {
    let app = spawn_provider(db, Provider::OpenAiChat, |_| {}).await;
    app.fake.set_stream_chunks((0..8).map(|i| format!("line {i}\n")).collect());
    app.fake.set_chunk_pause(Some(Duration::from_millis(40)));
    let token = app.player_token().await;
    let (status, body) = post_json(
        &app.url("/api/generate"),
        &token,
        &json!({"project_id": "p1", "action": "WRITE", "input": "a poem"}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["position"], 0);
    let run_id = body["run_id"].as_str().unwrap().to_owned();
    eventually("some output", || async { (app.run_json(&token, &run_id).await["status"] == "running").then_some(()) })
        .await;
    actix_web::rt::time::sleep(Duration::from_millis(150)).await;

    let events_url = app.url(&format!("/api/runs/{run_id}/events"));
    let mut resp = http().get(&events_url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers().get("content-type").unwrap(), "text/event-stream");
    let body = String::from_utf8(resp.body().limit(1 << 20).await.unwrap().to_vec()).unwrap();
    let events: Vec<(String, Value)> = body
        .split("\n\n")
        .filter(|e| e.starts_with("event:"))
        .map(|e| {
            let (name, data) = e.split_once('\n').unwrap();
            let data = data.strip_prefix("data: ").unwrap();
            (name.trim_start_matches("event: ").to_owned(), serde_json::from_str(data).unwrap())
        })
        .collect();
    let deltas: Vec<&Value> = events.iter().filter(|(n, _)| n == "delta").map(|(_, v)| v).collect();
    for (i, d) in deltas.iter().enumerate() {
        assert_eq!(d["seq"], i, "late subscriber gets every delta from seq 0: {body}");
        assert_eq!(d["type"], "run:delta");
    }
    let (last_name, done) = events.last().unwrap();
    assert_eq!(last_name, "done", "{body}");
    let text: String = deltas.iter().map(|d| d["text"].as_str().unwrap()).collect();
    assert_eq!(text, done["text"].as_str().unwrap());
    assert_eq!(deltas.len(), 8);

    // After the end, the events are rebuilt from storage.
    let mut resp = http().get(&events_url).bearer_auth(&token).send().await.unwrap();
    let again = String::from_utf8(resp.body().await.unwrap().to_vec()).unwrap();
    assert!(again.contains("event: done"), "{again}");
    let run = app.run_json(&token, &run_id).await;
    assert_eq!(run["text"], done["text"]);

    // A player token is needed.
    let (status, _) = get_json(&app.url(&format!("/api/runs/{run_id}")), None).await;
    assert_eq!(status, 401);
}

/// No API key: `run:error` with `no_config` at once, no upstream call.
async fn no_api_key_fails_at_once(db: Db) {
    let app = spawn_provider(db, Provider::Anthropic, |c| c.llm_api_key = None).await;
    let (mut ws, _) = app.player("Writer").await;
    ws.send(start("p1", "WRITE", "anything", json!(9))).await;
    let error = ws.recv().await;
    assert_eq!(error["type"], "run:error", "{error}");
    assert_eq!(error["ref"], 9);
    assert_eq!(error["code"], "no_config");
    assert_eq!(app.fake.request_count(), 0);
}

/// Over LOREWIRE_QUEUE_LIMIT queued runs: `error:overloaded` (HTTP 429).
async fn full_queue_is_overloaded(db: Db) {
    let app = spawn_provider(db, Provider::Anthropic, |c| {
        c.llm_concurrency = 1;
        c.queue_limit = 1;
        c.llm_timeout = Duration::from_secs(30);
    })
    .await;
    app.fake.set_mode(Mode::Hang);
    let (mut ws, ack) = app.player("Writer").await;
    let token = ack["token"].as_str().unwrap().to_owned();
    let url = app.url("/api/generate");
    let post = |input: &str| {
        let body = json!({"project_id": "p1", "action": "WRITE", "input": input});
        let (url, token) = (url.clone(), token.clone());
        async move { post_json(&url, &token, &body).await }
    };
    assert_eq!(post("one").await.0, 202);
    eventually("the first run to be upstream", || async { (app.fake.request_count() == 1).then_some(()) }).await;
    assert_eq!(post("two").await.0, 202);
    let (status, body) = post("three").await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"], "overloaded");
    ws.send(start("p1", "WRITE", "four", json!(4))).await;
    let error = ws.recv().await;
    assert_eq!(error["type"], "error:overloaded", "{error}");
    assert_eq!(error["ref"], 4);
}

/// Bad input gets a clear error and stores nothing.
async fn bad_input_is_refused(db: Db) {
    let app = spawn_provider(db, Provider::Anthropic, |_| {}).await;
    let (mut ws, ack) = app.player("Writer").await;
    let token = ack["token"].as_str().unwrap().to_owned();
    let cases = [
        (start("p1", "SING", "x", json!(1)), "SING"),
        (start("p1", "WRITE", "   ", json!(2)), "empty"),
        (start("p1", "WRITE", &"x".repeat(16_001), json!(3)), "at most 16000"),
        (start("", "WRITE", "x", json!(4)), "project_id"),
        (json!({"type": "generate:start", "project_id": "p1", "action": "WRITE", "ref": 5}), "input"),
    ];
    for (frame, needle) in cases {
        ws.send(frame.clone()).await;
        let error = ws.recv().await;
        assert_eq!(error["type"], "error:invalid_payload", "{error}");
        assert_eq!(error["ref"], frame["ref"]);
        assert!(error["message"].as_str().unwrap().contains(needle), "{error}");
    }
    ws.send(json!({"type": "generate:abort", "run_id": "run_nope", "ref": 6})).await;
    assert_eq!(ws.recv().await["type"], "error:not_found");

    let (status, body) =
        post_json(&app.url("/api/generate"), &token, &json!({"project_id": "p1", "action": "WRITE", "input": ""}))
            .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_payload");
    let (status, _) = get_json(&app.url("/api/runs/run_nope"), Some(&token)).await;
    assert_eq!(status, 404);
    let (status, _) = get_json(&app.url("/api/runs/run_nope/events"), Some(&token)).await;
    assert_eq!(status, 404);
    let (_, list) = app.admin_get("/admin/api/runs").await;
    assert_eq!(list["runs"].as_array().unwrap().len(), 0);

    for bad in [json!({"limit_usd": -1}), json!({"limit_usd": "ten"}), json!({}), json!({"limit_usd": null})] {
        let (status, body) = app.admin_put("/admin/api/budgets/p1", bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["message"].as_str().unwrap().contains("limit_usd"), "{body}");
    }
    let (status, body) = app.admin_put("/admin/api/budgets/p1", json!([5.0])).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_payload")), "{body}");
    let (_, budget) = app.admin_get("/admin/api/budgets/p1").await;
    assert_eq!(budget["limit_usd"], Value::Null, "nothing stored: {budget}");

    let good = json!({"input_usd": 1.0, "output_usd": 2.0, "cache_read_usd": 0.1, "cache_write_usd": 1.25});
    for (field, value) in [("input_usd", json!(-0.5)), ("output_usd", json!("2")), ("cache_read_usd", Value::Null)] {
        let mut body = good.clone();
        body[field] = value;
        let (status, resp) = app.admin_put("/admin/api/prices/new-model", body).await;
        assert_eq!(status, 400, "{resp}");
        assert!(resp["message"].as_str().unwrap().contains(field), "{resp}");
    }
    let (_, prices) = app.admin_get("/admin/api/prices").await;
    assert!(prices.get("new-model").is_none(), "nothing stored: {prices}");
    // The built-in prices of the default models.
    assert_eq!(prices["claude-haiku-4-5-20251001"]["input_usd"], 1.0);
    assert_eq!(prices["gpt-5-mini"]["output_usd"], 2.0);
    let (status, _) = app.admin_put("/admin/api/prices/new-model", good.clone()).await;
    assert_eq!(status, 200);
    let (_, prices) = app.admin_get("/admin/api/prices").await;
    assert_eq!(prices["new-model"], good);

    let (status, _) = app.admin_get("/admin/api/runs?status=sleeping").await;
    assert_eq!(status, 400);
    let (status, _) = app.admin_get("/admin/api/runs?limit=-3").await;
    assert_eq!(status, 400);
    let (status, _) = app.admin_get("/admin/api/runs?limit=1.5").await;
    assert_eq!(status, 400);
    // Empty filters (as a form sends them) are the defaults, as the document says.
    for path in ["/admin/api/runs?project_id=&status=&limit=", "/admin/api/costs?project_id=&limit="] {
        let (status, body) = app.admin_get(path).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    let (status, _) = app.admin_post("/admin/api/dead-letters/run_nope/retry").await;
    assert_eq!(status, 404);
    let (status, _) = get_json(&app.url("/admin/api/prices"), None).await;
    assert_eq!(status, 401);
}

both_backends!(
    ws_run_streams_and_is_charged,
    openai_formats_stream_with_cached_usage,
    cut_stream_is_retried_and_charged,
    mid_stream_errors_dead_letter_and_admin_retry,
    retries_back_off_within_bounds,
    queued_runs_follow_priority,
    open_circuit_keeps_runs_queued,
    rate_limited_run_waits_without_spending_attempts,
    budget_admits_exactly_what_fits,
    reservations_are_reconciled_at_start,
    abort_mid_stream_charges_partial_usage,
    duplicates_join_and_replay,
    rest_run_with_server_sent_events,
    no_api_key_fails_at_once,
    full_queue_is_overloaded,
    bad_input_is_refused,
);

/// PostgreSQL, two processes on one database: a run started on one and streamed by the other
/// reaches the waiting client live, delta by delta (LISTEN/NOTIFY), and a client joining it late
/// on the first process gets the text so far then the rest, without gaps or repeats.
#[actix_web::test]
async fn postgres_run_streamed_by_another_process_reaches_the_client_live() {
    run_streamed_by_another_process_reaches_the_client_live(None).await;
}

/// The same over a backplane of Redis at `redis` (`url`, `prefix`) when given.
pub(crate) async fn run_streamed_by_another_process_reaches_the_client_live(redis: Option<(String, String)>) {
    let app = spawn_provider(Db::Postgres, Provider::Anthropic, |c| {
        c.llm_concurrency = 1;
        c.llm_timeout = Duration::from_secs(30);
        if let Some((url, prefix)) = redis {
            c.redis_url = Some(url);
            c.redis_prefix = prefix;
        }
    })
    .await;
    let chunks: Vec<String> = (0..20).map(|i| format!("line{i:02} ")).collect();
    app.fake.set_stream_chunks(chunks.clone());
    app.fake.set_chunk_pause(Some(Duration::from_millis(60)));
    // This process's only slot hangs on a first run.
    app.fake.push_modes([Mode::Hang]);
    let (mut ws, ack) = app.player("Writer").await;
    let token = ack["token"].as_str().unwrap().to_owned();
    ws.send(start("p1", "WRITE", "the run that hangs", json!(1))).await;
    ws.recv_type("run:queued").await;
    eventually("the first run to be upstream", || async { (app.fake.request_count() == 1).then_some(()) }).await;

    let mut other_config = app.config.clone();
    other_config.bind = "127.0.0.1:0".parse().unwrap();
    let other = lorewire::app::start(other_config.clone(), std::sync::Arc::new(lorewire::core::clock::SystemClock))
        .await
        .unwrap();
    // A third process, with a client that joins the run too.
    let third =
        lorewire::app::start(other_config, std::sync::Arc::new(lorewire::core::clock::SystemClock)).await.unwrap();

    ws.send(start("p1", "DESCRIBE", "the run the other process takes", json!(2))).await;
    let run_id = ws.recv_type("run:queued").await["run_id"].as_str().unwrap().to_owned();
    let first = ws.recv_type("run:delta").await;
    assert_eq!(first["seq"], 0, "{first}");
    // Live: the run is still streaming when its first delta arrives here.
    assert_eq!(app.run_json(&token, &run_id).await["status"], "running");

    // A second client on this process joins half-way through.
    actix_web::rt::time::sleep(Duration::from_millis(400)).await;
    let (mut late, _) = app.player("Late").await;
    late.send(start("p1", "DESCRIBE", "the run the other process takes", json!(3))).await;
    assert_eq!(late.recv_type("run:queued").await["run_id"], run_id.as_str());

    let seen = follow_after(&mut ws, &run_id, vec![first["text"].as_str().unwrap().to_owned()]).await;
    assert_eq!(seen.end["type"], "run:done", "{}", seen.end);
    assert_eq!(seen.deltas.concat(), seen.end["text"].as_str().unwrap());
    assert_eq!(seen.deltas, chunks, "every delta as streamed, none merged or repeated");
    let mut far = crate::common::WsClient::connect(&format!("http://{}/ws", third.addr)).await;
    far.send(json!({"type": "session:start", "nickname": "Far"})).await;
    far.recv_type("session:ack").await;
    far.send(start("p1", "DESCRIBE", "the run the other process takes", json!(4))).await;
    assert_eq!(far.recv_type("run:queued").await["run_id"], run_id.as_str());
    let joined = follow(&mut late, &run_id).await;
    assert_eq!(joined.started.len(), 1);
    assert_eq!(joined.deltas, chunks, "the late client got the text so far then the rest");
    assert_eq!(joined.end["type"], "run:done");
    ws.expect_silence(Duration::from_millis(200)).await;
    assert_eq!(app.fake.request_count(), 2);
    let far = follow(&mut far, &run_id).await;
    // The text so far may come as one delta: no gap and no repeat is what counts.
    assert_eq!(far.deltas.concat(), chunks.concat(), "the client on the third process got the whole text once");
    assert_eq!(far.end["type"], "run:done");
    other.shutdown().await;
    third.shutdown().await;
}

/// A socket that closes while its `generate:start` is being admitted (the row is committed after
/// the session stopped) does not leave the run waiting on a session that is gone: it is aborted.
#[actix_web::test]
async fn postgres_socket_closed_during_admission_aborts_its_run() {
    use diesel::connection::SimpleConnection;
    use diesel::Connection;

    let app = spawn_provider(Db::Postgres, Provider::Anthropic, |_| {}).await;
    app.set_price(&app.config.llm_model.clone(), &TEST_PRICE).await;
    let (status, body) = app.admin_put("/admin/api/budgets/p1", json!({"limit_usd": 100})).await;
    assert_eq!(status, 200, "{body}");
    app.fake.set_stream_chunks((0..30).map(|i| format!("word{i:02} ")).collect());
    app.fake.set_chunk_pause(Some(Duration::from_millis(50)));

    // Holding the budget row keeps the admission (which reserves on it) from committing.
    let url = app.config.database_url.clone();
    let mut lock = diesel::PgConnection::establish(&url).unwrap();
    lock.batch_execute("BEGIN; SELECT 1 FROM budgets WHERE project_id = 'p1' FOR UPDATE").unwrap();
    let (mut ws, _) = app.player("Leaver").await;
    ws.send(start("p1", "WRITE", "a saga nobody waits for", json!(1))).await;
    actix_web::rt::time::sleep(Duration::from_millis(200)).await;
    ws.close().await;
    eventually("the session to stop", || async {
        let body = http().get(app.url("/metrics")).send().await.ok()?.body().await.ok()?;
        String::from_utf8_lossy(&body).lines().any(|l| l == "lorewire_sessions_open 0").then_some(())
    })
    .await;
    lock.batch_execute("ROLLBACK").unwrap();

    let run_id = eventually("the run to be admitted", || async {
        let (_, list) = app.admin_get("/admin/api/runs?project_id=p1").await;
        list["runs"][0]["run_id"].as_str().map(str::to_owned)
    })
    .await;
    let token = app.player_token().await;
    let run = app.final_run(&token, &run_id).await;
    assert_eq!(run["status"], "aborted", "{run}");
    let (_, budget) = app.admin_get("/admin/api/budgets/p1").await;
    assert_eq!(budget["reserved_usd"], 0.0, "{budget}");
}
