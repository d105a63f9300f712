//! Several lorewire processes on one PostgreSQL database: a change made by one reaches the
//! subscribers of every other (LISTEN/NOTIFY), and each job runs once.

use std::sync::Arc;
use std::time::Duration;

use lorewire::core::clock::SystemClock;
use serde_json::json;

use crate::common::{Db, Mode, WsClient};

#[actix_web::test]
async fn content_changes_reach_subscribers_on_every_process() {
    content_changes_reach_subscribers_on_every_process_over(None).await;
}

/// The same over a backplane of Redis at `redis` (`url`, `prefix`) when given.
pub(crate) async fn content_changes_reach_subscribers_on_every_process_over(redis: Option<(String, String)>) {
    let app = crate::common::spawn_with(crate::common::Setup::new(Db::Postgres), |c| {
        if let Some((url, prefix)) = redis {
            c.redis_url = Some(url);
            c.redis_prefix = prefix;
        }
    })
    .await;
    app.fake.set_mode(Mode::Delay(Duration::from_millis(300)));
    let mut config = app.config.clone();
    config.bind = "127.0.0.1:0".parse().unwrap();
    let other = lorewire::app::start(config.clone(), Arc::new(SystemClock)).await.expect("second process starts");
    let third = lorewire::app::start(config, Arc::new(SystemClock)).await.expect("third process starts");

    let (mut a, ack) = app.player("Ada").await;
    // The same player token works on every process: they share the database.
    let mut b = WsClient::connect(&format!("http://{}/ws", other.addr)).await;
    b.send(json!({"type": "session:start", "nickname": "Ada", "token": ack["token"]})).await;
    assert_eq!(b.recv_type("session:ack").await["user_id"], ack["user_id"]);

    a.send(json!({"type": "content:request", "kind": "npc", "subject_id": 7, "ref": 1})).await;
    assert_eq!(a.recv_type("content:snapshot").await["content"]["status"], "pending");
    b.send(json!({"type": "content:subscribe", "kind": "npc", "subject_id": 7, "ref": 2})).await;
    let snap = b.recv_type("content:snapshot").await;
    assert_eq!(snap["content"]["version"], 1, "{snap}");
    let mut c = WsClient::connect(&format!("http://{}/ws", third.addr)).await;
    c.send(json!({"type": "session:start", "nickname": "Ada", "token": ack["token"]})).await;
    c.recv_type("session:ack").await;
    c.send(json!({"type": "content:subscribe", "kind": "npc", "subject_id": 7, "ref": 2})).await;
    c.recv_type("content:snapshot").await;

    for ws in [&mut a, &mut b, &mut c] {
        let update = ws.recv_type("content:update").await;
        assert_eq!(update["content"]["status"], "ready", "{update}");
        assert_eq!(update["content"]["version"], 2);
    }
    assert_eq!(app.fake.request_count(), 1, "one upstream call for the item across the processes");

    // A regenerate asked on the second process is seen going round on the first.
    b.send(json!({"type": "content:request", "kind": "npc", "subject_id": 7, "regenerate": true, "ref": 3})).await;
    for version in [3, 4] {
        let update = a.recv_type("content:update").await;
        assert_eq!(update["content"]["version"], version, "{update}");
        let status = if version == 3 { "pending" } else { "ready" };
        assert_eq!(update["content"]["status"], status);
    }
    a.expect_silence(Duration::from_millis(200)).await;
    assert_eq!(app.fake.request_count(), 2);
    other.shutdown().await;
    third.shutdown().await;
}
