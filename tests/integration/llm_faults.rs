//! The upstream's faults as players and the admin see them: an unknown provider in the stored
//! settings is named as such, not reported as a missing key.

use diesel::{ExpressionMethods, RunQueryDsl};
use lorewire::store::schema::llm_config;
use lorewire::store::Store;
use serde_json::json;

use crate::common::{post_json, spawn_with, Db, Setup, WsClient};

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

both_backends!(an_unknown_stored_provider_is_named);
