//! Usage limits (PROTOCOL §5) on every path to the LLM: the player's and the studio's daily
//! limits refusing content (new and regenerated), moods and runs (WebSocket and REST) with the
//! right frame and nothing stored; the studio's `budget_exceeded` fallback; and exactness under
//! concurrency: against a limit that fits exactly N calls, exactly N are made and the ledger
//! never passes the limit.

use std::time::Duration;

use futures_util::future::join_all;
use lorewire::content::prompts;
use lorewire::content::{ContentKind, Context};
use lorewire::core::config::Config;
use lorewire::store::usage::{self, DayRow};
use lorewire::store::Store;
use serde_json::{json, Value};

use crate::common::fake_llm::FakeUsage;
use crate::common::{get_json, post_json, spawn_with, Db, Setup, TestApp};

/// The token bound an npc item with no context reserves (subject ids of two digits).
fn npc_bound(config: &Config, subject_id: u64) -> (i64, i64) {
    let prompt = prompts::prompt(ContentKind::Npc, subject_id, &Context::default(), config.max_output_tokens);
    prompt.bound_with_reask()
}

async fn store_of(app: &TestApp) -> Store {
    let url = app.db.url.clone();
    actix_web::rt::task::spawn_blocking(move || Store::connect(&url).unwrap()).await.unwrap()
}

fn today() -> String {
    chrono::Utc::now().date_naive().format("%Y-%m-%d").to_string()
}

/// The ledger of one level today (zeros when nothing was reserved there).
async fn ledger(store: &Store, level: &'static str, owner: String) -> DayRow {
    store.run(move |conn| usage::day(conn, level, &owner, &today())).await.unwrap().unwrap_or_default()
}

async fn content_rows(store: &Store) -> i64 {
    use diesel::{QueryDsl, RunQueryDsl};
    store.run(|conn| Ok(lorewire::store::schema::content::table.count().get_result::<i64>(conn)?)).await.unwrap()
}

/// 50 concurrent requests for new items from one player whose daily token limit fits exactly
/// 7 reservations, each call reporting exactly its bound: 7 items are made, 43 requests get
/// `budget_exceeded` with `level: player` and store nothing, and the ledger ends exactly at 7
/// bounds, never past the limit. An existing item is still served.
async fn player_limit_is_exact_under_concurrent_content_requests(db: Db) {
    let probe = Config::with_database("unused");
    let (prompt, output) = npc_bound(&probe, 10);
    let per_item = prompt + output;
    let app = spawn_with(Setup::new(db), |c| c.usage.player_daily_tokens = Some(7 * per_item)).await;
    // Each call reports half the bound: the re-ask never happens, so each item spends half.
    app.fake.set_usage(Some(FakeUsage { input: prompt as u64 / 2, output: output as u64 / 2, ..FakeUsage::default() }));
    app.fake.set_mode(crate::common::Mode::Delay(Duration::from_millis(300)));
    let (_ws, ack) = app.player("Ada").await;
    let token = ack["token"].as_str().unwrap().to_owned();
    let user = ack["user_id"].as_i64().unwrap();
    let store = store_of(&app).await;

    let url = app.url("/api/content");
    let answers = join_all((10..60).map(|id| {
        let (url, token) = (url.clone(), token.clone());
        async move { post_json(&url, &token, &json!({"kind": "npc", "subject_id": id})).await }
    }))
    .await;
    let accepted = answers.iter().filter(|(s, _)| *s == 202).count();
    let refused: Vec<&Value> = answers.iter().filter(|(s, _)| *s == 402).map(|(_, b)| b).collect();
    assert_eq!(accepted, 7, "{answers:?}");
    assert_eq!(refused.len(), 43, "{answers:?}");
    for body in &refused {
        assert_eq!(body["error"], "budget_exceeded", "{body}");
        assert_eq!(body["level"], "player", "{body}");
    }
    let row = ledger(&store, "player", user.to_string()).await;
    assert!(row.spent_tokens + row.reserved_tokens <= 7 * per_item, "{row:?}");
    assert_eq!(content_rows(&store).await, 7, "refused requests store nothing");

    crate::common::eventually("every item to be settled", || async {
        let row = ledger(&store, "player", user.to_string()).await;
        (row.reserved_tokens == 0).then_some(row)
    })
    .await;
    let row = ledger(&store, "player", user.to_string()).await;
    assert_eq!(row.spent_tokens, 7 * (prompt / 2 + output / 2), "{row:?}");
    let studio = ledger(&store, "studio", String::new()).await;
    assert_eq!(studio.spent_tokens, row.spent_tokens, "the studio is charged the same calls");
    assert_eq!(app.fake.request_count(), 7);

    // An existing item is served as it is, without a reservation.
    let made = answers.iter().find(|(s, _)| *s == 202).map(|(_, b)| b["subject_id"].as_u64().unwrap()).unwrap();
    let (status, item) = get_json(&app.url(&format!("/api/content/npc/{made}")), Some(&token)).await;
    assert_eq!(status, 200, "{item}");
    let (status, again) = post_json(&url, &token, &json!({"kind": "npc", "subject_id": made})).await;
    assert_eq!(status, 202, "{again}");
    assert_eq!(again["version"], item["version"], "served as it is");
}

