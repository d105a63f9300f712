//! Moderation (PROTOCOL §6) of chat and nicknames: the word list with its folding, a fake
//! moderation endpoint speaking OpenAI's `/v1/moderations` format (flags a marker word, or
//! hangs, or answers 500), `block` and `mask`, and the record the admin lists.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::fake_moderation::{Behaviour, FakeModeration};
use crate::common::{spawn_with, Db, Event, Setup, TestApp, WsClient};
use lorewire::core::moderation::ChatModeration;

/// An app whose word list holds `bad` (and whose endpoint, when given, is the fake's).
async fn moderated_app(
    db: Db,
    chat: ChatModeration,
    endpoint: Option<&FakeModeration>,
) -> (TestApp, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let words = dir.path().join("words.txt");
    std::fs::write(&words, "# the studio's list\nbad\n").unwrap();
    let url = endpoint.map(|e| e.url.clone());
    let app = spawn_with(Setup::new(db), move |c| {
        c.moderation.words = Some(words);
        c.moderation.url = url;
        c.moderation.timeout = Duration::from_millis(300);
        c.moderation.chat = chat;
    })
    .await;
    (app, dir)
}

async fn lobby_player(app: &TestApp, nickname: &str) -> (WsClient, Value) {
    let mut ws = app.ws().await;
    ws.lobby_frames = true;
    ws.send(json!({"type": "session:start", "nickname": nickname})).await;
    let ack = ws.recv_type("session:ack").await;
    ws.recv_type("presence:state").await;
    (ws, ack)
}

/// The next frame that is not about presence.
async fn next_chat_frame(ws: &mut WsClient) -> Value {
    loop {
        match ws.next_event(Duration::from_secs(10)).await {
            Some(Event::Json(f)) if f["type"].as_str().is_some_and(|t| t.starts_with("presence:")) => continue,
            Some(Event::Json(f)) if f["type"] == "message:mood_updated" => continue,
            Some(Event::Json(f)) => return f,
            other => panic!("expected a frame, got {other:?}"),
        }
    }
}

async fn history_texts(app: &TestApp) -> Vec<Value> {
    let mut ws = app.ws().await;
    ws.lobby_frames = true;
    ws.send(json!({"type": "session:start", "nickname": "Reader"})).await;
    ws.recv_type("session:ack").await;
    ws.recv_type("lobby:history").await["messages"].as_array().unwrap().clone()
}

async fn flags(app: &TestApp) -> Vec<Value> {
    let (status, body) = app.admin_get("/admin/api/moderation?limit=50").await;
    assert_eq!(status, 200, "{body}");
    body["flags"].as_array().unwrap().clone()
}

/// `block`: a line with a listed word, however spelled, reaches nobody and is not stored; the
/// sender gets `error:moderated`; the flag is recorded with its author.
async fn flagged_chat_is_blocked_and_recorded(db: Db) {
    let (app, _words) = moderated_app(db, ChatModeration::Block, None).await;
    let (mut ada, ack) = lobby_player(&app, "Ada").await;
    let (mut bo, _) = lobby_player(&app, "Bo").await;
    for (n, text) in ["you are b.a.d", "BaD", "so b4d!", "b a d"].into_iter().enumerate() {
        ada.send(json!({"type": "message:send", "text": text, "ref": n})).await;
        let refused = next_chat_frame(&mut ada).await;
        assert_eq!(refused["type"], "error:moderated", "{text}: {refused}");
        assert_eq!(refused["ref"], n);
        assert_eq!(refused["message"], "your message was not sent: it breaks the chat rules");
    }
    ada.send(json!({"type": "message:send", "text": "a badge is fine"})).await;
    let fine = next_chat_frame(&mut bo).await;
    assert_eq!(
        (fine["type"].as_str(), fine["message"]["text"].as_str()),
        (Some("message:new"), Some("a badge is fine"))
    );
    assert!(fine["message"].get("masked").is_none(), "{fine}");
    let texts: Vec<_> = history_texts(&app).await.iter().map(|m| m["text"].as_str().unwrap().to_owned()).collect();
    assert_eq!(texts, ["a badge is fine"], "nothing flagged was stored");
    let recorded = flags(&app).await;
    assert_eq!(recorded.len(), 4, "{recorded:?}");
    assert_eq!(recorded[0]["text"], "b a d", "newest first");
    assert_eq!(recorded[0]["surface"], "chat");
    assert_eq!(recorded[0]["user_id"], ack["user_id"]);
    assert_eq!(recorded[0]["categories"], json!(["word_list"]));
}

