//! An upstream's circuit is the same on every process (PROTOCOL §7): opened on one process
//! (over PostgreSQL's notifications or Redis), the other makes no call to that upstream within
//! 2 s; reset by the admin on the first, it closes on the other too; opened while Redis was
//! away, the other process takes it on from the store once Redis is back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lorewire::app::Running;
use lorewire::core::clock::SystemClock;
use serde_json::{json, Value};

use crate::common::*;
use crate::redis::{wait_backplane, PrivateRedis};

/// Two processes on one PostgreSQL database, whose circuits open after 2 failures; with Redis
/// as the backplane when given.
async fn two_processes(redis: Option<(String, String)>) -> (TestApp, Running) {
    let app = spawn_with(Setup::new(Db::Postgres), |c| {
        c.circuit_failures = 2;
        if let Some((url, prefix)) = redis {
            c.redis_url = Some(url);
            c.redis_prefix = prefix;
        }
    })
    .await;
    let mut config = app.config.clone();
    config.bind = "127.0.0.1:0".parse().unwrap();
    let other = lorewire::app::start(config, Arc::new(SystemClock)).await.expect("second process starts");
    (app, other)
}

/// The first upstream's circuit state as the process at `base` shows it.
async fn circuit_at(base: &str) -> String {
    circuit_of(base, 1).await
}

