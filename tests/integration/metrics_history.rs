//! `GET /admin/api/metrics/history`, the dashboard's charts as JSON: admin only, parallel
//! arrays as long as `t`, values that follow the traffic made, samples taken on the interval.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{eventually, get_json, http, spawn_app, spawn_with, Db, Setup, TestApp};

const SERIES: [&str; 12] = [
    "content_ready_per_min",
    "content_fallback_per_min",
    "upstream_ok_per_min",
    "upstream_failed_per_min",
    "upstream_rate_limited_per_min",
    "upstream_p50_secs",
    "upstream_p95_secs",
    "queue_depth",
    "players_online",
    "lobby_messages_per_min",
    "spend_usd_per_min",
    "circuit_state",
];

async fn history(app: &TestApp) -> Value {
    let (status, body) = app.admin_get("/admin/api/metrics/history").await;
    assert_eq!(status, 200, "{body}");
    let t = body["t"].as_array().expect("t is an array");
    assert!(!t.is_empty(), "at least the point now: {body}");
    assert!(t.windows(2).all(|w| w[0].as_f64() < w[1].as_f64()), "t increases: {body}");
    let series = body["series"].as_object().expect("series is an object");
    for name in SERIES {
        let values = series[name].as_array().unwrap_or_else(|| panic!("series {name} missing: {body}"));
        assert_eq!(values.len(), t.len(), "{name} is as long as t");
    }
    assert_eq!(series.len(), SERIES.len(), "no series this test does not know: {body}");
    body
}

fn values(body: &Value, name: &str) -> Vec<Option<f64>> {
    body["series"][name].as_array().unwrap().iter().map(Value::as_f64).collect()
}

fn max(body: &Value, name: &str) -> f64 {
    values(body, name).into_iter().flatten().fold(f64::NEG_INFINITY, f64::max)
}

fn last(body: &Value, name: &str) -> Option<f64> {
    *values(body, name).last().unwrap()
}

#[actix_web::test]
async fn history_needs_the_admin_token() {
    let app = spawn_app(Db::Sqlite).await;
    let url = app.url("/admin/api/metrics/history");
    let (status, body) = get_json(&url, None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "unauthorized");
    let (status, body) = get_json(&url, Some("not-the-token")).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "forbidden");
}

#[actix_web::test]
async fn history_follows_the_traffic() {
    let app = spawn_app(Db::Sqlite).await;
    // A fresh server already answers, with the circuit closed and nobody online.
    let fresh = history(&app).await;
    assert_eq!(fresh["interval_secs"], 10.0);
    assert_eq!(last(&fresh, "circuit_state"), Some(0.0));
    assert_eq!(last(&fresh, "players_online"), Some(0.0));
    assert_eq!(max(&fresh, "content_ready_per_min"), 0.0);

    let (ws, _) = app.history_traffic().await;

    let body = history(&app).await;
    assert!(max(&body, "content_ready_per_min") > 0.0, "{body}");
    assert_eq!(max(&body, "content_fallback_per_min"), 0.0, "{body}");
    // Three content items, the mood and the run each made one call.
    assert!(max(&body, "upstream_ok_per_min") > 0.0, "{body}");
    assert_eq!(max(&body, "upstream_failed_per_min"), 0.0, "{body}");
    let p50 = max(&body, "upstream_p50_secs");
    let p95 = max(&body, "upstream_p95_secs");
    assert!(p50 > 0.0 && p95 >= p50, "p50 {p50}, p95 {p95}: {body}");
    assert!(max(&body, "lobby_messages_per_min") > 0.0, "{body}");
    assert!(max(&body, "spend_usd_per_min") > 0.0, "{body}");
    assert!(last(&body, "players_online") >= Some(1.0), "Ada is joined: {body}");
    assert!(last(&body, "queue_depth").is_some(), "{body}");
    assert_eq!(last(&body, "circuit_state"), Some(0.0));
    drop(ws);
}

#[actix_web::test]
async fn history_samples_on_its_interval_and_shows_failures() {
    let app = spawn_with(Setup::new(Db::Sqlite), |c| c.metrics_sample = Duration::from_millis(100)).await;
    let token = app.player_token().await;
    app.fake.set_mode(crate::common::Mode::Status(500));
    for id in 1..=3 {
        assert_eq!(app.content_final(&token, "npc", id, json!({})).await["status"], "fallback");
    }
    // The circuit opened: the next item falls back without a call.
    assert_eq!(app.circuit().await["state"], "open");
    let body = eventually("several samples", || async {
        let body = history(&app).await;
        (body["t"].as_array().unwrap().len() >= 5).then_some(body)
    })
    .await;
    assert_eq!(body["interval_secs"], 0.1);
    assert!(max(&body, "content_fallback_per_min") > 0.0, "{body}");
    assert!(max(&body, "upstream_failed_per_min") > 0.0, "{body}");
    assert_eq!(max(&body, "upstream_ok_per_min"), 0.0, "{body}");
    assert_eq!(last(&body, "circuit_state"), Some(1.0), "open: {body}");
    // The failures were counted once: the rates over the samples add up to three calls.
    let interval_min = 0.1 / 60.0;
    let t: Vec<f64> = body["t"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let failed = values(&body, "upstream_failed_per_min");
    let mut calls = failed[0].unwrap() * interval_min;
    for i in 1..t.len() {
        calls += failed[i].unwrap() * ((t[i] - t[i - 1]) / 60.0).max(interval_min);
    }
    assert!((calls - 3.0).abs() < 1e-3, "{calls} calls from {failed:?}");

    // The same calls, timed, on /metrics.
    let mut resp = http().get(app.url("/metrics")).send().await.unwrap();
    let text = String::from_utf8(resp.body().await.unwrap().to_vec()).unwrap();
    assert!(text.contains("lorewire_upstream_call_seconds_count 3"), "{text}");
}