/// A player over the limit: `content:request` for a new item and a regeneration get
/// `error:budget_exceeded` with `level: player` over the WebSocket; nothing stored, no call.
async fn player_over_limit_is_refused_over_the_websocket(db: Db) {
    let probe = Config::with_database("unused");
    let (prompt, output) = npc_bound(&probe, 10);
    let app = spawn_with(Setup::new(db), |c| c.usage.player_daily_tokens = Some(prompt + output)).await;
    app.fake.set_usage(Some(FakeUsage { input: 1, output: 1, ..FakeUsage::default() }));
    let (mut ws, ack) = app.player("Ada").await;
    let token = ack["token"].as_str().unwrap().to_owned();
    ws.send(json!({"type": "content:request", "kind": "npc", "subject_id": 10, "ref": 1})).await;
    let first = ws.recv_type("content:snapshot").await;
    assert_eq!(first["ref"], 1);
    crate::common::eventually("the first item to be written", || async {
        let (_, c) = get_json(&app.url("/api/content/npc/10"), Some(&token)).await;
        (c["status"] == "ready").then_some(())
    })
    .await;
    let calls = app.fake.request_count();
    for (id, regenerate, reference) in [(11, false, 2), (10, true, 3)] {
        ws.send(json!({"type": "content:request", "kind": "npc", "subject_id": id, "regenerate": regenerate, "ref": reference}))
            .await;
        let refused = ws.recv_type("error:budget_exceeded").await;
        assert_eq!(refused["ref"], reference, "{refused}");
        assert_eq!(refused["level"], "player", "{refused}");
    }
    let store = store_of(&app).await;
    assert_eq!(content_rows(&store).await, 1);
    let (_, item) = get_json(&app.url("/api/content/npc/10"), Some(&token)).await;
    assert_eq!(item["status"], "ready", "the regeneration changed nothing: {item}");
    assert_eq!(item["version"], 2, "{item}");
    assert_eq!(app.fake.request_count(), calls, "no upstream call");
}

/// The studio over its daily limit: a new item is written with its fallback at once
/// (`budget_exceeded`, never pending) and no call is made.
async fn studio_over_limit_gives_new_items_their_fallback(db: Db) {
    let app = spawn_with(Setup::new(db), |c| c.usage.studio_daily_tokens = Some(10)).await;
    let (mut ws, _) = app.player("Ada").await;
    ws.send(json!({"type": "content:request", "kind": "quest", "subject_id": 5, "ref": 1})).await;
    let snapshot = ws.recv_type("content:snapshot").await;
    let content = &snapshot["content"];
    assert_eq!(content["status"], "fallback", "{snapshot}");
    assert_eq!(content["reason"], "budget_exceeded", "{snapshot}");
    assert!(!content["fields"]["flavorText"].as_str().unwrap().is_empty(), "{snapshot}");
    ws.expect_silence(Duration::from_millis(300)).await;
    assert_eq!(app.fake.request_count(), 0);
    let store = store_of(&app).await;
    let studio = ledger(&store, "studio", String::new()).await;
    assert_eq!((studio.spent_tokens, studio.reserved_tokens), (0, 0), "{studio:?}");
}

