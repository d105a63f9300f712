//! WebSocket sessions: start/resume, errors, ref echo, limits, heartbeat, Origin, a database that refuses writes.

use std::time::Duration;

use awc::ws::Message;
use diesel::{Connection, RunQueryDsl};
use serde_json::{json, Value};

use crate::common::{pg_admin_url, spawn_app, spawn_with, Db, Event, Setup, WsClient, WAIT};

async fn start_ack_and_resume(db: Db) {
    let app = spawn_app(db).await;
    let (ws, ack) = app.player("Ada").await;
    assert_eq!(ack["nickname"], "Ada");
    let user_id = ack["user_id"].as_i64().unwrap();
    let token = ack["token"].as_str().unwrap().to_owned();
    assert!(token.len() >= 32);
    assert!(ack["variant"] == "control" || ack["variant"] == "treatment");
    assert!(chrono::DateTime::parse_from_rfc3339(ack["server_time"].as_str().unwrap()).is_ok());
    ws.close().await;

    // A known token resumes the same user, with the same variant.
    let mut ws = app.ws().await;
    ws.send(json!({"type": "session:start", "nickname": "  Ada L. ", "token": token, "ref": 9})).await;
    let again = ws.recv_type("session:ack").await;
    assert_eq!(again["user_id"], user_id);
    assert_eq!(again["ref"], 9);
    assert_eq!(again["nickname"], "Ada L.");
    assert_eq!(again["variant"], ack["variant"]);
    assert_eq!(again["token"], token);

    // An unknown token starts a new user.
    let mut ws = app.ws().await;
    ws.send(json!({"type": "session:start", "nickname": "Bo", "token": "not-a-known-token"})).await;
    let other = ws.recv_type("session:ack").await;
    assert_ne!(other["user_id"], user_id);
    assert_ne!(other["token"], "not-a-known-token");
}

async fn bad_frames_get_errors_and_keep_the_socket(db: Db) {
    let app = spawn_app(db).await;
    let mut ws = app.ws().await;

    // Before session:start, anything else is unauthorized.
    ws.send(json!({"type": "content:subscribe", "kind": "quest", "subject_id": 1, "ref": "early"})).await;
    let err = ws.recv().await;
    assert_eq!(err["type"], "error:unauthorized");
    assert_eq!(err["ref"], "early");
    // Not JSON, or a type nobody knows: still not a session:start.
    ws.send_raw(Message::Text("hello?".into())).await;
    assert_eq!(ws.recv().await["type"], "error:unauthorized");
    ws.send(json!({"type": "lobby:join", "ref": "odd"})).await;
    let err = ws.recv().await;
    assert_eq!((err["type"].as_str(), err["ref"].as_str()), (Some("error:unauthorized"), Some("odd")));

    for (nickname, why) in [
        ("", "empty"),
        ("   ", "blank"),
        ("a\u{1}b", "control"),
        ("Ada\n", "trailing newline"),
        (&"x".repeat(33)[..], "long"),
        ("Ad\u{200B}a", "zero-width space"),
        ("\u{202E}adA", "right-to-left override"),
        ("A\u{2066}da\u{2069}", "direction isolate"),
        ("Ada\u{FEFF}", "byte order mark"),
    ] {
        ws.send(json!({"type": "session:start", "nickname": nickname, "ref": why})).await;
        let err = ws.recv().await;
        assert_eq!(err["type"], "error:invalid_payload", "{why}");
        assert_eq!(err["ref"], why);
        assert!(!err["message"].as_str().unwrap().is_empty());
    }
    let (_, users) = app.admin_get("/admin/api/users").await;
    assert_eq!(users["total"], 0, "a refused nickname stores no user: {users}");
    ws.send(json!({"type": "session:start", "nickname": "Ada"})).await;
    ws.recv_type("session:ack").await;

    ws.send_raw(Message::Text("this is not json".into())).await;
    assert_eq!(ws.recv().await["type"], "error:invalid_payload");
    ws.send_raw(Message::Binary(vec![1u8, 2, 3].into())).await;
    assert_eq!(ws.recv().await["type"], "error:invalid_payload");
    ws.send(json!({"type": "nope:never", "ref": 1})).await;
    let err = ws.recv().await;
    assert_eq!(err["type"], "error:invalid_payload");
    assert_eq!(err["ref"], 1);
    assert!(err["message"].as_str().unwrap().contains("unknown frame type `nope:never`"), "{err}");
    ws.send(json!({"type": "content:subscribe", "kind": "quest", "subject_id": "forty", "ref": 2})).await;
    assert_eq!(ws.recv().await["ref"], 2);
    ws.send(json!({"type": "session:start", "nickname": "Again", "ref": 3})).await;
    assert_eq!(ws.recv().await["type"], "error:invalid_payload");
    ws.send(json!([1, 2])).await;
    assert_eq!(ws.recv().await["type"], "error:invalid_payload");

    // Unknown fields are ignored; the socket is still fully usable.
    ws.send(json!({"type": "content:subscribe", "kind": "quest", "subject_id": 5, "ref": 4, "extra": true})).await;
    let err = ws.recv().await;
    assert_eq!(err["type"], "error:not_found");
    assert_eq!(err["ref"], 4);
}

