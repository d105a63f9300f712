//! Game content over WebSocket and REST: pending -> ready pushed to every subscriber, one row
//! and one upstream call per item, regenerate, bad input.

use std::time::Duration;

use diesel::prelude::*;
use lorewire::domain::content::ContentKind;
use lorewire::store::content::{self as rows, RequestItem, Requested};
use lorewire::store::schema::{content, jobs};
use lorewire::store::Store;
use serde_json::{json, Value};

use crate::common::{get_json, post_json, spawn_app, Db, Mode, TestDb};

fn request(kind: &str, subject_id: u64, r: Value) -> Value {
    json!({"type": "content:request", "kind": kind, "subject_id": subject_id, "ref": r,
           "context": {"character_name": "Ada", "quest_name": "The Ashen Well"}})
}

async fn request_pushes_ready_to_every_subscriber(db: Db) {
    let app = spawn_app(db).await;
    app.fake.set_mode(Mode::Delay(Duration::from_millis(300)));
    let (mut a, _) = app.player("Ada").await;
    let (mut b, _) = app.player("Bo").await;

    a.send(request("quest", 42, json!("q1"))).await;
    let snap = a.recv().await;
    assert_eq!(snap["type"], "content:snapshot");
    assert_eq!(snap["ref"], "q1");
    let content = &snap["content"];
    assert_eq!(content["kind"], "quest");
    assert_eq!(content["subject_id"], 42);
    assert_eq!(content["status"], "pending");
    assert_eq!(content["version"], 1);
    assert_eq!(content["fields"], json!({"flavorText": "", "hookText": ""}));

    b.send(json!({"type": "content:subscribe", "kind": "quest", "subject_id": 42, "ref": 5})).await;
    let snap_b = b.recv().await;
    assert_eq!(snap_b["type"], "content:snapshot");
    assert_eq!(snap_b["ref"], 5);

    for ws in [&mut a, &mut b] {
        let update = ws.recv_type("content:update").await;
        let c = &update["content"];
        assert_eq!(c["status"], "ready", "{update}");
        assert_eq!(c["version"], 2);
        assert_eq!(c["model"], "claude-haiku-4-5-20251001");
        assert_eq!(c["reason"], Value::Null);
        assert_eq!(c["fields"]["flavorText"], "Fake flavorText for the adventure.");
        assert_eq!(c["fields"]["hookText"], "Fake hookText for the adventure.");
        assert!(update.get("ref").is_none());
    }
    assert_eq!(app.fake.request_count(), 1);

    // Asking again returns the item as it is, without an upstream call.
    a.send(request("quest", 42, json!(2))).await;
    let again = a.recv().await;
    assert_eq!(again["content"]["status"], "ready");
    assert_eq!(again["content"]["version"], 2);
    a.expect_silence(Duration::from_millis(300)).await;
    assert_eq!(app.fake.request_count(), 1);

    // Unsubscribed sessions hear nothing more; subscribed ones see regenerate go round.
    b.send(json!({"type": "content:unsubscribe", "kind": "quest", "subject_id": 42})).await;
    // A session handles its frames in order: once b has the answer to a later one, its
    // unsubscribe is done.
    b.send(json!({"type": "nope", "ref": "sync"})).await;
    while b.recv().await["ref"] != "sync" {}
    a.send(json!({"type": "content:request", "kind": "quest", "subject_id": 42, "regenerate": true, "ref": 3})).await;
    let snap = a.recv().await;
    assert_eq!(snap["ref"], 3);
    assert_eq!(snap["content"]["status"], "pending");
    assert_eq!(snap["content"]["version"], 3);
    let update = a.recv_type("content:update").await;
    assert_eq!(update["content"]["status"], "ready");
    assert_eq!(update["content"]["version"], 4);
    assert_eq!(app.fake.request_count(), 2);
    b.expect_silence(Duration::from_millis(300)).await;
}

async fn concurrent_requests_make_one_upstream_call(db: Db) {
    let app = spawn_app(db).await;
    app.fake.set_mode(Mode::Delay(Duration::from_millis(200)));
    let mut sockets = Vec::new();
    for i in 0..8 {
        sockets.push(app.player(&format!("P{i}")).await.0);
    }
    for ws in sockets.iter_mut() {
        ws.send(request("npc", 7, json!(null))).await;
    }
    let token = app.player_token().await;
    let (url, body) = (app.url("/api/content"), json!({"kind": "npc", "subject_id": 7}));
    let rest = futures_util::future::join_all((0..8).map(|_| post_json(&url, &token, &body))).await;
    for (status, content) in rest {
        assert_eq!(status, 202);
        assert_eq!(content["subject_id"], 7);
    }
    for ws in sockets.iter_mut() {
        assert_eq!(ws.recv().await["type"], "content:snapshot");
        let update = ws.recv_type("content:update").await;
        assert_eq!(update["content"]["status"], "ready");
    }
    assert_eq!(app.fake.request_count(), 1);
}

async fn rest_content_api(db: Db) {
    let app = spawn_app(db).await;
    let token = app.player_token().await;
    let url = app.url("/api/content");

    let (status, _) = get_json(&app.url("/api/content/quest/1"), None).await;
    assert_eq!(status, 401);
    let (status, body) = get_json(&app.url("/api/content/quest/1"), Some("wrong")).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"], "unauthorized");
    let (status, body) = get_json(&app.url("/api/content/quest/1"), Some(&token)).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"], "not_found");

    let content = app.content_final(&token, "event", 9, json!({"context": {"event_name": "Harvest"}})).await;
    assert_eq!(content["status"], "ready");
    assert_eq!(content["fields"]["announcementText"], "Fake announcementText for the adventure.");
    assert_eq!(content["fields"]["resolutionText"], "Fake resolutionText for the adventure.");

    let (status, body) = get_json(&app.url("/api/content/event/9"), Some(&token)).await;
    assert_eq!(status, 200);
    assert_eq!(body, content);
    let (status, body) = get_json(&app.url("/api/content/dragon/9"), Some(&token)).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_payload")));
    let (status, _) = get_json(&app.url("/api/content/event/-3"), Some(&token)).await;
    assert_eq!(status, 400);

    let (status, body) = post_json(&url, &token, &json!({"kind": "event", "subject_id": 9})).await;
    assert_eq!(status, 202);
    assert_eq!(body["version"], content["version"]);
}