/// A mood over the author's (or the studio's) limit settles `fallback` without a call; within
/// them, it is charged to its author and the studio.
async fn moods_over_a_limit_settle_fallback_without_a_call(db: Db) {
    for (player, studio) in [(Some(1), None), (None, Some(1)), (None, None)] {
        let app = spawn_with(Setup::new(db), |c| {
            c.usage.player_daily_tokens = player;
            c.usage.studio_daily_tokens = studio;
        })
        .await;
        app.fake.set_usage(Some(FakeUsage { input: 5, output: 3, ..FakeUsage::default() }));
        let (mut ws, ack) = app.player("Ada").await;
        ws.lobby_frames = true;
        ws.send(json!({"type": "message:send", "text": "so glad to be here"})).await;
        let message = ws.recv_type("message:new").await;
        assert_eq!(message["message"]["mood_status"], "pending", "{message}");
        let mood = ws.recv_type("message:mood_updated").await;
        let store = store_of(&app).await;
        let author = ledger(&store, "player", ack["user_id"].to_string()).await;
        if player.is_some() || studio.is_some() {
            assert_eq!(mood["mood_status"], "fallback", "{player:?} {studio:?}: {mood}");
            assert_eq!(app.fake.request_count(), 0, "{player:?} {studio:?}");
            assert_eq!((author.spent_tokens, author.reserved_tokens), (0, 0), "{author:?}");
        } else {
            assert_eq!(mood["mood_status"], "ready", "{mood}");
            assert_eq!((author.spent_tokens, author.reserved_tokens), (8, 0), "{author:?}");
            assert_eq!(ledger(&store, "studio", String::new()).await.spent_tokens, 8);
        }
    }
}

async fn run_rows(store: &Store) -> i64 {
    use diesel::{QueryDsl, RunQueryDsl};
    store.run(|conn| Ok(lorewire::store::schema::runs::table.count().get_result::<i64>(conn)?)).await.unwrap()
}

/// Runs: each level refuses over the WebSocket and over REST with `error:budget_exceeded`
/// naming the first level that refuses (player before project before studio), nothing stored
/// and no call; a run within the limits is charged to its player and the studio exactly.
async fn runs_are_refused_by_the_first_level_that_refuses(db: Db) {
    // (player tokens, project budget in USD, studio tokens, the level that refuses)
    let cases = [
        (Some(10), None, None, "player"),
        (Some(10), Some(0.0), Some(10), "player"),
        (None, Some(0.0), Some(10), "project"),
        (None, None, Some(10), "studio"),
    ];
    for (player, budget, studio, level) in cases {
        let app = spawn_with(Setup::new(db), |c| {
            c.usage.player_daily_tokens = player;
            c.usage.studio_daily_tokens = studio;
        })
        .await;
        if let Some(limit) = budget {
            let (status, body) = app.admin_put("/admin/api/budgets/p1", json!({"limit_usd": limit})).await;
            assert_eq!(status, 200, "{body}");
            let price = lorewire::runs::Price { input: 1, output: 1, cache_read: 1, cache_write: 1 };
            app.set_price(&app.config.llm_model, &price).await;
        }
        let (mut ws, ack) = app.player("Ada").await;
        let token = ack["token"].as_str().unwrap().to_owned();
        ws.send(json!({"type": "generate:start", "project_id": "p1", "action": "WRITE", "input": "a bell", "ref": 7}))
            .await;
        let refused = ws.recv_type("error:budget_exceeded").await;
        assert_eq!((refused["ref"].clone(), refused["level"].clone()), (json!(7), json!(level)), "{refused}");
        let body = json!({"project_id": "p1", "action": "REWRITE", "input": "a bell"});
        let (status, refused) = post_json(&app.url("/api/generate"), &token, &body).await;
        assert_eq!((status, refused["level"].clone()), (402, json!(level)), "{refused}");
        assert_eq!(refused["error"], "budget_exceeded", "{refused}");
        let store = store_of(&app).await;
        assert_eq!(run_rows(&store).await, 0, "{level}: nothing stored");
        assert_eq!(app.fake.request_count(), 0, "{level}: no call");
    }

    let app = spawn_with(Setup::new(db), |c| {
        c.usage.player_daily_tokens = Some(100_000);
        c.usage.studio_daily_tokens = Some(100_000);
    })
    .await;
    app.fake.set_usage(Some(FakeUsage { input: 40, output: 2, ..FakeUsage::default() }));
    let (_ws, ack) = app.player("Ada").await;
    let token = ack["token"].as_str().unwrap().to_owned();
    let body = json!({"project_id": "p1", "action": "WRITE", "input": "a bell"});
    let (status, run) = post_json(&app.url("/api/generate"), &token, &body).await;
    assert_eq!(status, 202, "{run}");
    let run = app.final_run(&token, run["run_id"].as_str().unwrap()).await;
    assert_eq!(run["status"], "done", "{run}");
    let store = store_of(&app).await;
    let player = ledger(&store, "player", ack["user_id"].to_string()).await;
    assert_eq!((player.spent_tokens, player.reserved_tokens), (42, 0), "{player:?}");
    let studio = ledger(&store, "studio", String::new()).await;
    assert_eq!((studio.spent_tokens, studio.reserved_tokens), (42, 0), "{studio:?}");
}

