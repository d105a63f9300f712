//! `LOREWIRE_QUEUE_LIMIT` for player jobs: content and mood jobs queued past it are refused
//! with `error:overloaded` (REST 429) and nothing is stored, so one client's flood cannot bury
//! every other player's items; items that exist are still served, and the queue takes requests
//! again as it drains.

use serde_json::{json, Value};

use crate::common::{get_json, post_json, spawn_with, Db, Mode, Setup, TestApp, WsClient};

const LIMIT: u64 = 3;

async fn request(ws: &mut WsClient, subject_id: u64) -> Value {
    ws.send(json!({"type": "content:request", "kind": "npc", "subject_id": subject_id, "ref": subject_id})).await;
    ws.recv().await
}

async fn stored(app: &TestApp, token: &str, subject_id: u64) -> u16 {
    get_json(&app.url(&format!("/api/content/npc/{subject_id}")), Some(token)).await.0
}

async fn content_and_mood_jobs_past_the_queue_limit_are_refused(db: Db) {
    let app = spawn_with(Setup::new(db), |c| {
        c.llm_concurrency = 1;
        c.queue_limit = LIMIT;
        c.chat_rate = "100/1s".parse().unwrap();
    })
    .await;
    let (mut ws, ack) = app.player("Flood").await;
    let token = ack["token"].as_str().unwrap().to_owned();
    assert_eq!(app.content_final(&token, "npc", 50, json!({})).await["status"], "ready");
    // The one slot hangs on its call: every later job waits queued.
    app.fake.set_mode(Mode::Hang);
    for subject_id in 1..=1 + LIMIT {
        let reply = request(&mut ws, subject_id).await;
        assert_eq!(reply["type"], "content:snapshot", "{reply}");
        assert_eq!(reply["content"]["status"], "pending");
    }
    let refused = request(&mut ws, 100).await;
    assert_eq!(refused["type"], "error:overloaded", "{refused}");
    assert_eq!(refused["ref"], 100);
    assert!(refused["message"].as_str().unwrap().contains("too much work is queued"), "{refused}");
    assert_eq!(stored(&app, &token, 100).await, 404, "a refused request stores nothing");

    // REST likewise, and a regeneration of an existing item too.
    let body = json!({"kind": "npc", "subject_id": 101});
    let (status, answer) = post_json(&app.url("/api/content"), &token, &body).await;
    assert_eq!((status, answer["error"].as_str()), (429, Some("overloaded")), "{answer}");
    assert_eq!(stored(&app, &token, 101).await, 404);
    ws.send(json!({"type": "content:request", "kind": "npc", "subject_id": 50, "regenerate": true, "ref": "again"}))
        .await;
    assert_eq!(ws.recv().await["type"], "error:overloaded");
    let (_, kept) = get_json(&app.url("/api/content/npc/50"), Some(&token)).await;
    assert_eq!((kept["status"].as_str(), kept["version"].as_i64()), (Some("ready"), Some(2)), "{kept}");

    // A chat line would queue a mood job: refused, neither stored nor broadcast.
    let mut other = app.ws().await;
    other.lobby_frames = true;
    other.send(json!({"type": "session:start", "nickname": "Other"})).await;
    other.recv_type("presence:state").await;
    other.send(json!({"type": "message:send", "text": "hello", "ref": "chat"})).await;
    let refused = other.recv_type("error:overloaded").await;
    assert_eq!(refused["ref"], "chat");
    let (_, summary) = app.admin_get("/admin/api/metrics/summary").await;
    assert_eq!(summary["messages"], 0, "{summary}");

    // What exists is still served.
    other.send(json!({"type": "content:request", "kind": "npc", "subject_id": 2})).await;
    assert_eq!(other.recv_type("content:snapshot").await["content"]["status"], "pending");

    // Once the queue drains (the hung call times out), requests are taken again.
    app.fake.set_mode(Mode::Ok);
    let drained = app.content_final(&token, "npc", 1 + LIMIT, json!({})).await;
    assert_eq!(drained["status"], "ready", "{drained}");
    ws.send(json!({"type": "content:request", "kind": "npc", "subject_id": 100, "ref": "later"})).await;
    let accepted = loop {
        let frame = ws.recv().await;
        if frame["ref"] == "later" {
            break frame;
        }
    };
    assert_eq!(accepted["type"], "content:snapshot", "{accepted}");
}

both_backends!(content_and_mood_jobs_past_the_queue_limit_are_refused);