/// Upstream `id`'s circuit state as the process at `base` shows it.
async fn circuit_of(base: &str, id: i64) -> String {
    let (status, upstream) = get_json(&format!("{base}/admin/api/upstreams/{id}"), Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{upstream}");
    upstream["circuit"]["state"].as_str().unwrap().to_owned()
}

async fn wait_circuit(base: &str, state: &str) {
    wait_circuit_of(base, 1, state).await;
}

async fn wait_circuit_of(base: &str, id: i64, state: &str) {
    eventually(&format!("upstream {id}'s circuit at {base} to be {state}"), || async move {
        (circuit_of(base, id).await == state).then_some(())
    })
    .await;
}

/// A content item asked of the process at `base`, once it is no longer pending.
async fn content_at(base: &str, token: &str, subject_id: u64) -> Value {
    let (status, first) =
        post_json(&format!("{base}/api/content"), token, &json!({"kind": "quest", "subject_id": subject_id})).await;
    assert_eq!(status, 202, "{first}");
    let url = format!("{base}/api/content/quest/{subject_id}");
    eventually("the item to be done", || {
        let url = url.clone();
        let version = first["version"].as_i64();
        async move {
            let (status, content) = get_json(&url, Some(token)).await;
            assert_eq!(status, 200, "{content}");
            (content["status"] != "pending" && content["version"].as_i64() > version).then_some(content)
        }
    })
    .await
}

/// The upstream answers 500: two items on the first process open its circuit; within 2 s the
/// second shows it open and its item falls back `circuit_open` without calling the upstream.
/// Reset on the first, it closes on the second, whose next item is ready.
async fn a_circuit_opened_on_one_process_is_open_on_the_other_over(redis: Option<(String, String)>) {
    let (app, other) = two_processes(redis).await;
    let (a, b) = (app.url(""), format!("http://{}", other.addr));
    wait_backplane(&a, true).await;
    wait_backplane(&b, true).await;
    let token = app.player_token().await;
    assert_eq!(circuit_at(&b).await, "closed");

    app.fake.set_mode(Mode::Status(500));
    for subject in [1, 2] {
        assert_eq!(app.content_final(&token, "quest", subject, json!({})).await["reason"], "api_error_500");
    }
    // The breaker hears of the call's end just after the item is written.
    wait_circuit(&a, "open").await;
    let opened = Instant::now();
    wait_circuit(&b, "open").await;
    assert!(opened.elapsed() < Duration::from_secs(2), "open on the other process after {:?}", opened.elapsed());
    let calls = app.fake.request_count();
    let item = content_at(&b, &token, 3).await;
    assert_eq!((item["status"].as_str(), item["reason"].as_str()), (Some("fallback"), Some("circuit_open")), "{item}");
    assert_eq!(app.fake.request_count(), calls, "the other process made no call to the open upstream");

    app.fake.set_mode(Mode::Ok);
    let (status, reset) = post_json(&app.url("/admin/api/upstreams/1/circuit/reset"), ADMIN_TOKEN, &json!({})).await;
    assert_eq!((status, reset["circuit"]["state"].as_str()), (200, Some("closed")), "{reset}");
    let closed = Instant::now();
    wait_circuit(&b, "closed").await;
    assert!(closed.elapsed() < Duration::from_secs(2), "closed on the other process after {:?}", closed.elapsed());
    assert_eq!(content_at(&b, &token, 4).await["status"], "ready");
    assert_eq!(app.fake.request_count(), calls + 1);
    other.shutdown().await;
}

#[actix_web::test]
async fn a_circuit_opened_on_one_process_is_open_on_the_other_over_notify() {
    a_circuit_opened_on_one_process_is_open_on_the_other_over(None).await;
}

#[actix_web::test]
async fn a_circuit_opened_on_one_process_is_open_on_the_other_over_redis() {
    a_circuit_opened_on_one_process_is_open_on_the_other_over(Some((redis_url(), redis_prefix()))).await;
}

/// An upstream added at run time, already used by the second process, opens on the first: within
/// 2 s the second process sends its items to the next upstream without calling it.
#[actix_web::test]
async fn an_added_upstream_opened_on_one_process_gets_no_call_from_the_other() {
    let (app, other) = two_processes(None).await;
    let (a, b) = (app.url(""), format!("http://{}", other.addr));
    let second = FakeLlm::start();
    let body = json!({"provider": "anthropic", "base_url": second.anthropic_base_url(), "model": "second-model",
        "api_key": "sk-second-key-000-4321"});
    let (status, added) = post_json(&app.url("/admin/api/upstreams"), ADMIN_TOKEN, &body).await;
    assert_eq!(status, 201, "{added}");
    let id = added["id"].as_i64().unwrap();
    let resp =
        http().put(app.url("/admin/api/upstreams/1")).bearer_auth(ADMIN_TOKEN).send_json(&json!({"priority": 1}));
    assert_eq!(resp.await.unwrap().status(), 200);
    let token = app.player_token().await;
    assert_eq!(content_at(&b, &token, 1).await["model"], "second-model", "the second process uses it");

    second.set_mode(Mode::Status(500));
    for subject in [2, 3] {
        let item = app.content_final(&token, "quest", subject, json!({})).await;
        assert_eq!(item["status"], "ready", "through the first upstream: {item}");
    }
    wait_circuit_of(&a, id, "open").await;
    let opened = Instant::now();
    wait_circuit_of(&b, id, "open").await;
    assert!(opened.elapsed() < Duration::from_secs(2), "open on the other process after {:?}", opened.elapsed());
    let calls = second.request_count();
    let item = content_at(&b, &token, 4).await;
    assert_eq!(item["status"], "ready", "{item}");
    assert_ne!(item["model"], "second-model", "{item}");
    assert_eq!(second.request_count(), calls, "the other process made no call to the open upstream");
    other.shutdown().await;
}

/// A circuit opened while Redis is away (the other process cannot hear it) is open on the other
/// process once Redis is back: the stored circuits are read again there.
#[actix_web::test]
async fn a_circuit_opened_while_redis_is_away_is_open_on_the_other_once_it_is_back() {
    let mut redis = PrivateRedis::start();
    let (app, other) = two_processes(Some((redis.url(), redis_prefix()))).await;
    let (a, b) = (app.url(""), format!("http://{}", other.addr));
    wait_backplane(&a, true).await;
    wait_backplane(&b, true).await;
    let token = app.player_token().await;

    redis.kill();
    wait_backplane(&a, false).await;
    wait_backplane(&b, false).await;
    app.fake.set_mode(Mode::Status(500));
    for subject in [1, 2] {
        app.content_final(&token, "quest", subject, json!({})).await;
    }
    wait_circuit(&a, "open").await;
    assert_eq!(circuit_at(&b).await, "closed", "not heard while Redis is away");

    redis.restart();
    wait_backplane(&b, true).await;
    wait_circuit(&b, "open").await;
    other.shutdown().await;
}