both_backends!(
    runs_are_refused_by_the_first_level_that_refuses,
    moods_over_a_limit_settle_fallback_without_a_call,
    player_limit_is_exact_under_concurrent_content_requests,
    player_over_limit_is_refused_over_the_websocket,
    studio_over_limit_gives_new_items_their_fallback,
);

/// The admin's limits, players and usage: GET/PUT /admin/api/limits changes only the keys it
/// names and a new limit applies at once; a player's overrides and spend; a day's top players.
async fn admin_reads_and_changes_limits_players_and_usage(db: Db) {
    let app = spawn_with(Setup::new(db), |c| c.usage.player_daily_tokens = Some(200_000)).await;
    let (status, limits) = app.admin_get("/admin/api/limits").await;
    assert_eq!(status, 200, "{limits}");
    assert_eq!(
        limits,
        json!({"studio_daily_usd": null, "studio_daily_tokens": null, "player_daily_usd": null,
               "player_daily_tokens": 200000, "player_llm_rate": "1000000/1s"})
    );
    let (status, limits) =
        app.admin_put("/admin/api/limits", json!({"studio_daily_usd": 2.5, "player_daily_tokens": null})).await;
    assert_eq!(status, 200, "{limits}");
    assert_eq!((limits["studio_daily_usd"].clone(), limits["player_daily_tokens"].clone()), (json!(2.5), Value::Null));
    assert_eq!(limits["player_llm_rate"], "1000000/1s", "left as it was");
    for bad in [json!({"studio_daily_usd": -1}), json!({"player_daily_tokens": 1.5}), json!({"player_llm_rate": "x"})] {
        let (status, body) = app.admin_put("/admin/api/limits", bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }

    // Studio tokens set to nothing at run time: the next new item falls back at once.
    let (status, _) =
        app.admin_put("/admin/api/limits", json!({"studio_daily_usd": null, "studio_daily_tokens": 0})).await;
    assert_eq!(status, 200);
    let (_ws, ack) = app.player("Ada").await;
    let token = ack["token"].as_str().unwrap().to_owned();
    let user = ack["user_id"].as_i64().unwrap();
    let (status, item) = post_json(&app.url("/api/content"), &token, &json!({"kind": "npc", "subject_id": 1})).await;
    assert_eq!((status, item["reason"].clone()), (202, json!("budget_exceeded")), "{item}");
    let (status, _) = app.admin_put("/admin/api/limits", json!({"studio_daily_tokens": null})).await;
    assert_eq!(status, 200);

    // The player's own limit: 0 tokens refuses the next item with level player.
    let (status, player) = app.admin_put(&format!("/admin/api/players/{user}"), json!({"daily_tokens": 0})).await;
    assert_eq!(status, 200, "{player}");
    assert_eq!(player["limits"]["daily_tokens"], 0, "{player}");
    assert_eq!(player["nickname"], "Ada", "{player}");
    assert_eq!(player["blocked"], false, "{player}");
    let (status, refused) = post_json(&app.url("/api/content"), &token, &json!({"kind": "npc", "subject_id": 2})).await;
    assert_eq!((status, refused["level"].clone()), (402, json!("player")), "{refused}");
    let (status, player) = app.admin_put(&format!("/admin/api/players/{user}"), json!({"daily_tokens": null})).await;
    assert_eq!((status, player["limits"]["daily_tokens"].clone()), (200, Value::Null), "{player}");

    app.fake.set_usage(Some(FakeUsage { input: 30, output: 12, ..FakeUsage::default() }));
    let item = app.content_final(&token, "npc", 3, json!({})).await;
    assert_eq!(item["status"], "ready", "{item}");
    let (status, player) = app.admin_get(&format!("/admin/api/players/{user}")).await;
    assert_eq!(status, 200, "{player}");
    // The default model is priced at $1 and $5 per million: 30 + 60 micro-dollars.
    assert_eq!(player["today"], json!({"tokens": 42, "usd": 0.00009, "reserved_tokens": 0, "reserved_usd": 0.0}));
    let (status, day) = app.admin_get("/admin/api/usage?limit=5").await;
    assert_eq!(status, 200, "{day}");
    assert_eq!(day["tokens"], 42, "{day}");
    assert_eq!(day["top"], json!([{"user_id": user, "nickname": "Ada", "tokens": 42, "usd": 0.00009}]), "{day}");
    let (status, _) = app.admin_get("/admin/api/usage?day=yesterday").await;
    assert_eq!(status, 400);
    let (status, _) = app.admin_get("/admin/api/players/999999").await;
    assert_eq!(status, 404);
}

mod admin_both {
    use super::*;
    both_backends!(admin_reads_and_changes_limits_players_and_usage);
}

/// `LOREWIRE_PLAYER_LLM_RATE`: new items, regenerations and runs count together; past the
/// rate they get `rate_limited` with `level: player` (WebSocket and REST) and nothing is
/// stored; an existing item, an identical finished run (cached) and a run a limit refused are
/// free.
async fn the_player_start_rate_counts_new_items_and_runs(db: Db) {
    let app = spawn_with(Setup::new(db), |c| c.usage.player_llm_rate = "3/1m".parse().unwrap()).await;
    let (mut ws, ack) = app.player("Ada").await;
    let token = ack["token"].as_str().unwrap().to_owned();
    assert_eq!(app.content_final(&token, "npc", 1, json!({})).await["status"], "ready");
    // The item as it is: counted before its write knew, then given back.
    for _ in 0..4 {
        let (status, item) =
            post_json(&app.url("/api/content"), &token, &json!({"kind": "npc", "subject_id": 1})).await;
        assert_eq!((status, item["status"].clone()), (202, json!("ready")), "{item}");
    }
    assert_eq!(app.content_final(&token, "npc", 1, json!({"regenerate": true})).await["status"], "ready");
    // A run a limit refuses started nothing: its start is given back.
    let price = lorewire::runs::Price { input: 1_000_000, output: 1_000_000, cache_read: 0, cache_write: 0 };
    app.set_price(&app.config.llm_model, &price).await;
    assert_eq!(app.admin_put("/admin/api/budgets/tiny", json!({"limit_usd": 0.000001})).await.0, 200);
    for _ in 0..4 {
        let body = json!({"project_id": "tiny", "action": "WRITE", "input": "a bell"});
        let (status, refused) = post_json(&app.url("/api/generate"), &token, &body).await;
        assert_eq!((status, refused["level"].as_str()), (402, Some("project")), "{refused}");
    }
    let body = json!({"project_id": "p1", "action": "WRITE", "input": "a bell"});
    let (status, run) = post_json(&app.url("/api/generate"), &token, &body).await;
    assert_eq!(status, 202, "{run}");
    assert_eq!(app.final_run(&token, run["run_id"].as_str().unwrap()).await["status"], "done");

    ws.send(json!({"type": "content:request", "kind": "npc", "subject_id": 2, "ref": 1})).await;
    let refused = ws.recv_type("error:rate_limited").await;
    assert_eq!((refused["ref"].clone(), refused["level"].clone()), (json!(1), json!("player")), "{refused}");
    let other = json!({"project_id": "p1", "action": "WRITE", "input": "another bell"});
    let (status, refused) = post_json(&app.url("/api/generate"), &token, &other).await;
    assert_eq!(
        (status, refused["error"].clone(), refused["level"].clone()),
        (429, json!("rate_limited"), json!("player"))
    );

    // Free: the item as it is, and the identical finished run answered from its text.
    let (status, item) = post_json(&app.url("/api/content"), &token, &json!({"kind": "npc", "subject_id": 1})).await;
    assert_eq!((status, item["status"].clone()), (202, json!("ready")), "{item}");
    let (status, cached) = post_json(&app.url("/api/generate"), &token, &body).await;
    assert_eq!((status, cached["cached"].clone()), (202, json!(true)), "{cached}");
    let store = store_of(&app).await;
    assert_eq!((content_rows(&store).await, run_rows(&store).await), (1, 1), "nothing stored for the refused");
}

mod rate_both {
    use super::*;
    both_backends!(the_player_start_rate_counts_new_items_and_runs);
}

/// A blocked player: its session starts get `error:unauthorized` and its REST calls 403;
/// unblocked, it plays again.
async fn a_blocked_player_cannot_start_or_call(db: Db) {
    let app = spawn_with(Setup::new(db), |_| {}).await;
    let (ws, ack) = app.player("Ada").await;
    ws.close().await;
    let (token, user) = (ack["token"].as_str().unwrap().to_owned(), ack["user_id"].as_i64().unwrap());
    let (status, player) = app.admin_put(&format!("/admin/api/players/{user}"), json!({"blocked": true})).await;
    assert_eq!((status, player["blocked"].clone()), (200, json!(true)), "{player}");

    let mut ws = app.ws().await;
    ws.send(json!({"type": "session:start", "nickname": "Ada", "token": token, "ref": 1})).await;
    let refused = ws.recv_type("error:unauthorized").await;
    assert_eq!(refused["message"], "this player is blocked", "{refused}");
    let (status, body) = post_json(&app.url("/api/content"), &token, &json!({"kind": "npc", "subject_id": 1})).await;
    assert_eq!((status, body["error"].clone()), (403, json!("forbidden")), "{body}");
    let store = store_of(&app).await;
    assert_eq!(content_rows(&store).await, 0);

    let (status, _) = app.admin_put(&format!("/admin/api/players/{user}"), json!({"blocked": false})).await;
    assert_eq!(status, 200);
    let (status, body) = post_json(&app.url("/api/content"), &token, &json!({"kind": "npc", "subject_id": 1})).await;
    assert_eq!(status, 202, "{body}");
}

mod blocked_both {
    use super::*;
    both_backends!(a_blocked_player_cannot_start_or_call);
}

/// Two processes on one PostgreSQL database, 60 concurrent content requests from one player
/// split between them, against a daily token limit that fits exactly 9 reservations (each call
/// reporting its whole bound, so no settlement frees room): exactly 9 items are made, over both
/// processes the ledger never passes the limit, and the studio is charged the same.
#[actix_web::test]
async fn two_processes_never_overshoot_a_players_limit() {
    let probe = Config::with_database("unused");
    let (prompt, output) = npc_bound(&probe, 10);
    let per_item = prompt + output;
    let app = spawn_with(Setup::new(Db::Postgres), |c| c.usage.player_daily_tokens = Some(9 * per_item)).await;
    app.fake.set_usage(Some(FakeUsage { input: prompt as u64, output: output as u64, ..FakeUsage::default() }));
    let mut config = app.config.clone();
    config.bind = "127.0.0.1:0".parse().unwrap();
    let other = lorewire::app::start(config, std::sync::Arc::new(lorewire::core::clock::SystemClock))
        .await
        .expect("second process starts");
    let (_ws, ack) = app.player("Ada").await;
    let token = ack["token"].as_str().unwrap().to_owned();
    let user = ack["user_id"].as_i64().unwrap();
    let urls = [app.url("/api/content"), format!("http://{}/api/content", other.addr)];
    let answers = join_all((10..70).map(|id| {
        let (url, token) = (urls[id as usize % 2].clone(), token.clone());
        async move { post_json(&url, &token, &json!({"kind": "npc", "subject_id": id})).await }
    }))
    .await;
    let accepted = answers.iter().filter(|(s, _)| *s == 202).count();
    assert_eq!(accepted, 9, "{answers:?}");
    assert!(answers.iter().all(|(s, b)| *s == 202 || (*s == 402 && b["level"] == "player")), "{answers:?}");
    let store = store_of(&app).await;
    crate::common::eventually("every item to be settled", || async {
        let row = ledger(&store, "player", user.to_string()).await;
        assert!(row.spent_tokens + row.reserved_tokens <= 9 * per_item, "{row:?}");
        (row.reserved_tokens == 0).then_some(())
    })
    .await;
    let row = ledger(&store, "player", user.to_string()).await;
    assert_eq!(row.spent_tokens, 9 * per_item, "{row:?}");
    assert_eq!(ledger(&store, "studio", String::new()).await.spent_tokens, 9 * per_item);
    assert_eq!(content_rows(&store).await, 9);
}