/// Every bad request is refused with a clear message and stores nothing.
async fn bad_content_requests_store_nothing(db: Db) {
    let app = spawn_app(db).await;
    let (mut ws, ack) = app.player("Ada").await;
    let token = ack["token"].as_str().unwrap().to_owned();
    let many: serde_json::Map<String, Value> = (0..21).map(|i| (format!("k{i}"), json!("v"))).collect();
    let cases = [
        (json!({"kind": "dragon", "subject_id": 1}), "dragon"),
        (json!({"kind": "quest"}), "subject_id"),
        (json!({"kind": "quest", "subject_id": -1}), "-1"),
        (json!({"kind": "quest", "subject_id": "1"}), "subject_id"),
        (json!({"kind": "quest", "subject_id": 1, "context": "hello"}), "object"),
        (json!({"kind": "quest", "subject_id": 1, "context": {"a": 5}}), "string"),
        (json!({"kind": "quest", "subject_id": 1, "context": many}), "20"),
        (json!({"kind": "quest", "subject_id": 1, "context": {"a": "x".repeat(1001)}}), "long"),
        (json!({"kind": "quest", "subject_id": 1, "context": {"k".repeat(65): "v"}}), "key"),
        (json!({"kind": "quest", "subject_id": 1, "context": {"bad key!": "v"}}), "key"),
        (json!({"kind": "quest", "subject_id": u64::MAX}), "subject_id"),
    ];
    for (i, (body, needle)) in cases.iter().enumerate() {
        let mut frame = body.clone();
        frame["type"] = json!("content:request");
        frame["ref"] = json!(i);
        ws.send(frame).await;
        let err = ws.recv().await;
        assert_eq!(err["type"], "error:invalid_payload", "case {i}: {err}");
        assert_eq!(err["ref"], i);
        let message = err["message"].as_str().unwrap().to_lowercase();
        assert!(message.contains(needle), "case {i}: `{message}` should mention `{needle}`");

        let (status, resp) = post_json(&app.url("/api/content"), &token, body).await;
        assert_eq!(status, 400, "case {i}: {resp}");
        assert_eq!(resp["error"], "invalid_payload");
    }
    let (status, _) = get_json(&app.url("/api/content/quest/1"), Some(&token)).await;
    assert_eq!(status, 404, "nothing was stored");
    assert_eq!(app.fake.request_count(), 0);
}

/// Two processes asking for the same new item at the same moment, their transactions
/// overlapping (the second inserts while the first has inserted and not yet committed), end
/// with one row and one job; the second gets the first's item as it is.
async fn two_processes_creating_one_item_end_with_one_row_and_one_job(db: Db) {
    let test_db = TestDb::new(db);
    let url = test_db.url.clone();
    let (first, second) = actix_web::rt::task::spawn_blocking(move || {
        let first = Store::connect(&url).expect("first store");
        first.migrate().expect("migrations");
        (first, Store::connect(&url).expect("second store"))
    })
    .await
    .unwrap();
    let item = || RequestItem {
        origin: "test",
        kind: ContentKind::Quest,
        subject_id: 7,
        owner: 0,
        player: 0,
        context: None,
        empty_fields: "{}",
        regenerate: false,
        may_change: true,
        claim_for: None,
        queue_limit: 10_000,
    };
    let now = chrono::Utc::now().naive_utc();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let (inserted, inserting) = tokio::sync::oneshot::channel::<i64>();
    let (mut released, mut inserted) = (Some(released), Some(inserted));
    let first_write = actix_web::rt::spawn(first.write(move |conn| {
        let answer = rows::request(conn, &item(), now)?;
        if let (Some(inserted), Some(released)) = (inserted.take(), released.take()) {
            let _ = inserted.send(answer.0.row().id);
            // Holds the transaction open until the second write has begun.
            let _ = released.recv();
        }
        Ok(answer)
    }));
    let id = inserting.await.expect("the first write inserted");
    let second_write = actix_web::rt::spawn(second.write(move |conn| rows::request(conn, &item(), now)));
    actix_web::rt::time::sleep(Duration::from_millis(300)).await;
    drop(release);

    let (first_did, first_job) = first_write.await.unwrap().expect("the first write commits");
    let (second_did, second_job) = second_write.await.unwrap().expect("the second write commits");
    assert!(matches!(first_did, Requested::Created(_)), "{first_did:?}");
    assert!(first_job.is_none(), "queued, not claimed");
    assert!(matches!(second_did, Requested::Existing(_)), "{second_did:?}");
    assert_eq!(second_did.row().id, id);
    assert!(second_job.is_none());
    let counts = first
        .run(|c| {
            let items: i64 = content::table.count().get_result(c)?;
            let queued: i64 = jobs::table.count().get_result(c)?;
            Ok((items, queued))
        })
        .await
        .unwrap();
    assert_eq!(counts, (1, 1), "one row and one job");
}

both_backends!(
    two_processes_creating_one_item_end_with_one_row_and_one_job,
    request_pushes_ready_to_every_subscriber,
    concurrent_requests_make_one_upstream_call,
    rest_content_api,
    bad_content_requests_store_nothing,
);
