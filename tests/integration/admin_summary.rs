//! Admin insights: `/admin/api/users`, `/admin/api/metrics/summary` (retention included) and
//! the Prometheus text of `/metrics`.

use std::time::Duration;

use diesel::RunQueryDsl;
use lorewire::core::clock::Clock;
use lorewire::store::schema::user_days;
use serde_json::{json, Value};

use crate::common::{get_json, spawn_app, spawn_with, Db, Setup, TestApp};

async fn summary(app: &TestApp) -> Value {
    let (status, body) = app.admin_get("/admin/api/metrics/summary").await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn summary_is_right_on_an_empty_database(db: Db) {
    let app = spawn_app(db).await;
    let (status, _) = get_json(&app.url("/admin/api/metrics/summary"), None).await;
    assert_eq!(status, 401);
    let (status, _) = get_json(&app.url("/admin/api/users"), Some("wrong")).await;
    assert_eq!(status, 403);

    let s = summary(&app).await;
    assert_eq!(s["users"], 0);
    assert_eq!(s["online"], 0);
    assert_eq!(s["messages"], 0);
    assert_eq!(s["d1_retention"], Value::Null);
    assert_eq!(s["d7_retention"], Value::Null);
    assert_eq!(s["retention"]["d1"], json!({"eligible": 0, "retained": 0, "rate": null}));
    assert_eq!(s["content"], json!({"pending": 0, "ready": 0, "fallback": 0}));
    assert_eq!(s["runs"], json!({"queued": 0, "running": 0, "done": 0, "dead": 0, "aborted": 0}));
    assert_eq!(s["circuit"]["state"], "closed");
    assert_eq!(s["spend"]["total_usd"], 0.0);
    let (status, users) = app.admin_get("/admin/api/users").await;
    assert_eq!(status, 200);
    assert_eq!(users["users"], json!([]));
    assert_eq!(users["total"], 0);
    let (status, _) = app.admin_get("/admin/api/users?limit=0").await;
    assert_eq!(status, 400);
}

async fn summary_counts_users_messages_and_retention(db: Db) {
    let app = spawn_app(db).await;
    let (mut ada, ada_ack) = app.player("Ada").await;
    let (bo, bo_ack) = app.player("Bo").await;
    let (ada_id, bo_id) = (ada_ack["user_id"].as_i64().unwrap(), bo_ack["user_id"].as_i64().unwrap());
    ada.lobby_frames = true;
    for text in ["hello", "anyone?"] {
        ada.send(json!({"type": "message:send", "text": text})).await;
        ada.recv_type("message:new").await;
    }
    bo.close().await;
    let token = app.player_token().await;
    app.content_final(&token, "quest", 7, json!({})).await;
    let body = json!({"project_id": "p1", "action": "WRITE", "input": "a tavern at dusk"});
    let (status, queued) = crate::common::post_json(&app.url("/api/generate"), &token, &body).await;
    assert_eq!(status, 202, "{queued}");
    let run_url = app.url(&format!("/api/runs/{}", queued["run_id"].as_str().unwrap()));
    let run = crate::common::eventually("the run to finish", || {
        let (url, token) = (run_url.clone(), token.clone());
        async move {
            let (_, run) = get_json(&url, Some(&token)).await;
            (run["status"] == "done").then_some(run)
        }
    })
    .await;

    // Both first seen ten days ago; Ada came back on day 1 and day 7, Bo on day 2 only.
    let today = chrono::Utc::now().date_naive();
    let day = |n: u64| (today - chrono::Days::new(n)).format("%Y-%m-%d").to_string();
    let rows = vec![(ada_id, day(10)), (ada_id, day(9)), (ada_id, day(3)), (bo_id, day(10)), (bo_id, day(8))];
    let url = app.db.url.clone();
    actix_web::rt::task::spawn_blocking(move || {
        let store = lorewire::store::Store::connect(&url).unwrap();
        store
            .write_blocking(move |conn| {
                for (user_id, day) in &rows {
                    diesel::insert_into(user_days::table)
                        .values((user_days::user_id.eq(*user_id), user_days::day.eq(day)))
                        .execute(conn)?;
                }
                Ok(())
            })
            .unwrap();
    })
    .await
    .unwrap();

    let s = crate::common::eventually("only Ada to be online", || {
        let app = &app;
        async move {
            let s = summary(app).await;
            (s["online"] == 1).then_some(s)
        }
    })
    .await;
    assert_eq!(s["users"], 3);
    assert_eq!(s["messages"], 2);
    // The third user (the REST token) was first seen today: not eligible yet.
    assert_eq!(s["retention"]["d1"], json!({"eligible": 2, "retained": 1, "rate": 0.5}));
    assert_eq!(s["retention"]["d7"], json!({"eligible": 2, "retained": 1, "rate": 0.5}));
    assert_eq!(s["d1_retention"], 0.5);
    assert_eq!(s["d7_retention"], 0.5);
    assert_eq!(s["content"]["ready"], 1);
    assert_eq!(s["runs"], json!({"queued": 0, "running": 0, "done": 1, "dead": 0, "aborted": 0}));
    let spent = s["spend"]["total_usd"].as_f64().unwrap();
    assert!(spent > 0.0 && spent == run["cost_usd"].as_f64().unwrap(), "{s} {run}");

    let (status, users) = app.admin_get("/admin/api/users").await;
    assert_eq!(status, 200);
    assert_eq!(users["total"], 3);
    let list = users["users"].as_array().unwrap();
    let ada_row = list.iter().find(|u| u["user_id"] == ada_id).unwrap();
    assert_eq!(ada_row["nickname"], "Ada");
    assert_eq!(ada_row["message_count"], 2);
    assert_eq!(ada_row["variant"], if ada_id % 2 == 0 { "control" } else { "treatment" });
    assert_eq!(ada_row["online"], true);
    assert!(chrono::DateTime::parse_from_rfc3339(ada_row["first_seen"].as_str().unwrap()).is_ok());
    assert!(chrono::DateTime::parse_from_rfc3339(ada_row["last_seen"].as_str().unwrap()).is_ok());
    let bo_row = list.iter().find(|u| u["user_id"] == bo_id).unwrap();
    assert_eq!(bo_row["message_count"], 0);
    assert_eq!(bo_row["online"], false);
}

/// The days a user was seen, oldest first.
async fn days_seen(app: &TestApp, user_id: i64) -> Vec<String> {
    let url = app.db.url.clone();
    actix_web::rt::task::spawn_blocking(move || {
        let store = lorewire::store::Store::connect(&url).unwrap();
        store
            .run_blocking(move |conn| {
                Ok(user_days::table
                    .filter(user_days::user_id.eq(user_id))
                    .select(user_days::day)
                    .order(user_days::day.asc())
                    .load::<String>(conn)?)
            })
            .unwrap()
    })
    .await
    .unwrap()
}

async fn a_player_connected_across_midnight_is_seen_on_both_days(db: Db) {
    let app = spawn_with(Setup { manual_clock: true, ..Setup::new(db) }, |c| {
        c.heartbeat_interval = Duration::from_millis(100);
    })
    .await;
    let (ws, ack) = app.player("Ada").await;
    let user_id = ack["user_id"].as_i64().unwrap();
    let first_day = app.clock.now().date_naive();
    assert_eq!(days_seen(&app, user_id).await, vec![first_day.format("%Y-%m-%d").to_string()]);

    // The socket stays open while the UTC day turns.
    app.clock.advance(Duration::from_secs(24 * 3600));
    let next_day = (first_day + chrono::Days::new(1)).format("%Y-%m-%d").to_string();
    crate::common::eventually("the new day to be recorded", || {
        let (app, next_day) = (&app, next_day.clone());
        async move { days_seen(app, user_id).await.contains(&next_day).then_some(()) }
    })
    .await;
    assert_eq!(days_seen(&app, user_id).await.len(), 2);

    // Leaving is the last time the player was seen.
    app.clock.advance(Duration::from_secs(3600));
    let left_at = app.clock.now();
    ws.close().await;
    crate::common::eventually("last_seen to be the time the player left", || {
        let app = &app;
        async move {
            let (_, users) = app.admin_get("/admin/api/users").await;
            let last_seen = users["users"][0]["last_seen"].as_str()?.to_owned();
            (chrono::DateTime::parse_from_rfc3339(&last_seen).ok()? == left_at).then_some(())
        }
    })
    .await;
}

async fn metrics_expose_the_live_figures(db: Db) {
    let app = spawn_app(db).await;
    let (mut ws, _) = app.player("Ada").await;
    ws.lobby_frames = true;
    ws.send(json!({"type": "message:send", "text": "yay"})).await;
    ws.recv_type("message:mood_updated").await;
    actix_web::rt::time::sleep(Duration::from_millis(200)).await;
    let text = crate::lobby::metrics_text(&app).await;
    for line in [
        "lorewire_sessions_open 1",
        "lorewire_lobby_sessions 1",
        "lorewire_lobby_online_users 1",
        "lorewire_lobby_messages_total 1",
        "lorewire_moods_finished_total{status=\"ready\"} 1",
        "lorewire_upstream_calls_total{outcome=\"ok\"} 1",
        "lorewire_circuit_state 0",
        "lorewire_queue_depth 0",
        "lorewire_presence_updates_total 1",
    ] {
        assert!(text.contains(line), "missing `{line}` in:\n{text}");
    }
    for family in ["lorewire_frames_in_total", "lorewire_frames_out_total", "lorewire_push_latency_seconds_bucket"] {
        assert!(text.contains(family), "missing {family}");
    }
}

use diesel::{ExpressionMethods, QueryDsl};

both_backends!(
    summary_is_right_on_an_empty_database,
    summary_counts_users_messages_and_retention,
    a_player_connected_across_midnight_is_seen_on_both_days,
    metrics_expose_the_live_figures,
);
