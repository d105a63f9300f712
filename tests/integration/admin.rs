//! Admin API (token, LLM settings with a write-only key, circuit reset) and health/readiness.

use serde_json::{json, Value};

use crate::common::{get_json, http, spawn_app, Db, API_KEY};

async fn admin_token_is_required(db: Db) {
    let app = spawn_app(db).await;
    let resp = http().get(app.url("/admin/api/llm")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let mut resp = http().get(app.url("/admin/api/llm")).bearer_auth("admin-wrong").send().await.unwrap();
    assert_eq!(resp.status(), 403);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "forbidden");
    // A player token is not an admin token.
    let token = app.player_token().await;
    let resp = http().post(app.url("/admin/api/llm/circuit/reset")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status(), 403);
}

async fn llm_settings_round_trip_with_a_write_only_key(db: Db) {
    let app = spawn_app(db).await;
    let (status, llm) = app.admin_get("/admin/api/llm").await;
    assert_eq!(status, 200);
    assert_eq!(llm["provider"], "anthropic");
    assert_eq!(llm["model"], "claude-haiku-4-5-20251001");
    assert_eq!(llm["base_url"], app.fake.anthropic_base_url());
    assert_eq!(llm["api_key_set"], true);
    assert_eq!(llm["api_key_last4"], &API_KEY[API_KEY.len() - 4..]);
    assert_eq!(llm["last_error"], Value::Null);
    assert_eq!(llm["circuit"]["state"], "closed");
    assert_eq!(llm["notice"], Value::Null, "calls can be made");
    assert!(!llm.to_string().contains(API_KEY));

    // Switching provider moves a default model along; the base URL was set by hand, so it stays.
    let (status, llm) = app.admin_put("/admin/api/llm", json!({"provider": "openai-chat"})).await;
    assert_eq!(status, 200, "{llm}");
    assert_eq!(llm["provider"], "openai-chat");
    assert_eq!(llm["model"], "gpt-5-mini");
    assert_eq!(llm["base_url"], app.fake.anthropic_base_url());

    let base = app.fake.openai_base_url();
    let body = json!({"model": "llama3.2", "base_url": format!("{base}/"), "api_key": "sk-new-key-0000WXYZ"});
    let (status, llm) = app.admin_put("/admin/api/llm", body).await;
    assert_eq!(status, 200, "{llm}");
    assert_eq!(llm["model"], "llama3.2");
    assert_eq!(llm["base_url"], base);
    assert_eq!(llm["api_key_last4"], "WXYZ");
    assert!(!llm.to_string().contains("sk-new-key"));

    // The new settings are what the next upstream call uses.
    let token = app.player_token().await;
    let content = app.content_final(&token, "npc", 1, json!({})).await;
    assert_eq!(content["status"], "ready", "{content}");
    assert_eq!(content["model"], "llama3.2");
    let req = app.fake.requests().pop().unwrap();
    assert_eq!(req.path, "/v1/chat/completions");
    assert_eq!(req.headers["authorization"], "Bearer sk-new-key-0000WXYZ");

    let (status, llm) = app.admin_put("/admin/api/llm", json!({"api_key": null})).await;
    assert_eq!(status, 200);
    assert_eq!(llm["api_key_set"], false);
    assert_eq!(llm["api_key_last4"], Value::Null);
    // A server of one's own needs no key; a provider's own API does.
    assert_eq!(llm["notice"], Value::Null, "{llm}");
    let (_, llm) = app.admin_put("/admin/api/llm", json!({"provider": "anthropic"})).await;
    let notice = llm["notice"].as_str().unwrap_or_else(|| panic!("no notice: {llm}"));
    assert!(notice.contains("every content item will fall back with `no_config`"), "{notice}");
    assert!(notice.contains("Try it with a local model"), "{notice}");
}

async fn bad_llm_settings_are_refused_and_change_nothing(db: Db) {
    let app = spawn_app(db).await;
    let (_, before) = app.admin_get("/admin/api/llm").await;
    for body in [
        json!({"provider": "gemini"}),
        json!({"provider": 3}),
        json!({"model": ""}),
        json!({"model": "x".repeat(201)}),
        json!({"base_url": "not a url"}),
        json!({"base_url": "ftp://example.com"}),
        json!({"api_key": "has space"}),
        json!({"api_key": 12}),
        json!({"model": "fine", "base_url": "nope"}),
        json!([1]),
        // An array of the fields in order is not an object either.
        json!([null, null]),
    ] {
        let (status, resp) = app.admin_put("/admin/api/llm", body.clone()).await;
        assert_eq!(status, 400, "{body}: {resp}");
        assert_eq!(resp["error"], "invalid_payload");
        assert!(!resp["message"].as_str().unwrap().is_empty());
    }
    let (_, after) = app.admin_get("/admin/api/llm").await;
    assert_eq!(before, after);
}

async fn health_and_readiness(db: Db) {
    let app = spawn_app(db).await;
    let (status, body) = get_json(&app.url("/health"), None).await;
    assert_eq!((status, body), (200, json!({"status": "ok"})));
    let (status, _) = get_json(&app.url("/ready"), None).await;
    assert_eq!(status, 200);
    let (status, body) = get_json(&app.url("/nope"), None).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
    let resp = http().get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
}

both_backends!(
    admin_token_is_required,
    llm_settings_round_trip_with_a_write_only_key,
    bad_llm_settings_are_refused_and_change_nothing,
    health_and_readiness,
);

/// `/ready` answers 503 while PostgreSQL refuses connections, and 200 again after.
#[actix_web::test]
async fn ready_follows_the_database() {
    use diesel::{Connection, RunQueryDsl};
    let app = spawn_app(Db::Postgres).await;
    let name = app.db.pg_name.clone().expect("a PostgreSQL test database");
    let admin_sql = move |sql: String| {
        actix_web::rt::task::spawn_blocking(move || {
            let mut conn = diesel::PgConnection::establish(&crate::common::pg_admin_url()).unwrap();
            diesel::sql_query(sql).execute(&mut conn).unwrap();
        })
    };
    admin_sql(format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false")).await.unwrap();
    admin_sql(format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
        .await
        .unwrap();
    let (status, body) = get_json(&app.url("/ready"), None).await;
    assert_eq!(status, 503, "{body}");
    admin_sql(format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true")).await.unwrap();
    crate::common::eventually("ready again", || async {
        (get_json(&app.url("/ready"), None).await.0 == 200).then_some(())
    })
    .await;
}
