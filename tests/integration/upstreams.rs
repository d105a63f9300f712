//! Several upstreams (PROTOCOL §7): content ready through the next upstream when one fails,
//! an open, rate-limited or parked upstream skipped, the hop limit, weights within a tier, the
//! answering model's price, and the admin routes adding, changing and removing upstreams on a
//! running server while `/admin/api/llm` stays the view of the first.

use serde_json::{json, Value};

use crate::common::fake_llm::FakeUsage;
use crate::common::*;

const SECOND_KEY: &str = "sk-second-key-000-4321";

async fn app_with(db: Db, configure: impl FnOnce(&mut lorewire::core::config::Config)) -> TestApp {
    spawn_with(Setup::new(db), configure).await
}

/// Adds an upstream pointing at `fake` (Anthropic wire format); answers its id.
async fn add(app: &TestApp, fake: &FakeLlm, model: &str, extra: Value) -> i64 {
    let mut body = json!({
        "provider": "anthropic",
        "base_url": fake.anthropic_base_url(),
        "model": model,
        "api_key": SECOND_KEY,
    });
    body.as_object_mut().unwrap().extend(extra.as_object().cloned().unwrap_or_default());
    let (status, upstream) = post_json(&app.url("/admin/api/upstreams"), ADMIN_TOKEN, &body).await;
    assert_eq!(status, 201, "{upstream}");
    upstream["id"].as_i64().unwrap()
}

async fn upstream(app: &TestApp, id: i64) -> Value {
    let (status, upstream) = app.admin_get(&format!("/admin/api/upstreams/{id}")).await;
    assert_eq!(status, 200, "{upstream}");
    upstream
}

async fn metrics_text(app: &TestApp) -> String {
    let mut resp = http().get(app.url("/metrics")).send().await.unwrap();
    String::from_utf8(resp.body().await.unwrap().to_vec()).unwrap()
}

