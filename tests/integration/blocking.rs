//! Blocking a player (PROTOCOL §5, §6): every open session of the player closes with 4003
//! "blocked", on this process and on every other (LISTEN/NOTIFY or Redis), while other players
//! play on; its starts get `error:unauthorized` and its REST calls 403 until it is unblocked; a
//! start that read the flag just before the block still closes; and
//! `LOREWIRE_MODERATION_BLOCK_AFTER` flags within 24 h block a player by themselves.

use std::sync::Arc;
use std::time::Duration;

use lorewire::core::clock::SystemClock;
use lorewire::core::moderation::ChatModeration;
use serde_json::{json, Value};

use crate::common::{
    eventually, http, post_json, redis_prefix, redis_url, spawn_with, Db, Event, Setup, TestApp, WsClient,
};
use crate::redis::{wait_backplane, PrivateRedis};

/// Waits for the server's close and answers its code and reason.
async fn closed(ws: &mut WsClient) -> (Option<u16>, Option<String>) {
    let code = ws.expect_close().await;
    (code, ws.close_reason.clone())
}

fn blocked() -> (Option<u16>, Option<String>) {
    (Some(4003), Some("blocked".to_owned()))
}

/// A session of `token`'s player on the process at `base`.
async fn resume(base: &str, token: &str) -> (WsClient, Value) {
    let mut ws = WsClient::connect(&format!("{base}/ws")).await;
    ws.send(json!({"type": "session:start", "nickname": "Ada", "token": token, "ref": 1})).await;
    let answer = ws.recv().await;
    (ws, answer)
}

/// The session answers a frame: it is open.
async fn still_open(ws: &mut WsClient) {
    let lobby_frames = std::mem::replace(&mut ws.lobby_frames, true);
    ws.send(json!({"type": "presence:list", "after_user_id": 0, "ref": "alive"})).await;
    let page = ws.recv_type("presence:page").await;
    assert_eq!(page["ref"], "alive", "{page}");
    ws.lobby_frames = lobby_frames;
}

async fn set_blocked(app: &TestApp, user: i64, blocked: bool) {
    let (status, player) = app.admin_put(&format!("/admin/api/players/{user}"), json!({"blocked": blocked})).await;
    assert_eq!((status, player["blocked"].clone()), (200, json!(blocked)), "{player}");
}

async fn metric(base: &str, series: &str) -> String {
    let body = http().get(format!("{base}/metrics")).send().await.unwrap().body().await.unwrap();
    let text = String::from_utf8_lossy(&body).into_owned();
    text.lines().find_map(|l| l.strip_prefix(series)).unwrap_or_default().trim().to_owned()
}

/// The admin blocks a player with two tabs open: both close with 4003 "blocked", another player
/// plays on; the player's next start gets `error:unauthorized`, its REST calls 403; unblocked,
/// it starts again as the same player.
async fn blocking_closes_every_session_of_the_player(db: Db) {
    let app = spawn_with(Setup::new(db), |_| {}).await;
    let (mut first, ack) = app.player("Ada").await;
    let (token, user) = (ack["token"].as_str().unwrap().to_owned(), ack["user_id"].as_i64().unwrap());
    let (mut second, again) = resume(&app.url(""), &token).await;
    assert_eq!(again["user_id"], user, "{again}");
    let (mut bo, _) = app.player("Bo").await;

    set_blocked(&app, user, true).await;
    assert_eq!(closed(&mut first).await, blocked());
    assert_eq!(closed(&mut second).await, blocked());
    still_open(&mut bo).await;

    let (_ws, refused) = resume(&app.url(""), &token).await;
    assert_eq!((refused["type"].as_str(), refused["ref"].as_i64()), (Some("error:unauthorized"), Some(1)));
    assert_eq!(refused["message"], "this player is blocked", "{refused}");
    let (status, body) = post_json(&app.url("/api/content"), &token, &json!({"kind": "npc", "subject_id": 1})).await;
    assert_eq!((status, body["error"].clone()), (403, json!("forbidden")), "{body}");
    assert_eq!(metric(&app.url(""), "lorewire_players_blocked_total{by=\"admin\"}").await, "1");

    set_blocked(&app, user, false).await;
    let (mut back, ack) = resume(&app.url(""), &token).await;
    assert_eq!((ack["type"].as_str(), ack["user_id"].as_i64()), (Some("session:ack"), Some(user)), "{ack}");
    still_open(&mut back).await;
    still_open(&mut bo).await;
}

