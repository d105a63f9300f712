//! Who shapes shared content (PROTOCOL §5): with `LOREWIRE_SHARED_CONTENT_WRITERS=server` a
//! player may create a missing item with its context but neither regenerate an existing one nor
//! ask for it with another context; the game server may (REST with the admin token, a session
//! started with a server-role JWT). With `players`, any player may.

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use std::time::Duration;

use crate::common::{get_json, post_json, spawn_with, Db, Mode, Setup, TestApp, WsClient, ADMIN_TOKEN};
use lorewire::core::identity::{AuthMode, SharedWriters};

const SECRET: &str = "studio-shared-secret-0123456789";
const SERVER_ONLY: &str = "only the game server may change shared content";

fn hs256(claims: Value) -> String {
    encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

fn exp() -> i64 {
    chrono::Utc::now().timestamp() + 3600
}

/// A server taking anonymous players and the studio's JWTs, with `writers` as set (`None`: the default).
async fn spawn(db: Db, writers: Option<SharedWriters>) -> TestApp {
    spawn_with(Setup::new(db), move |c| {
        c.identity.mode = AuthMode::Both;
        c.identity.jwt_secret = Some(lorewire::core::config::Secret::new(SECRET));
        c.identity.shared_content_writers = writers;
    })
    .await
}

/// A session started with a JWT of `sub`, carrying the server role when `server`.
async fn jwt_session(app: &TestApp, sub: &str, server: bool) -> WsClient {
    jwt_session_and_token(app, sub, server).await.0
}

async fn jwt_session_and_token(app: &TestApp, sub: &str, server: bool) -> (WsClient, String) {
    let mut claims = json!({"iss": "studio", "sub": sub, "name": sub, "exp": exp()});
    if server {
        claims["lorewire_role"] = json!("server");
    }
    let jwt = hs256(claims);
    let mut ws = app.ws().await;
    ws.send(json!({"type": "session:start", "jwt": jwt})).await;
    let ack = ws.recv_type("session:ack").await;
    assert_eq!(ack["external_id"], sub, "{ack}");
    (ws, jwt)
}

fn npc(subject_id: u64, extra: Value) -> Value {
    let mut frame = json!({"type": "content:request", "kind": "npc", "subject_id": subject_id, "ref": "r"});
    frame.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    frame
}

/// Sends a request and answers its direct reply (a snapshot or an error).
async fn ask(ws: &mut WsClient, frame: Value) -> Value {
    ws.send(frame).await;
    loop {
        let reply = ws.recv().await;
        if reply["ref"] == "r" {
            return reply;
        }
    }
}

/// The item once it has left pending, as the session sees it.
async fn settled(ws: &mut WsClient) -> Value {
    loop {
        let update = ws.recv_type("content:update").await;
        if update["content"]["status"] != "pending" {
            return update["content"].clone();
        }
    }
}

fn refused(reply: &Value) {
    assert_eq!(reply["type"], "error:unauthorized", "{reply}");
    assert_eq!(reply["message"], SERVER_ONLY, "{reply}");
}

async fn only_the_game_server_changes_shared_items(db: Db) {
    // JWT logins on: the game server is the default writer.
    let app = spawn(db, None).await;
    let ada = json!({"context": {"character_name": "Ada"}});
    let (mut anon, ack) = app.player("Anon").await;
    let token = ack["token"].as_str().unwrap().to_owned();

    // A player's first request creates the missing item with its context.
    let created = ask(&mut anon, npc(7, ada.clone())).await;
    assert_eq!(
        (created["type"].as_str(), created["content"]["status"].as_str()),
        (Some("content:snapshot"), Some("pending"))
    );
    let ready = settled(&mut anon).await;
    assert_eq!((ready["status"].as_str(), ready["version"].as_i64()), (Some("ready"), Some(2)), "{ready}");
    assert!(app.fake.requests()[0].raw_body.contains("Ada"), "the creator's context reaches the prompt");
    let calls = app.fake.request_count();

    // Another player (anonymous or JWT) may read it, with the same context or none ...
    let mut player = jwt_session(&app, "p-1", false).await;
    for extra in [json!({}), ada.clone()] {
        let reply = ask(&mut player, npc(7, extra)).await;
        assert_eq!((reply["type"].as_str(), reply["content"]["version"].as_i64()), (Some("content:snapshot"), Some(2)));
    }
    // ... but neither regenerate it nor ask with another context, over WS or REST; nothing changes.
    for ws in [&mut anon, &mut player] {
        refused(&ask(ws, npc(7, json!({"regenerate": true}))).await);
        refused(&ask(ws, npc(7, json!({"regenerate": true, "context": {"character_name": "Ada"}}))).await);
        refused(&ask(ws, npc(7, json!({"context": {"character_name": "Bram"}}))).await);
    }
    let body = json!({"kind": "npc", "subject_id": 7, "regenerate": true});
    let (status, error) = post_json(&app.url("/api/content"), &token, &body).await;
    assert_eq!((status, error["message"].as_str()), (403, Some(SERVER_ONLY)), "{error}");
    let body = json!({"kind": "npc", "subject_id": 7, "context": {"character_name": "Bram"}});
    assert_eq!(post_json(&app.url("/api/content"), &token, &body).await.0, 403);
    assert_eq!(app.fake.request_count(), calls, "nothing was called");
    // A refused request leaves the item as it was, and its watchers watching it (below).

    // The game server over REST (the admin token) regenerates it with a new context.
    let body = json!({"kind": "npc", "subject_id": 7, "regenerate": true, "context": {"character_name": "Bram"}});
    let (status, item) = post_json(&app.url("/admin/api/content"), ADMIN_TOKEN, &body).await;
    assert_eq!((status, item["status"].as_str(), item["version"].as_i64()), (202, Some("pending"), Some(3)), "{item}");
    for ws in [&mut anon, &mut player] {
        let ready = settled(ws).await;
        assert_eq!(ready["version"], 4, "every subscriber sees the server's change: {ready}");
    }
    assert!(app.fake.requests().last().unwrap().raw_body.contains("Bram"), "the server's context reaches the prompt");
    // A player's token is not the server's on the admin route.
    assert_eq!(post_json(&app.url("/admin/api/content"), &token, &body).await.0, 403);
    // Now the stored context is Bram's: a player asking with it is served, with Ada's refused.
    assert_eq!(ask(&mut anon, npc(7, json!({"context": {"character_name": "Bram"}}))).await["content"]["version"], 4);
    refused(&ask(&mut anon, npc(7, ada.clone())).await);

    // A session started with a server-role JWT regenerates it and changes its context too.
    let mut server = jwt_session(&app, "game-server", true).await;
    let reply = ask(&mut server, npc(7, json!({"regenerate": true, "context": {"character_name": "Cyd"}}))).await;
    assert_eq!((reply["type"].as_str(), reply["content"]["version"].as_i64()), (Some("content:snapshot"), Some(5)));
    assert_eq!(settled(&mut server).await["version"], 6);
    assert!(app.fake.requests().last().unwrap().raw_body.contains("Cyd"));

    // A player still creates a missing item; over REST too.
    let created = ask(&mut player, npc(8, json!({"context": {"character_name": "Dee"}}))).await;
    assert_eq!(created["content"]["version"], 1, "{created}");
    let body = json!({"kind": "quest", "subject_id": 9, "context": {"quest_name": "The Well"}});
    assert_eq!(post_json(&app.url("/api/content"), &token, &body).await.0, 202);
}

async fn players_change_shared_items_when_they_are_the_writers(db: Db) {
    // LOREWIRE_SHARED_CONTENT_WRITERS=players with JWT logins on.
    let app = spawn(db, Some(SharedWriters::Players)).await;
    let (mut anon, _) = app.player("Anon").await;
    let mut player = jwt_session(&app, "p-1", false).await;
    assert_eq!(ask(&mut anon, npc(7, json!({"context": {"character_name": "Ada"}}))).await["content"]["version"], 1);
    assert_eq!(settled(&mut anon).await["version"], 2);
    let reply = ask(&mut player, npc(7, json!({"regenerate": true, "context": {"character_name": "Bram"}}))).await;
    assert_eq!((reply["type"].as_str(), reply["content"]["version"].as_i64()), (Some("content:snapshot"), Some(3)));
    assert_eq!(settled(&mut player).await["version"], 4);
    assert!(app.fake.requests().last().unwrap().raw_body.contains("Bram"));
    // Another context without regenerate is served as the item is (today's behaviour).
    let reply = ask(&mut anon, npc(7, json!({"context": {"character_name": "Cyd"}}))).await;
    assert_eq!((reply["type"].as_str(), reply["content"]["version"].as_i64()), (Some("content:snapshot"), Some(4)));

    // Anonymous logins only: players are the default writers.
    let app = spawn_with(Setup::new(db), |_| {}).await;
    let (mut anon, _) = app.player("Anon").await;
    let (mut other, _) = app.player("Other").await;
    assert_eq!(ask(&mut anon, npc(7, json!({}))).await["content"]["version"], 1);
    assert_eq!(settled(&mut anon).await["version"], 2);
    let reply = ask(&mut other, npc(7, json!({"regenerate": true}))).await;
    assert_eq!((reply["type"].as_str(), reply["content"]["version"].as_i64()), (Some("content:snapshot"), Some(3)));
}

async fn player_items_are_each_players_own(db: Db) {
    // The game server writes shared items; a player's own are the player's to change.
    let app = spawn(db, None).await;
    let (mut ada, ack) = app.player("Ada").await;
    let ada_token = ack["token"].as_str().unwrap().to_owned();
    let (mut bo, bo_jwt) = jwt_session_and_token(&app, "p-bo", false).await;
    let mine = |name: &str| json!({"scope": "player", "context": {"character_name": name}});

    // The shared item, then each player's own of the same subject: three items.
    let shared = ask(&mut ada, npc(7, json!({"context": {"character_name": "Everyone"}}))).await;
    assert_eq!((shared["content"]["scope"].as_str(), shared["content"]["version"].as_i64()), (Some("shared"), Some(1)));
    assert_eq!(settled(&mut ada).await["version"], 2);
    let own = ask(&mut ada, npc(7, mine("Ada"))).await;
    assert_eq!(own["type"], "content:snapshot", "{own}");
    assert_eq!((own["content"]["scope"].as_str(), own["content"]["version"].as_i64()), (Some("player"), Some(1)));
    let ready = settled(&mut ada).await;
    assert_eq!((ready["scope"].as_str(), ready["version"].as_i64()), (Some("player"), Some(2)), "{ready}");
    assert!(app.fake.requests().last().unwrap().raw_body.contains("Ada"));
    let own = ask(&mut bo, npc(7, mine("Bo"))).await;
    assert_eq!((own["content"]["scope"].as_str(), own["content"]["version"].as_i64()), (Some("player"), Some(1)));
    assert_eq!(settled(&mut bo).await["version"], 2);
    assert!(app.fake.requests().last().unwrap().raw_body.contains("Bo"));
    assert_eq!(app.fake.request_count(), 3, "one call per item");

    // A player regenerates and re-contexts its own item; the other player hears nothing of it.
    let again =
        ask(&mut ada, npc(7, json!({"scope": "player", "regenerate": true, "context": {"character_name": "Ada II"}})))
            .await;
    assert_eq!((again["type"].as_str(), again["content"]["version"].as_i64()), (Some("content:snapshot"), Some(3)));
    let ready = settled(&mut ada).await;
    assert_eq!((ready["scope"].as_str(), ready["version"].as_i64()), (Some("player"), Some(4)), "{ready}");
    assert!(app.fake.requests().last().unwrap().raw_body.contains("Ada II"));
    bo.expect_silence(Duration::from_millis(300)).await;
    // Bo's own item and the shared one are as they were.
    let bo_own = ask(
        &mut bo,
        json!({"type": "content:subscribe", "kind": "npc", "subject_id": 7, "scope": "player", "ref": "r"}),
    )
    .await;
    assert_eq!((bo_own["content"]["scope"].as_str(), bo_own["content"]["version"].as_i64()), (Some("player"), Some(2)));
    let shared = ask(&mut bo, json!({"type": "content:subscribe", "kind": "npc", "subject_id": 7, "ref": "r"})).await;
    assert_eq!((shared["content"]["scope"].as_str(), shared["content"]["version"].as_i64()), (Some("shared"), Some(2)));

    // Another player's own item cannot be named: Bo has no npc 8 of his own, whatever Ada has.
    assert_eq!(ask(&mut ada, npc(8, mine("Ada"))).await["content"]["version"], 1);
    assert_eq!(settled(&mut ada).await["subject_id"], 8);
    let none = ask(
        &mut bo,
        json!({"type": "content:subscribe", "kind": "npc", "subject_id": 8, "scope": "player", "ref": "r"}),
    )
    .await;
    assert_eq!(none["type"], "error:not_found", "{none}");
    let none = ask(&mut bo, json!({"type": "content:subscribe", "kind": "npc", "subject_id": 8, "ref": "r"})).await;
    assert_eq!(none["type"], "error:not_found", "Ada's own item is not the shared one: {none}");

    // REST: `?scope=player` reads the bearer's own item, without it the shared one.
    let url = |scope: &str| app.url(&format!("/api/content/npc/7{scope}"));
    let (status, item) = get_json(&url("?scope=player"), Some(&ada_token)).await;
    assert_eq!((status, item["scope"].as_str(), item["version"].as_i64()), (200, Some("player"), Some(4)), "{item}");
    let (status, item) = get_json(&url("?scope=player"), Some(&bo_jwt)).await;
    assert_eq!((status, item["scope"].as_str(), item["version"].as_i64()), (200, Some("player"), Some(2)), "{item}");
    let (status, item) = get_json(&url(""), Some(&bo_jwt)).await;
    assert_eq!((status, item["scope"].as_str(), item["version"].as_i64()), (200, Some("shared"), Some(2)), "{item}");
    assert_eq!(get_json(&app.url("/api/content/npc/8?scope=player"), Some(&bo_jwt)).await.0, 404);
    assert_eq!(get_json(&url("?scope=mine"), Some(&bo_jwt)).await.0, 400);
    // A player regenerates its own over REST; the game server has no items of its own.
    let body = json!({"kind": "npc", "subject_id": 7, "scope": "player", "regenerate": true});
    let (status, item) = post_json(&app.url("/api/content"), &bo_jwt, &body).await;
    assert_eq!((status, item["scope"].as_str(), item["version"].as_i64()), (202, Some("player"), Some(3)), "{item}");
    let (status, error) = post_json(&app.url("/admin/api/content"), ADMIN_TOKEN, &body).await;
    assert_eq!(status, 400, "{error}");
    assert_eq!(settled(&mut bo).await["version"], 4, "Bo's session hears his own item's change");
    ada.expect_silence(Duration::from_millis(300)).await;
}

async fn one_players_flood_does_not_hold_back_another_player(db: Db) {
    // One busy slot, and every upstream call takes a while.
    let app = spawn_with(Setup::new(db), |c| c.llm_concurrency = 1).await;
    app.fake.set_mode(Mode::Delay(Duration::from_millis(30)));
    let (mut flood, _) = app.player("Flood").await;
    let (mut other, _) = app.player("Other").await;
    for id in 1..=200 {
        flood.send(json!({"type": "content:request", "kind": "quest", "subject_id": id, "ref": id})).await;
    }
    let mut answered = 0;
    while answered < 200 {
        let frame = flood.recv().await;
        if frame["type"] == "content:snapshot" {
            answered += 1;
        }
    }
    // All 200 are stored (queued or running); the other player's one item comes after them.
    let reply = ask(&mut other, npc(1, json!({"context": {"character_name": "Zebulon"}}))).await;
    assert_eq!(reply["content"]["status"], "pending", "{reply}");
    let started_before = app.fake.request_count();
    let ready = settled(&mut other).await;
    assert_eq!(ready["status"], "ready", "{ready}");
    let calls = app.fake.requests();
    let turn = calls.iter().position(|r| r.raw_body.contains("Zebulon")).expect("the other player's call");
    // At most the flood's call in flight when it was queued went before it (one item per busy slot).
    assert!(turn <= started_before + 1, "the other player's call was #{turn}, {started_before} had started before");
    assert!(turn < 150, "the flood was far from drained: #{turn} of 201 shows the queue was jumped");
}

async fn a_player_leaves_at_most_the_cap_of_rest_runs_unwatched(db: Db) {
    let app = spawn_with(Setup::new(db), |c| {
        c.identity.player_unwatched_runs = 2;
        c.llm_concurrency = 1;
    })
    .await;
    app.fake.set_mode(Mode::Delay(Duration::from_millis(400)));
    let (mut ada, ack) = app.player("Ada").await;
    let ada_token = ack["token"].as_str().unwrap().to_owned();
    let bo_token = app.player("Bo").await.1["token"].as_str().unwrap().to_owned();
    let run = |input: &str| json!({"project_id": "p1", "action": "WRITE", "input": input});
    let generate = app.url("/api/generate");
    let mut started = Vec::new();
    for input in ["one", "two"] {
        let (status, accepted) = post_json(&generate, &ada_token, &run(input)).await;
        assert_eq!(status, 202, "{accepted}");
        started.push(accepted["run_id"].as_str().unwrap().to_owned());
    }
    // A third REST run while both are queued or running is refused, and nothing is stored.
    let (status, refused) = post_json(&generate, &ada_token, &run("three")).await;
    assert_eq!((status, refused["error"].as_str()), (429, Some("rate_limited")), "{refused}");
    assert!(refused["message"].as_str().unwrap().contains("at most 2"), "{refused}");
    let (_, listed) = app.admin_get("/admin/api/runs").await;
    assert_eq!(listed["runs"].as_array().unwrap().len(), 2, "{listed}");
    // Another player's REST runs and the player's own watched runs are not counted.
    assert_eq!(post_json(&generate, &bo_token, &run("bo")).await.0, 202);
    ada.send(json!({"type": "generate:start", "project_id": "p1", "action": "WRITE", "input": "watched", "ref": 9}))
        .await;
    let queued = ada.recv_type("run:queued").await;
    assert_eq!(queued["ref"], 9, "{queued}");
    // Once they end, the player may start more.
    for run_id in &started {
        assert_eq!(app.final_run(&ada_token, run_id).await["status"], "done");
    }
    assert_eq!(post_json(&generate, &ada_token, &run("three")).await.0, 202);
}

/// `run:queued`'s position follows the claim's order: a player's run queued behind another
/// player's flood of runs is told its turn (right after the flood's next run), not the flood's
/// length.
async fn a_run_queued_behind_another_players_flood_is_told_its_turn(db: Db) {
    let app = spawn_with(Setup::new(db), |c| c.llm_concurrency = 1).await;
    app.fake.set_mode(Mode::Hang);
    let ada = app.player("Ada").await.1["token"].as_str().unwrap().to_owned();
    let bo = app.player("Bo").await.1["token"].as_str().unwrap().to_owned();
    let generate = app.url("/api/generate");
    let run = |input: String| json!({"project_id": "p1", "action": "WRITE", "input": input});
    let mut last = json!(null);
    for i in 0..6 {
        let (status, queued) = post_json(&generate, &ada, &run(format!("flood {i}"))).await;
        assert_eq!(status, 202, "{queued}");
        last = queued;
    }
    // Behind each other (the first may be running already).
    assert!(last["position"].as_i64().unwrap() >= 4, "one player's runs queue behind each other: {last}");
    crate::common::eventually("the flood's first run to be called", || async {
        (app.fake.request_count() >= 1).then_some(())
    })
    .await;
    let (status, queued) = post_json(&generate, &bo, &run("bo's one".into())).await;
    assert_eq!(status, 202, "{queued}");
    assert!(queued["position"].as_i64().unwrap() <= 1, "the other player's turn: {queued}");
}

/// Two processes on one PostgreSQL database admit one player's REST runs at once: the cap
/// holds over both (each process's count alone would let each admit the cap). Five rounds of
/// twenty concurrent starts, each round a new player.
#[actix_web::test]
async fn two_processes_never_pass_a_players_cap_of_rest_runs() {
    let app = spawn_with(Setup::new(Db::Postgres), |c| c.identity.player_unwatched_runs = 2).await;
    app.fake.set_mode(Mode::Delay(Duration::from_secs(5)));
    let mut config = app.config.clone();
    config.bind = "127.0.0.1:0".parse().unwrap();
    let other = lorewire::app::start(config, std::sync::Arc::new(lorewire::core::clock::SystemClock))
        .await
        .expect("second process starts");
    let urls = [app.url("/api/generate"), format!("http://{}/api/generate", other.addr)];
    let mut admitted_total = 0;
    for round in 0..5 {
        let token = app.player(&format!("Ada{round}")).await.1["token"].as_str().unwrap().to_owned();
        let answers = futures_util::future::join_all((0..20).map(|i| {
            let (url, token) = (urls[i % 2].clone(), token.clone());
            let body = json!({"project_id": "p1", "action": "WRITE", "input": format!("round {round} run {i}")});
            async move { post_json(&url, &token, &body).await }
        }))
        .await;
        let admitted = answers.iter().filter(|(status, _)| *status == 202).count();
        assert_eq!(admitted, 2, "round {round}: {answers:?}");
        assert!(answers.iter().all(|(s, b)| *s == 202 || (*s == 429 && b["error"] == "rate_limited")), "{answers:?}");
        admitted_total += admitted;
    }
    let (_, listed) = app.admin_get("/admin/api/runs?limit=100").await;
    assert_eq!(listed["runs"].as_array().unwrap().len(), admitted_total, "nothing refused was stored: {listed}");
}

crate::both_backends!(
    a_player_leaves_at_most_the_cap_of_rest_runs_unwatched,
    a_run_queued_behind_another_players_flood_is_told_its_turn,
    only_the_game_server_changes_shared_items,
    players_change_shared_items_when_they_are_the_writers,
    player_items_are_each_players_own,
    one_players_flood_does_not_hold_back_another_player,
);
