//! Who shapes shared content (PROTOCOL §5): with `LOREWIRE_SHARED_CONTENT_WRITERS=server` a
//! player may create a missing item with its context but neither regenerate an existing one nor
//! ask for it with another context; the game server may (REST with the admin token, a session
//! started with a server-role JWT). With `players`, any player may.

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::common::{post_json, spawn_with, Db, Setup, TestApp, WsClient, ADMIN_TOKEN};
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
    let mut claims = json!({"iss": "studio", "sub": sub, "name": sub, "exp": exp()});
    if server {
        claims["lorewire_role"] = json!("server");
    }
    let mut ws = app.ws().await;
    ws.send(json!({"type": "session:start", "jwt": hs256(claims)})).await;
    let ack = ws.recv_type("session:ack").await;
    assert_eq!(ack["external_id"], sub, "{ack}");
    ws
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

crate::both_backends!(only_the_game_server_changes_shared_items, players_change_shared_items_when_they_are_the_writers);