/// A start that read the player's flag just before the admin's block committed (held open
/// between that read and its ack) is closed with 4003 all the same: it followed the player's
/// close before it read the flag.
async fn a_start_that_read_the_flag_before_the_block_is_closed(db: Db) {
    let app = spawn_with(Setup::new(db), |c| c.test_holds.session_start = Duration::from_millis(1500)).await;
    let (ws, ack) = app.player("Ada").await;
    ws.close().await;
    let (token, user) = (ack["token"].as_str().unwrap().to_owned(), ack["user_id"].as_i64().unwrap());

    let mut late = app.ws().await;
    late.send(json!({"type": "session:start", "nickname": "Ada Again", "token": token})).await;
    // The resume has stored its nickname: the flag is read next, then the start is held.
    eventually("the resume to be stored", || async {
        let (_, player) = app.admin_get(&format!("/admin/api/players/{user}")).await;
        (player["nickname"] == "Ada Again").then_some(())
    })
    .await;
    set_blocked(&app, user, true).await;
    match late.next_event(Duration::from_secs(10)).await {
        // The flag was read before the block: the session starts, and closes at once.
        Some(Event::Json(ack)) if ack["type"] == "session:ack" => assert_eq!(closed(&mut late).await, blocked()),
        // It was read after it (a very slow read): refused.
        Some(Event::Json(refused)) => assert_eq!(refused["type"], "error:unauthorized", "{refused}"),
        other => panic!("expected the start's answer, got {other:?}"),
    }
}

crate::both_backends!(
    blocking_closes_every_session_of_the_player,
    a_start_that_read_the_flag_before_the_block_is_closed
);

/// Two processes on one PostgreSQL database (over its notifications, or over Redis when given):
/// the admin blocks on the first, and the player's session on the second closes with 4003 while
/// another player's session there stays open; the second refuses the player's next start.
async fn a_block_closes_sessions_on_every_process_over(redis: Option<(String, String)>) {
    let app = spawn_with(Setup::new(Db::Postgres), |c| {
        if let Some((url, prefix)) = redis {
            c.redis_url = Some(url);
            c.redis_prefix = prefix;
        }
    })
    .await;
    let mut config = app.config.clone();
    config.bind = "127.0.0.1:0".parse().unwrap();
    let other = lorewire::app::start(config, Arc::new(SystemClock)).await.expect("second process starts");
    let other_base = format!("http://{}", other.addr);

    let (mut here, ack) = app.player("Ada").await;
    let (token, user) = (ack["token"].as_str().unwrap().to_owned(), ack["user_id"].as_i64().unwrap());
    let (mut there, again) = resume(&other_base, &token).await;
    assert_eq!(again["user_id"], user, "{again}");
    let mut bo = WsClient::connect(&format!("{other_base}/ws")).await;
    bo.send(json!({"type": "session:start", "nickname": "Bo"})).await;
    bo.recv_type("session:ack").await;

    set_blocked(&app, user, true).await;
    assert_eq!(closed(&mut here).await, blocked());
    assert_eq!(closed(&mut there).await, blocked(), "the other process closed its session too");
    still_open(&mut bo).await;
    let (_ws, refused) = resume(&other_base, &token).await;
    assert_eq!(refused["type"], "error:unauthorized", "{refused}");

    set_blocked(&app, user, false).await;
    let (_ws, ack) = resume(&other_base, &token).await;
    assert_eq!(ack["type"], "session:ack", "{ack}");
    other.shutdown().await;
}

#[actix_web::test]
async fn a_block_closes_sessions_on_every_process_over_notify() {
    a_block_closes_sessions_on_every_process_over(None).await;
}

#[actix_web::test]
async fn a_block_closes_sessions_on_every_process_over_redis() {
    a_block_closes_sessions_on_every_process_over(Some((redis_url(), redis_prefix()))).await;
}

/// A block made while Redis is away (the other process cannot hear it) closes the player's
/// session on the other process once Redis is back: the players it has sessions of are read
/// again there.
#[actix_web::test]
async fn a_block_made_while_redis_is_away_closes_sessions_once_it_is_back() {
    let mut redis = PrivateRedis::start();
    let (url, prefix) = (redis.url(), redis_prefix());
    let app = spawn_with(Setup::new(Db::Postgres), move |c| {
        c.redis_url = Some(url);
        c.redis_prefix = prefix;
    })
    .await;
    let mut config = app.config.clone();
    config.bind = "127.0.0.1:0".parse().unwrap();
    let other = lorewire::app::start(config, Arc::new(SystemClock)).await.expect("second process starts");
    let (a, b) = (app.url(""), format!("http://{}", other.addr));
    wait_backplane(&a, true).await;
    wait_backplane(&b, true).await;
    let token = app.player_token().await;
    let (mut there, ack) = resume(&b, &token).await;
    let user = ack["user_id"].as_i64().unwrap();

    redis.kill();
    wait_backplane(&a, false).await;
    wait_backplane(&b, false).await;
    set_blocked(&app, user, true).await;
    let (_ws, refused) = resume(&b, &token).await;
    assert_eq!(refused["type"], "error:unauthorized", "the flag is stored: {refused}");

    redis.restart();
    wait_backplane(&b, true).await;
    assert_eq!(closed(&mut there).await, blocked());
    other.shutdown().await;
}