async fn oversized_frame_closes_with_1009(db: Db) {
    let app = spawn_app(db).await;
    let (mut ws, _) = app.player("Big").await;
    // Exactly at the limit is fine (an error for the unknown type, not a close).
    let filler = "x".repeat(64 * 1024 - r#"{"type":"a","p":""}"#.len());
    ws.send(json!({"type": "a", "p": filler})).await;
    assert_eq!(ws.recv().await["type"], "error:invalid_payload");
    let filler = "x".repeat(64 * 1024 + 1);
    ws.send(json!({"type": "a", "p": filler})).await;
    assert_eq!(ws.expect_close().await, Some(1009));
}

async fn heartbeat_pings_and_closes_silent_sockets(db: Db) {
    let app = spawn_with(Setup::new(db), |c| {
        c.heartbeat_interval = Duration::from_millis(450);
        c.client_timeout = Duration::from_millis(1000);
    })
    .await;
    // A client that answers pings stays connected past the timeout.
    let (mut alive, _) = app.player("Alive").await;
    alive.expect_silence(Duration::from_millis(1600)).await;
    alive.send(json!({"type": "content:subscribe", "kind": "npc", "subject_id": 1})).await;
    assert_eq!(alive.recv().await["type"], "error:not_found");

    // A silent one gets pings, then a close once the timeout has passed (not at the next
    // ping tick, 1.35 s).
    let (mut silent, _) = app.player("Silent").await;
    let last_heard = std::time::Instant::now();
    silent.answer_pings = false;
    let mut pings = 0;
    loop {
        match silent.next_event(Duration::from_secs(3)).await {
            Some(Event::Ping) => pings += 1,
            Some(Event::Close(_)) | Some(Event::Eof) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    let closed_after = last_heard.elapsed();
    assert!(pings >= 2, "saw {pings} pings before the close");
    assert!(
        closed_after >= Duration::from_millis(900) && closed_after < Duration::from_millis(1300),
        "closed {closed_after:?} after the last frame"
    );
}

async fn origin_allow_list(db: Db) {
    let app = spawn_with(Setup::new(db), |c| {
        c.allowed_origins = lorewire::core::config::AllowedOrigins::parse("https://game.example");
    })
    .await;
    let url = app.url("/ws");
    assert_eq!(WsClient::connect_with(&url, Some("https://evil.example")).await.err(), Some(403));
    assert!(WsClient::connect_with(&url, Some("https://game.example")).await.is_ok());
    // No Origin: not a browser, allowed.
    assert!(WsClient::connect_with(&url, None).await.is_ok());

    // Default: same origin only.
    let app = spawn_app(db).await;
    let url = app.url("/ws");
    let same = format!("http://{}", app.addr);
    assert!(WsClient::connect_with(&url, Some(&same)).await.is_ok());
    assert_eq!(WsClient::connect_with(&url, Some("http://other.example")).await.err(), Some(403));
}

async fn slow_consumer_is_closed_with_1008(db: Db) {
    let app = spawn_app(db).await;
    let (mut ws, _) = app.player("Slow").await;
    // Every bad frame is answered with its (large) ref echoed; never read them.
    let big_ref = "r".repeat(60 * 1024);
    for _ in 0..400 {
        ws.send(json!({"type": "nope", "ref": big_ref})).await;
    }
    actix_web::rt::time::sleep(Duration::from_millis(300)).await;
    let mut errors = 0;
    let code = loop {
        match ws.next_event(Duration::from_secs(10)).await {
            Some(Event::Json(_)) => errors += 1,
            Some(Event::Close(code)) => break code,
            other => panic!("expected a close, got {other:?} after {errors} frames"),
        }
    };
    assert_eq!(code, Some(1008));
    assert!(errors < 400, "all {errors} replies were sent");
    let metrics = crate::common::http().get(app.url("/metrics")).send().await.unwrap().body().await.unwrap();
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(metrics.contains("lorewire_slow_consumer_disconnects_total 1"), "{metrics}");
}

/// Skips frames until the direct reply to `reference` arrives.
async fn reply(ws: &mut WsClient, reference: &str) -> Value {
    loop {
        let frame = ws.recv().await;
        if frame["ref"] == reference {
            return frame;
        }
    }
}

/// Sends `frame(ref)` with a fresh ref until its reply is of type `ty`; fails after `WAIT`.
async fn until_reply(ws: &mut WsClient, what: &str, ty: &str, frame: impl Fn(&str) -> Value) -> Value {
    let until = std::time::Instant::now() + WAIT;
    let mut tries = 0;
    loop {
        tries += 1;
        let reference = format!("try-{tries}");
        ws.send(frame(&reference)).await;
        let answer = reply(ws, &reference).await;
        if answer["type"] == ty {
            return answer;
        }
        assert!(std::time::Instant::now() < until, "timed out waiting for {what}: {answer}");
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `sql` on an admin connection to the PostgreSQL server.
async fn pg_admin(sql: String) {
    actix_web::rt::task::spawn_blocking(move || {
        let mut conn = diesel::PgConnection::establish(&pg_admin_url()).expect("PostgreSQL admin connection");
        diesel::sql_query(&sql).execute(&mut conn).unwrap_or_else(|e| panic!("{sql}: {e}"));
    })
    .await
    .unwrap();
}

/// Makes every new connection to the test's database read-only (or writable again) and
/// drops the ones open, so the server's pool reconnects with the new default.
async fn set_read_only(name: &str, on: bool) {
    let setting = if on { "SET default_transaction_read_only = on" } else { "RESET default_transaction_read_only" };
    pg_admin(format!("ALTER DATABASE {name} {setting}")).await;
    pg_admin(format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()"
    ))
    .await;
}

/// A database that refuses writes while the server runs (as a full disk or a read-only
/// standby does): each write a client asks for answers `error:unavailable` with its ref and
/// stores nothing, while reads go on being served; once writes are taken again, so are requests.
#[actix_web::test]
async fn refused_writes_answer_unavailable_while_reads_go_on() {
    let app = spawn_app(Db::Postgres).await;
    let name = app.db.pg_name.clone().expect("a PostgreSQL test database");
    let (mut ws, _) = app.player("Ada").await;
    ws.send(json!({"type": "content:request", "kind": "quest", "subject_id": 1, "ref": "before"})).await;
    assert_eq!(reply(&mut ws, "before").await["type"], "content:snapshot");

    set_read_only(&name, true).await;
    // Reads are served again once the pool has reconnected.
    let snapshot = until_reply(
        &mut ws,
        "a read after the reconnect",
        "content:snapshot",
        |reference| json!({"type": "content:subscribe", "kind": "quest", "subject_id": 1, "ref": reference}),
    )
    .await;
    assert_eq!(snapshot["content"]["kind"], "quest");

    // Every write is refused, one after the other: not a lost connection but a database
    // that takes no writes.
    ws.send(json!({"type": "content:request", "kind": "quest", "subject_id": 2, "ref": "new item"})).await;
    let error = reply(&mut ws, "new item").await;
    assert_eq!(error["type"], "error:unavailable", "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("nothing was stored") && !message.contains("read-only"), "{message}");
    ws.send(json!({"type": "message:send", "text": "hello?", "ref": "chat"})).await;
    let error = reply(&mut ws, "chat").await;
    assert_eq!(error["type"], "error:unavailable", "{error}");
    let mut newcomer = app.ws().await;
    newcomer.send(json!({"type": "session:start", "nickname": "Bo", "ref": "start"})).await;
    assert_eq!(reply(&mut newcomer, "start").await["type"], "error:unavailable");

    // Nothing was stored, and the socket still reads.
    ws.send(json!({"type": "content:subscribe", "kind": "quest", "subject_id": 2, "ref": "gone"})).await;
    assert_eq!(reply(&mut ws, "gone").await["type"], "error:not_found");
    ws.send(json!({"type": "content:subscribe", "kind": "quest", "subject_id": 1, "ref": "still"})).await;
    assert_eq!(reply(&mut ws, "still").await["type"], "content:snapshot");

    set_read_only(&name, false).await;
    until_reply(
        &mut ws,
        "a write after writes are taken again",
        "content:snapshot",
        |reference| json!({"type": "content:request", "kind": "quest", "subject_id": 2, "ref": reference}),
    )
    .await;
}

both_backends!(
    start_ack_and_resume,
    bad_frames_get_errors_and_keep_the_socket,
    oversized_frame_closes_with_1009,
    heartbeat_pings_and_closes_silent_sockets,
    origin_allow_list,
    slow_consumer_is_closed_with_1008,
);