async fn delete(app: &TestApp, path: &str) -> (u16, Value) {
    let mut resp = http().delete(app.url(path)).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// The first answers 500, the second (a lower tier) answers: ready through the second, one
/// call on each; the counters and the first's last error say so; keys never come back. With a
/// third tier and two hops, nothing beyond the second is tried.
async fn content_is_ready_through_the_next_upstream(db: Db) {
    let app = app_with(db, |c| c.llm_hops = 2).await;
    let second = FakeLlm::start();
    let third = FakeLlm::start();
    let second_id = add(&app, &second, "second-model", json!({"priority": 1})).await;
    add(&app, &third, "third-model", json!({"priority": 2})).await;
    let token = app.player_token().await;
    app.fake.set_mode(Mode::Status(500));

    let item = app.content_final(&token, "quest", 1, json!({})).await;
    assert_eq!((item["status"].as_str(), item["model"].as_str()), (Some("ready"), Some("second-model")), "{item}");
    assert_eq!((app.fake.request_count(), second.request_count(), third.request_count()), (1, 1, 0));

    let (status, list) = app.admin_get("/admin/api/upstreams").await;
    assert_eq!(status, 200, "{list}");
    let text = list.to_string();
    assert!(!text.contains(API_KEY) && !text.contains(SECOND_KEY) && !text.contains("\"api_key\""), "{text}");
    let list = list["upstreams"].as_array().unwrap();
    assert_eq!(list.iter().map(|u| u["priority"].as_i64().unwrap()).collect::<Vec<_>>(), [0, 1, 2]);
    let (first, second_view) = (&list[0], &list[1]);
    assert_eq!(
        (first["id"].as_i64(), first["calls"].as_u64(), first["failures"].as_u64()),
        (Some(1), Some(1), Some(1))
    );
    assert!(first["last_error"].as_str().unwrap().contains("500"), "{first}");
    assert_eq!((second_view["id"].as_i64(), second_view["calls"].as_u64()), (Some(second_id), Some(1)));
    assert_eq!(second_view["failures"], 0);
    for view in [first, second_view] {
        assert!(view["latency_ms"].as_f64().is_some_and(|ms| ms > 0.0), "timed: {view}");
    }
    assert_eq!(list[2]["latency_ms"], Value::Null, "not called: {}", list[2]);
    assert_eq!(
        (second_view["api_key_set"].as_bool(), second_view["api_key_last4"].as_str()),
        (Some(true), Some("4321"))
    );
    assert_eq!(second_view["circuit"]["state"], "closed");
    let metrics = metrics_text(&app).await;
    for (upstream, outcome) in [("1", "api_error_500"), (&*second_id.to_string(), "ok")] {
        let labels = [format!("upstream=\"{upstream}\""), format!("outcome=\"{outcome}\"")];
        let found = metrics.lines().any(|l| {
            l.starts_with("lorewire_upstream_calls_by_upstream_total{")
                && labels.iter().all(|label| l.contains(label.as_str()))
                && l.ends_with(" 1")
        });
        assert!(found, "{upstream} {outcome}:\n{metrics}");
    }

    // Two hops: the second failing too, the third is never tried; the reason is the second's.
    second.set_mode(Mode::Status(503));
    let item = app.content_final(&token, "quest", 2, json!({})).await;
    assert_eq!((item["status"].as_str(), item["reason"].as_str()), (Some("fallback"), Some("api_error_503")), "{item}");
    assert_eq!((app.fake.request_count(), second.request_count(), third.request_count()), (2, 2, 0));
}

/// An answer still invalid after the re-ask, and a hanging upstream (a timeout), move the call
/// on too; another 4xx ends it where it is.
async fn invalid_answers_and_timeouts_move_on(db: Db) {
    let app = app_with(db, |c| c.llm_timeout = std::time::Duration::from_millis(500)).await;
    let second = FakeLlm::start();
    add(&app, &second, "second-model", json!({"priority": 1})).await;
    let token = app.player_token().await;
    app.fake.set_mode(Mode::SchemaInvalid);
    assert_eq!(app.content_final(&token, "quest", 1, json!({})).await["model"], "second-model");
    assert_eq!((app.fake.request_count(), second.request_count()), (2, 1), "the call and its re-ask, then the next");

    app.fake.set_mode(Mode::Hang);
    assert_eq!(app.content_final(&token, "quest", 2, json!({})).await["model"], "second-model");
    assert_eq!((app.fake.request_count(), second.request_count()), (3, 2));
    assert!(upstream(&app, 1).await["last_error"].as_str().unwrap().contains("timeout"));

    app.fake.set_mode(Mode::Status(422));
    assert_eq!(app.content_final(&token, "quest", 3, json!({})).await["reason"], "api_error_422");
    assert_eq!((app.fake.request_count(), second.request_count()), (4, 2), "a 422 is not moved on");
}

/// A run whose stream fails (a 500, or cut after a delta) starts its next attempt on the next
/// upstream at once, without the retry backoff, and ends there; the failed upstream's
/// `last_error` says why.
async fn a_failing_run_restarts_on_the_next_upstream(db: Db) {
    let app = app_with(db, |c| {
        // A backoff no test would wait for: the move to another upstream must not take it.
        c.retry_base = std::time::Duration::from_secs(600);
        c.circuit_failures = 100;
    })
    .await;
    let second = FakeLlm::start();
    let second_id = add(&app, &second, "second-model", json!({"priority": 1})).await;
    let token = app.player_token().await;
    for (i, mode) in [Mode::Status(500), Mode::CutStream { after_chunks: 1 }].into_iter().enumerate() {
        app.fake.set_mode(mode);
        let body = json!({"project_id": "p1", "action": "WRITE", "input": format!("a bell, take {i}")});
        let (status, run) = post_json(&app.url("/api/generate"), &token, &body).await;
        assert_eq!(status, 202, "{run}");
        let run = app.final_run(&token, run["run_id"].as_str().unwrap()).await;
        assert_eq!((run["status"].as_str(), run["attempts"].as_i64()), (Some("done"), Some(2)), "{run}");
        assert_eq!((app.fake.request_count(), second.request_count()), (i + 1, i + 1));
    }
    let (first, second_view) = (upstream(&app, 1).await, upstream(&app, second_id).await);
    assert!(first["last_error"].as_str().unwrap().contains("stream_cut"), "{first}");
    assert_eq!((first["calls"].as_u64(), first["failures"].as_u64()), (Some(2), Some(2)), "{first}");
    assert_eq!(second_view["last_error"], Value::Null);
    assert_eq!((second_view["calls"].as_u64(), second_view["failures"].as_u64()), (Some(2), Some(0)));
}

/// An upstream whose circuit is open gets no call; with every circuit open, nothing is tried
/// and the reason is `circuit_open`; resetting one closes it.
async fn an_open_upstream_gets_no_call(db: Db) {
    let app = app_with(db, |c| c.circuit_failures = 1).await;
    let second = FakeLlm::start();
    let second_id = add(&app, &second, "second-model", json!({"priority": 1})).await;
    let token = app.player_token().await;
    app.fake.set_mode(Mode::Status(500));
    assert_eq!(app.content_final(&token, "quest", 1, json!({})).await["status"], "ready");
    assert_eq!(upstream(&app, 1).await["circuit"]["state"], "open");
    assert_eq!(app.circuit().await["state"], "open", "/admin/api/llm shows the first's circuit");

    assert_eq!(app.content_final(&token, "quest", 2, json!({})).await["model"], "second-model");
    assert_eq!((app.fake.request_count(), second.request_count()), (1, 2), "the open upstream got no call");

    second.set_mode(Mode::Status(502));
    assert_eq!(app.content_final(&token, "quest", 3, json!({})).await["reason"], "api_error_502");
    assert_eq!(upstream(&app, second_id).await["circuit"]["state"], "open");
    assert_eq!(app.content_final(&token, "quest", 4, json!({})).await["reason"], "circuit_open");
    assert_eq!((app.fake.request_count(), second.request_count()), (1, 3));

    let (status, reset) = app.admin_post(&format!("/admin/api/upstreams/{second_id}/circuit/reset")).await;
    assert_eq!((status, reset["circuit"]["state"].as_str()), (200, Some("closed")), "{reset}");
    second.set_mode(Mode::Ok);
    assert_eq!(app.content_final(&token, "quest", 5, json!({})).await["model"], "second-model");
    assert_eq!((app.fake.request_count(), second.request_count()), (1, 4));
}

/// Each upstream's circuit is its own and outlives a restart: the second opens while the first
/// stays closed, and after a restart the second is still open and gets no call.
async fn each_circuit_is_kept_across_a_restart(db: Db) {
    let mut app = app_with(db, |c| c.circuit_failures = 1).await;
    let second = FakeLlm::start();
    let second_id = add(&app, &second, "second-model", json!({"priority": 1})).await;
    let token = app.player_token().await;
    second.set_mode(Mode::Status(500));
    // The first disabled: every call goes to the second.
    let (status, _) = app.admin_put("/admin/api/upstreams/1", json!({"enabled": false})).await;
    assert_eq!(status, 200);
    assert_eq!(app.content_final(&token, "quest", 1, json!({})).await["reason"], "api_error_500");
    assert_eq!(upstream(&app, second_id).await["circuit"]["state"], "open");
    assert_eq!(upstream(&app, 1).await["circuit"]["state"], "closed");

    app.restart(std::sync::Arc::new(lorewire::core::clock::SystemClock)).await;
    let opened = upstream(&app, second_id).await;
    assert_eq!(opened["circuit"]["state"], "open", "{opened}");
    assert!(opened["last_error"].as_str().unwrap().contains("500"), "{opened}");
    assert_eq!(opened["calls"], 0, "counted since this process started");
    second.set_mode(Mode::Ok);
    let token = app.player_token().await;
    assert_eq!(app.content_final(&token, "quest", 2, json!({})).await["reason"], "circuit_open");
    assert_eq!((app.fake.request_count(), second.request_count()), (0, 1));
}

/// A 429 parks only that upstream until its `retry-after`: the next item goes straight to the
/// other one.
async fn a_429_parks_only_that_upstream(db: Db) {
    let app = app_with(db, |_| {}).await;
    let second = FakeLlm::start();
    let second_id = add(&app, &second, "second-model", json!({"priority": 1})).await;
    let token = app.player_token().await;
    app.fake.set_mode(Mode::RateLimited { retry_after_secs: 60 });
    assert_eq!(app.content_final(&token, "quest", 1, json!({})).await["model"], "second-model");
    assert_eq!(app.content_final(&token, "quest", 2, json!({})).await["model"], "second-model");
    assert_eq!((app.fake.request_count(), second.request_count()), (1, 2));
    assert!(upstream(&app, 1).await["retry_after_until"].is_string());
    assert_eq!(upstream(&app, second_id).await["retry_after_until"], Value::Null);
    assert_eq!(upstream(&app, 1).await["circuit"]["state"], "closed", "a 429 never counts");
}

/// A 401 parks the upstream and shows in its `last_error` (and in `/admin/api/llm`, the first's
/// view); a new key unparks it.
async fn a_bad_key_parks_the_upstream_until_its_key_changes(db: Db) {
    let app = app_with(db, |_| {}).await;
    let second = FakeLlm::start();
    add(&app, &second, "second-model", json!({"priority": 1})).await;
    let token = app.player_token().await;
    app.fake.set_mode(Mode::Status(401));
    assert_eq!(app.content_final(&token, "quest", 1, json!({})).await["model"], "second-model");
    assert_eq!(app.content_final(&token, "quest", 2, json!({})).await["model"], "second-model");
    assert_eq!((app.fake.request_count(), second.request_count()), (1, 2), "parked: no second call");
    assert!(upstream(&app, 1).await["last_error"].as_str().unwrap().contains("401"));
    let (_, llm) = app.admin_get("/admin/api/llm").await;
    assert!(llm["last_error"].as_str().unwrap().contains("401"), "{llm}");
    assert_eq!(llm["circuit"]["state"], "closed", "a 401 never counts");

    app.fake.set_mode(Mode::Ok);
    let (status, first) = app.admin_put("/admin/api/upstreams/1", json!({"api_key": "sk-fixed-key-9876"})).await;
    assert_eq!((status, first["last_error"].clone()), (200, Value::Null), "{first}");
    assert_eq!(first["api_key_last4"], "9876");
    let item = app.content_final(&token, "quest", 3, json!({})).await;
    assert_eq!(item["model"].as_str(), Some(app.config.llm_model.as_str()), "{item}");
    assert_eq!((app.fake.request_count(), second.request_count()), (2, 2));
}

/// Two upstreams in one tier share the calls by weight (the spread over 1,000 choices is the
/// chooser's unit test); a disabled one gets none.
async fn weights_spread_calls_within_a_tier(db: Db) {
    // No call may time out on a busy machine and move on: every item takes exactly one call.
    let app = app_with(db, |c| c.llm_timeout = std::time::Duration::from_secs(30)).await;
    let second = FakeLlm::start();
    let third = FakeLlm::start();
    add(&app, &second, "second-model", json!({"weight": 3})).await;
    let third_id = add(&app, &third, "third-model", json!({"enabled": false})).await;
    let token = app.player_token().await;
    for id in 1..=40 {
        assert_eq!(app.content_final(&token, "event", id, json!({})).await["status"], "ready");
    }
    let (first, second_calls) = (app.fake.request_count(), second.request_count());
    assert_eq!((first + second_calls, third.request_count()), (40, 0));
    // Expected 10 and 30; binomial(40, 1/4) stays within 2..=20 but for one run in a million.
    assert!((2..=20).contains(&first), "first {first}, second {second_calls}");
    assert_eq!(upstream(&app, third_id).await["calls"], 0);
}

/// The first upstream without a key: `/admin/api/llm` warns that every item will fall back
/// until another upstream can make the calls, and then the items are made there.
async fn the_no_key_notice_counts_every_upstream(db: Db) {
    let app = app_with(db, |c| {
        c.llm_provider = lorewire::core::provider::Provider::Anthropic;
        c.llm_api_key = None;
    })
    .await;
    let (_, llm) = app.admin_get("/admin/api/llm").await;
    assert!(llm["notice"].as_str().is_some_and(|n| n.contains("no_config")), "{llm}");
    let second = FakeLlm::start();
    add(&app, &second, "second-model", json!({"priority": 1})).await;
    let (_, llm) = app.admin_get("/admin/api/llm").await;
    assert_eq!(llm["notice"], Value::Null, "another upstream takes the calls: {llm}");
    let token = app.player_token().await;
    let item = app.content_final(&token, "npc", 1, json!({})).await;
    assert_eq!((item["status"].as_str(), item["model"].as_str()), (Some("ready"), Some("second-model")), "{item}");
}

/// The cost of an item is the price of the model that answered it.
async fn the_answering_models_price_is_charged(db: Db) {
    let app = app_with(db, |c| c.usage.studio_daily_tokens = Some(10_000_000)).await;
    let second = FakeLlm::start();
    second.set_usage(Some(FakeUsage { input: 1000, output: 0, ..FakeUsage::default() }));
    add(&app, &second, "second-model", json!({"priority": 1})).await;
    // $100 per million input tokens: 1,000 tokens cost $0.10 (the first's model: $0.001).
    let price = lorewire::runs::Price { input: 100_000_000, output: 0, cache_read: 0, cache_write: 0 };
    app.set_price("second-model", &price).await;
    app.fake.set_mode(Mode::Status(500));
    let token = app.player_token().await;
    assert_eq!(app.content_final(&token, "quest", 1, json!({})).await["model"], "second-model");
    let usage = eventually("the item is charged", || async {
        let (_, usage) = app.admin_get("/admin/api/usage").await;
        (usage["tokens"] == 1000 && usage["reserved_tokens"] == 0).then_some(usage)
    })
    .await;
    assert!((usage["usd"].as_f64().unwrap() - 0.1).abs() < 1e-9, "{usage}");
}

/// A call is reserved at the dearest enabled upstream's price, so a dearer model answering
/// after the first failed never takes a level past its USD limit.
async fn a_dearer_upstream_never_passes_a_usd_limit(db: Db) {
    // $0.15 a day for the studio: the second's answers cost $0.10 each.
    let app = app_with(db, |c| c.usage.studio_daily_micros = Some(150_000)).await;
    let second = FakeLlm::start();
    second.set_usage(Some(FakeUsage { input: 1000, output: 0, ..FakeUsage::default() }));
    add(&app, &second, "second-model", json!({"priority": 1})).await;
    let dear = lorewire::runs::Price { input: 100_000_000, output: 0, cache_read: 0, cache_write: 0 };
    app.set_price("second-model", &dear).await;
    let cheap = lorewire::runs::Price { input: 1, output: 1, cache_read: 0, cache_write: 0 };
    app.set_price(&app.config.llm_model, &cheap).await;
    app.fake.set_mode(Mode::Status(500));
    let token = app.player_token().await;
    for id in 1..=3 {
        let (status, _) =
            post_json(&app.url("/api/content"), &token, &json!({"kind": "quest", "subject_id": id})).await;
        assert_eq!(status, 202);
        let path = app.url(&format!("/api/content/quest/{id}"));
        let item = eventually("the item to be written", || async {
            let (_, item) = get_json(&path, Some(&token)).await;
            (item["status"] != "pending").then_some(item)
        })
        .await;
        // Refused by the studio's limit at the request (its fallback at once), or made there.
        assert!(item["reason"] == "budget_exceeded" || item["model"] == "second-model", "{item}");
    }
    let (_, usage) = app.admin_get("/admin/api/usage").await;
    assert!(usage["usd"].as_f64().unwrap() <= 0.15 + 1e-9, "the studio's limit held: {usage}");
}

/// Upstreams added, changed and removed on a running server, each change taking effect on the
/// next item; refusals say what is wrong; the first stays, and is what `/admin/api/llm` shows.
async fn upstreams_change_at_run_time(db: Db) {
    // The first keeps failing without its circuit opening.
    let app = app_with(db, |c| c.circuit_failures = 100).await;
    let url = app.url("/admin/api/upstreams");
    let good = json!({"provider": "anthropic", "base_url": "http://127.0.0.1:9", "model": "m"});
    for (field, value, says) in [
        ("provider", json!("gemini"), "provider"),
        ("base_url", json!("ftp://x"), "base_url"),
        ("model", json!(""), "model"),
        ("weight", json!(0), "weight"),
        ("priority", json!(-1), "priority"),
        ("api_key", json!("has space"), "api_key"),
    ] {
        let mut body = good.clone();
        body[field] = value;
        let (status, resp) = post_json(&url, ADMIN_TOKEN, &body).await;
        assert_eq!(status, 400, "{field}: {resp}");
        assert!(resp["message"].as_str().unwrap().contains(says), "{field}: {resp}");
    }
    let (status, resp) = post_json(&url, ADMIN_TOKEN, &json!({"provider": "anthropic"})).await;
    assert_eq!(status, 400, "{resp}");
    let (_, list) = app.admin_get("/admin/api/upstreams").await;
    assert_eq!(list["upstreams"].as_array().unwrap().len(), 1, "nothing stored: {list}");

    let token = app.player_token().await;
    let second = FakeLlm::start();
    app.fake.set_mode(Mode::Status(500));
    assert_eq!(app.content_final(&token, "quest", 1, json!({})).await["reason"], "api_error_500");
    let id = add(&app, &second, "second-model", json!({"priority": 5})).await;
    assert_eq!(app.content_final(&token, "quest", 2, json!({})).await["model"], "second-model");

    let (status, changed) = app.admin_put(&format!("/admin/api/upstreams/{id}"), json!({"enabled": false})).await;
    assert_eq!((status, changed["enabled"].as_bool(), changed["priority"].as_i64()), (200, Some(false), Some(5)));
    assert_eq!(app.content_final(&token, "quest", 3, json!({})).await["reason"], "api_error_500");
    assert_eq!(second.request_count(), 1);

    let (status, changed) =
        app.admin_put(&format!("/admin/api/upstreams/{id}"), json!({"enabled": true, "model": "renamed"})).await;
    assert_eq!((status, changed["model"].as_str()), (200, Some("renamed")), "{changed}");
    assert_eq!(app.content_final(&token, "quest", 4, json!({})).await["model"], "renamed");
    let (status, resp) = app.admin_put(&format!("/admin/api/upstreams/{id}"), json!({"weight": 5000})).await;
    assert_eq!(status, 400, "{resp}");

    let (status, resp) = delete(&app, "/admin/api/upstreams/1").await;
    assert_eq!(status, 400, "the first stays: {resp}");
    let (status, _) = delete(&app, &format!("/admin/api/upstreams/{id}")).await;
    assert_eq!(status, 204);
    let (status, _) = app.admin_get(&format!("/admin/api/upstreams/{id}")).await;
    assert_eq!(status, 404);
    let (status, _) = delete(&app, &format!("/admin/api/upstreams/{id}")).await;
    assert_eq!(status, 404);
    assert_eq!(app.content_final(&token, "quest", 5, json!({})).await["reason"], "api_error_500");
    assert_eq!(second.request_count(), 2);

    // /admin/api/llm and upstream 1 are one and the same.
    let (status, _) = app.admin_put("/admin/api/llm", json!({"model": "first-renamed"})).await;
    assert_eq!(status, 200);
    assert_eq!(upstream(&app, 1).await["model"], "first-renamed");
    let (status, _) = app.admin_put("/admin/api/upstreams/1", json!({"base_url": "http://127.0.0.1:8/v1/"})).await;
    assert_eq!(status, 200);
    let (_, llm) = app.admin_get("/admin/api/llm").await;
    assert_eq!(
        (llm["model"].as_str(), llm["base_url"].as_str()),
        (Some("first-renamed"), Some("http://127.0.0.1:8/v1"))
    );
    let (status, _) = app.admin_get("/admin/api/upstreams/x").await;
    assert_eq!(status, 400);
}

both_backends!(
    a_dearer_upstream_never_passes_a_usd_limit,
    the_no_key_notice_counts_every_upstream,
    content_is_ready_through_the_next_upstream,
    invalid_answers_and_timeouts_move_on,
    a_failing_run_restarts_on_the_next_upstream,
    an_open_upstream_gets_no_call,
    each_circuit_is_kept_across_a_restart,
    a_429_parks_only_that_upstream,
    a_bad_key_parks_the_upstream_until_its_key_changes,
    weights_spread_calls_within_a_tier,
    the_answering_models_price_is_charged,
    upstreams_change_at_run_time,
);