/// `LOREWIRE_MODERATION_BLOCK_AFTER=2`: a flag older than 24 h does not count; the second flagged
/// chat line within 24 h blocks the player: its session closes with 4003, it cannot start
/// again, and the admin sees it blocked.
async fn flags_within_a_day_block_the_player(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let words = dir.path().join("words.txt");
    std::fs::write(&words, "bad\n").unwrap();
    let setup = Setup { manual_clock: true, ..Setup::new(db) };
    let app = spawn_with(setup, move |c| {
        c.moderation.words = Some(words);
        c.moderation.chat = ChatModeration::Block;
        c.moderation.block_after = Some(2);
    })
    .await;
    let (mut ada, ack) = app.player("Ada").await;
    let (token, user) = (ack["token"].as_str().unwrap().to_owned(), ack["user_id"].as_i64().unwrap());
    let (mut bo, _) = app.player("Bo").await;

    ada.send(json!({"type": "message:send", "text": "so bad", "ref": 1})).await;
    assert_eq!(ada.recv_type("error:moderated").await["ref"], 1);
    app.clock.advance(Duration::from_secs(25 * 3600));
    ada.send(json!({"type": "message:send", "text": "still bad", "ref": 2})).await;
    assert_eq!(ada.recv_type("error:moderated").await["ref"], 2);
    still_open(&mut ada).await;
    let (_, player) = app.admin_get(&format!("/admin/api/players/{user}")).await;
    assert_eq!(player["blocked"], false, "one flag within 24 h: {player}");

    ada.send(json!({"type": "message:send", "text": "bad again", "ref": 3})).await;
    assert_eq!(closed(&mut ada).await, blocked());
    still_open(&mut bo).await;
    let (_ws, refused) = resume(&app.url(""), &token).await;
    assert_eq!(refused["type"], "error:unauthorized", "{refused}");
    let (_, player) = app.admin_get(&format!("/admin/api/players/{user}")).await;
    assert_eq!(player["blocked"], true, "{player}");
    assert_eq!(metric(&app.url(""), "lorewire_players_blocked_total{by=\"moderation\"}").await, "1");
    let (_, flags) = app.admin_get("/admin/api/moderation?limit=10").await;
    assert_eq!(flags["flags"].as_array().map(Vec::len), Some(3), "every flag is kept: {flags}");
}

/// A known player's flagged nickname is its flag too: with `LOREWIRE_MODERATION_BLOCK_AFTER=2`, a
/// flagged chat line and then a resume with a flagged nickname block the player, whose open
/// session closes with 4003.
async fn a_known_players_flagged_nickname_counts(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let words = dir.path().join("words.txt");
    std::fs::write(&words, "bad\n").unwrap();
    let app = spawn_with(Setup::new(db), move |c| {
        c.moderation.words = Some(words);
        c.moderation.block_after = Some(2);
    })
    .await;
    let (mut ada, ack) = app.player("Ada").await;
    let (token, user) = (ack["token"].as_str().unwrap().to_owned(), ack["user_id"].as_i64().unwrap());
    ada.send(json!({"type": "message:send", "text": "so bad", "ref": 1})).await;
    assert_eq!(ada.recv_type("error:moderated").await["ref"], 1);

    let mut renamed = app.ws().await;
    renamed.send(json!({"type": "session:start", "nickname": "B4D Ada", "token": token, "ref": 2})).await;
    let refused = renamed.recv().await;
    assert_eq!(
        (refused["type"].as_str(), refused["message"].as_str()),
        (Some("error:invalid_payload"), Some("nickname not allowed"))
    );
    assert_eq!(closed(&mut ada).await, blocked());
    let (_, flags) = app.admin_get("/admin/api/moderation?limit=10").await;
    assert_eq!(flags["flags"][0]["surface"], "nickname", "{flags}");
    assert_eq!(flags["flags"][0]["user_id"], user, "{flags}");
}

mod block_after {
    use super::*;
    crate::both_backends!(flags_within_a_day_block_the_player, a_known_players_flagged_nickname_counts);
}