/// `mask`: the line is stored and sent with its listed words as `***` and `masked: true`.
async fn flagged_chat_is_masked(db: Db) {
    let (app, _words) = moderated_app(db, ChatModeration::Mask, None).await;
    let (mut ada, _) = lobby_player(&app, "Ada").await;
    let (mut bo, _) = lobby_player(&app, "Bo").await;
    ada.send(json!({"type": "message:send", "text": "that was B.A.D, really bad"})).await;
    let seen = next_chat_frame(&mut bo).await;
    assert_eq!(seen["message"]["text"], "that was ***, really ***", "{seen}");
    assert_eq!(seen["message"]["masked"], true);
    let own = next_chat_frame(&mut ada).await;
    assert_eq!(own["message"]["text"], "that was ***, really ***");
    let history = history_texts(&app).await;
    assert_eq!(
        (history[0]["text"].as_str(), history[0]["masked"].as_bool()),
        (Some("that was ***, really ***"), Some(true))
    );
    assert_eq!(flags(&app).await[0]["text"], "that was B.A.D, really bad", "the record keeps what was written");
}

/// A nickname with a listed word is refused and stores no player.
async fn flagged_nicknames_are_refused(db: Db) {
    let (app, _words) = moderated_app(db, ChatModeration::Block, None).await;
    let mut ws = app.ws().await;
    ws.send(json!({"type": "session:start", "nickname": "B4D guy", "ref": "n"})).await;
    let refused = ws.recv().await;
    assert_eq!(refused["type"], "error:invalid_payload");
    assert_eq!((refused["ref"].as_str(), refused["message"].as_str()), (Some("n"), Some("nickname not allowed")));
    let (_, users) = app.admin_get("/admin/api/users").await;
    assert_eq!(users["total"], 0, "{users}");
    assert_eq!(flags(&app).await[0]["surface"], "nickname");
    app.player("Good guy").await;
}

/// A flagged answer is asked for once more: a clean second answer is `ready`; flagged again,
/// the item falls back with reason `moderated`, never `ready` with flagged text.
async fn flagged_content_is_regenerated_once_then_falls_back(db: Db) {
    let (app, _words) = moderated_app(db, ChatModeration::Block, None).await;
    let token = app.player_token().await;
    let flagged = r#"{"flavorText":"A b.a.d omen hangs over the north road.","hookText":"Find the lost caravan."}"#;
    app.fake.push_modes([crate::common::Mode::Text(flagged.into())]);
    let item = app.content_final(&token, "quest", 1, json!({})).await;
    assert_eq!(item["status"], "ready", "{item}");
    assert!(!item["fields"]["flavorText"].as_str().unwrap().contains("b.a.d"), "{item}");
    assert_eq!(app.fake.requests().len(), 2, "the flagged answer and its regeneration");

    app.fake.set_mode(crate::common::Mode::Text(flagged.into()));
    let item = app.content_final(&token, "quest", 2, json!({})).await;
    assert_eq!((item["status"].as_str(), item["reason"].as_str()), (Some("fallback"), Some("moderated")), "{item}");
    assert_eq!(app.fake.requests().len(), 4, "one regeneration, no more");
    let recorded = flags(&app).await;
    assert_eq!(recorded.len(), 3, "{recorded:?}");
    assert!(recorded.iter().all(|f| f["surface"] == "content" && f["text"].as_str().unwrap().contains("b.a.d omen")));
}

/// Run text is released in checked windows: the client reads what came before the flagged
/// sentence, never the sentence; the run ends `run:error` `moderated`, charged for what it used.
async fn a_flagged_run_stops_before_its_flagged_text_reaches_anyone(db: Db) {
    let (app, _words) = moderated_app(db, ChatModeration::Block, None).await;
    let price = lorewire::runs::Price { input: 2_000_000, output: 10_000_000, cache_read: 0, cache_write: 0 };
    app.set_price("claude-haiku-4-5-20251001", &price).await;
    let chunks = ["The road north ", "was quiet. ", "Then a b.", "a.d omen ", "rose over the hills."];
    app.fake.set_stream_chunks(chunks.iter().map(|c| c.to_string()).collect());
    app.fake.set_chunk_pause(Some(Duration::from_millis(150)));
    let (mut ws, _) = app.player("Writer").await;
    ws.send(
        json!({"type": "generate:start", "project_id": "p1", "action": "WRITE", "input": "the north road", "ref": 1}),
    )
    .await;
    let queued = ws.recv_type("run:queued").await;
    let run_id = queued["run_id"].as_str().unwrap().to_owned();
    let mut released = String::new();
    let end = loop {
        let frame = ws.recv().await;
        match frame["type"].as_str().unwrap() {
            "run:delta" => released.push_str(frame["text"].as_str().unwrap()),
            "run:error" | "run:done" => break frame,
            _ => {}
        }
    };
    assert_eq!((end["type"].as_str(), end["code"].as_str()), (Some("run:error"), Some("moderated")), "{end}");
    assert_eq!(end["message"], "the text was stopped by moderation");
    assert!(released.starts_with("The road north was quiet."), "what came before was released: {released:?}");
    assert!(!released.contains("omen") && !released.contains("b.a"), "the flagged text never came: {released:?}");
    let run = app.final_run(&app.player_token().await, &run_id).await;
    assert_eq!((run["status"].as_str(), run["error"]["code"].as_str()), (Some("dead"), Some("moderated")), "{run}");
    let (_, costs) = app.admin_get("/admin/api/costs?project_id=p1").await;
    assert!(costs["total_usd"].as_f64().unwrap() > 0.0, "what it consumed is charged: {costs}");
    assert_eq!(flags(&app).await[0]["surface"], "run");
}

/// The endpoint flags what the word list does not know; when it hangs or fails, the word list
/// alone decides within the timeout and the metric counts each unchecked text.
#[actix_web::test]
async fn the_moderation_endpoint_flags_and_never_stops_the_game_when_down() {
    let endpoint = FakeModeration::start().await;
    let (app, _words) = moderated_app(Db::Sqlite, ChatModeration::Block, Some(&endpoint)).await;
    let (mut ada, _) = lobby_player(&app, "Ada").await;
    ada.send(json!({"type": "message:send", "text": "hello MARKER"})).await;
    assert_eq!(next_chat_frame(&mut ada).await["type"], "error:moderated");
    assert_eq!(flags(&app).await[0]["categories"], json!(["harassment"]));
    assert_eq!(endpoint.calls.lock().unwrap().last().unwrap()["input"], "hello MARKER");

    for behaviour in [Behaviour::Hang, Behaviour::Fail] {
        endpoint.set(behaviour);
        let started = std::time::Instant::now();
        ada.send(json!({"type": "message:send", "text": "still bad"})).await;
        assert_eq!(next_chat_frame(&mut ada).await["type"], "error:moderated", "{behaviour:?}: the word list decides");
        ada.send(json!({"type": "message:send", "text": format!("fine while {behaviour:?}")})).await;
        let sent = next_chat_frame(&mut ada).await;
        assert_eq!(sent["type"], "message:new", "{behaviour:?}: {sent}");
        assert!(started.elapsed() < Duration::from_secs(5), "{behaviour:?} took {:?}", started.elapsed());
    }
    let metrics = crate::common::http().get(app.url("/metrics")).send().await.unwrap().body().await.unwrap();
    let metrics = String::from_utf8_lossy(&metrics).into_owned();
    assert!(metrics.contains("lorewire_moderation_unchecked_total 4"), "{metrics}");
    assert!(metrics.contains("lorewire_moderation_flagged_total{surface=\"chat\"} 3"), "{metrics}");
}

crate::both_backends!(
    flagged_chat_is_blocked_and_recorded,
    flagged_chat_is_masked,
    flagged_nicknames_are_refused,
    flagged_content_is_regenerated_once_then_falls_back,
    a_flagged_run_stops_before_its_flagged_text_reaches_anyone,
    re_lines_flag_chat,
);

/// A word list whose `re:` line is no regular expression, or that cannot be read, does not
/// start: running unchecked by mistake would be worse.
#[actix_web::test]
async fn a_bad_word_list_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let words = dir.path().join("words.txt");
    std::fs::write(&words, "bad\nre:b[a-\n").unwrap();
    for (path, says) in
        [(words, "line 2: `re:b[a-` is not a regular expression"), (dir.path().join("none"), "cannot read")]
    {
        let db = crate::process::test_db(Db::Sqlite).await;
        let mut config = lorewire::core::config::Config::with_database(&db.url);
        config.bind = "127.0.0.1:0".parse().unwrap();
        config.moderation.words = Some(path);
        let refused =
            lorewire::app::start(config, std::sync::Arc::new(lorewire::core::clock::SystemClock)).await.err().unwrap();
        assert!(refused.to_string().contains("LOREWIRE_MODERATION_WORDS"), "{refused}");
        assert!(refused.to_string().contains(says), "{refused}");
    }
}

/// A `re:` line of the word list flags chat as a word does.
async fn re_lines_flag_chat(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let words = dir.path().join("words.txt");
    std::fs::write(&words, "re:^z+[o0]nk$\n").unwrap();
    let app = spawn_with(Setup::new(db), move |c| c.moderation.words = Some(words)).await;
    let (mut ws, _) = lobby_player(&app, "Ada").await;
    ws.send(json!({"type": "message:send", "text": "you Z.Z.0.N.K", "ref": 1})).await;
    let refused = ws.recv_type("error:moderated").await;
    assert_eq!(refused["ref"], 1, "{refused}");
    assert_eq!(flags(&app).await.len(), 1);
}
