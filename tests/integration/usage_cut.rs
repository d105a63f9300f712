//! An attempt cut short by a crash is charged at restart (PROTOCOL §5), at every level: the
//! real binary is killed (-9) while a run streams, a content item's call and a mood's call are
//! in flight; after the restart each is called again and the ledgers hold both calls: the cut
//! one at what it had reserved, the new one at what it used, exact to the micro-dollar and the
//! token, with nothing left reserved.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::fake_llm::FakeUsage;
use crate::common::{eventually, get_json, post_json, Db, FakeLlm, Mode, WsClient, ADMIN_TOKEN};
use crate::process::{test_db, Server};

/// $3 per million input tokens, $15 per million output tokens.
const PRICE: (i64, i64) = (3, 15);
const USAGE: FakeUsage = FakeUsage { input: 40, output: 20, cache_read: 0, cache_write: 0 };
/// What one uncut call costs: `USAGE` at `PRICE`, in micro-dollars.
const ONE_CALL_MICROS: i64 = 40 * PRICE.0 + 20 * PRICE.1;
const ONE_CALL_TOKENS: i64 = 60;

pub(crate) async fn admin(server: &Server, method: &str, path: &str, body: Option<Value>) -> Value {
    let client = crate::common::http();
    let req = match method {
        "PUT" => client.put(server.url(path)),
        _ => client.get(server.url(path)),
    }
    .bearer_auth(ADMIN_TOKEN);
    let mut resp = match body {
        Some(body) => req.send_json(&body).await.unwrap(),
        None => req.send().await.unwrap(),
    };
    assert!(resp.status().is_success(), "{method} {path}: {}", resp.status());
    resp.json().limit(1 << 20).await.unwrap()
}

pub(crate) async fn priced_server(db_url: &str, fake: &FakeLlm, env: &[(&str, &str)]) -> Server {
    let server = Server::start_with(db_url, fake, env).await;
    let model = admin(&server, "GET", "/admin/api/llm", None).await["model"].as_str().unwrap().to_owned();
    let price = json!({"input_usd": PRICE.0, "output_usd": PRICE.1, "cache_read_usd": 0, "cache_write_usd": 0});
    admin(&server, "PUT", &format!("/admin/api/prices/{model}"), Some(price)).await;
    server
}

pub(crate) async fn player(server: &Server) -> (WsClient, String, i64) {
    let mut ws = WsClient::connect(&server.url("/ws")).await;
    ws.send(json!({"type": "session:start", "nickname": "Cut"})).await;
    let ack = ws.recv_type("session:ack").await;
    (ws, ack["token"].as_str().unwrap().to_owned(), ack["user_id"].as_i64().unwrap())
}

pub(crate) fn micros(usd: &Value) -> i64 {
    (usd.as_f64().unwrap_or_else(|| panic!("not a number: {usd}")) * 1e6).round() as i64
}

/// The player's and the studio's day, as (tokens, micro-dollars), once nothing is reserved.
async fn settled_days(server: &Server, user_id: i64) -> ((i64, i64), (i64, i64)) {
    let path = format!("/admin/api/players/{user_id}");
    let today = eventually("nothing to stay reserved", || async {
        let today = admin(server, "GET", &path, None).await["today"].clone();
        (today["reserved_tokens"] == 0 && micros(&today["reserved_usd"]) == 0).then_some(today)
    })
    .await;
    let studio = admin(server, "GET", "/admin/api/usage", None).await;
    (
        (today["tokens"].as_i64().unwrap(), micros(&today["usd"])),
        (studio["tokens"].as_i64().unwrap(), micros(&studio["usd"])),
    )
}

async fn a_run_cut_by_a_crash_is_charged_at_restart(db: Db) {
    let fake = FakeLlm::start();
    fake.set_stream_chunks((0..30).map(|i| format!("verse{i:02} ")).collect());
    fake.set_chunk_pause(Some(Duration::from_millis(100)));
    fake.set_usage(Some(USAGE));
    let db = test_db(db).await;
    let env = [("LOREWIRE_LLM_CONCURRENCY", "1"), ("LOREWIRE_RETRY_BASE_MS", "50")];
    let mut server = priced_server(&db.url, &fake, &env).await;
    admin(&server, "PUT", "/admin/api/budgets/p1", Some(json!({"limit_usd": 5}))).await;
    let (_ws, token, user_id) = player(&server).await;
    let body = json!({"project_id": "p1", "action": "WRITE", "input": "the one cut short"});
    let (status, body) = post_json(&server.url("/api/generate"), &token, &body).await;
    assert_eq!(status, 202, "{body}");
    let run_id = body["run_id"].as_str().unwrap().to_owned();
    eventually("the run to stream", || async { (fake.request_count() == 1).then_some(()) }).await;
    let budget = admin(&server, "GET", "/admin/api/budgets/p1", None).await;
    let reserved = micros(&budget["reserved_usd"]);
    assert!(reserved > ONE_CALL_MICROS, "the attempt holds its worst case: {budget}");
    server.kill9();

    fake.set_chunk_pause(None);
    let server = Server::start_with(&db.url, &fake, &env).await;
    let url = server.url(&format!("/api/runs/{run_id}"));
    let run = eventually("the run to finish after the restart", || async {
        let (_, run) = get_json(&url, Some(&token)).await;
        (run["status"] == "done").then_some(run)
    })
    .await;
    assert_eq!(run["attempts"], 2, "{run}");
    assert_eq!(fake.request_count(), 2);

    // The cut attempt is charged its reservation, the second what it used: on the run, its
    // cost events, the project, the player and the studio alike.
    let total = reserved + ONE_CALL_MICROS;
    assert_eq!(micros(&run["cost_usd"]), total, "{run}");
    let costs = admin(&server, "GET", "/admin/api/costs?project_id=p1", None).await;
    let events: Vec<(i64, i64)> = costs["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["attempt"].as_i64().unwrap(), micros(&e["cost_usd"])))
        .collect();
    assert!(events.contains(&(1, reserved)) && events.contains(&(2, ONE_CALL_MICROS)), "{costs}");
    let budget = admin(&server, "GET", "/admin/api/budgets/p1", None).await;
    assert_eq!((micros(&budget["spent_usd"]), micros(&budget["reserved_usd"])), (total, 0), "{budget}");
    let (player_day, studio_day) = settled_days(&server, user_id).await;
    assert_eq!(player_day.1, total);
    assert_eq!(studio_day, player_day);
    assert!(player_day.0 > 2 * ONE_CALL_TOKENS, "the cut attempt's tokens are its bound: {player_day:?}");
}

/// With its attempts spent by the cut one, the run ends `dead` at restart: the cut attempt is
/// charged all the same.
async fn a_run_whose_last_attempt_was_cut_is_charged_as_it_dies(db: Db) {
    let fake = FakeLlm::start();
    fake.set_stream_chunks((0..30).map(|i| format!("verse{i:02} ")).collect());
    fake.set_chunk_pause(Some(Duration::from_millis(100)));
    let db = test_db(db).await;
    let env = [("LOREWIRE_MAX_ATTEMPTS", "1")];
    let mut server = priced_server(&db.url, &fake, &env).await;
    admin(&server, "PUT", "/admin/api/budgets/p1", Some(json!({"limit_usd": 5}))).await;
    let (_ws, token, user_id) = player(&server).await;
    let body = json!({"project_id": "p1", "action": "WRITE", "input": "cut, then out of attempts"});
    let (status, body) = post_json(&server.url("/api/generate"), &token, &body).await;
    assert_eq!(status, 202, "{body}");
    let run_id = body["run_id"].as_str().unwrap().to_owned();
    eventually("the run to stream", || async { (fake.request_count() == 1).then_some(()) }).await;
    let reserved = micros(&admin(&server, "GET", "/admin/api/budgets/p1", None).await["reserved_usd"]);
    assert!(reserved > 0);
    server.kill9();

    let server = Server::start_with(&db.url, &fake, &env).await;
    let url = server.url(&format!("/api/runs/{run_id}"));
    let run = eventually("the run to end after the restart", || async {
        let (_, run) = get_json(&url, Some(&token)).await;
        (run["status"] == "dead").then_some(run)
    })
    .await;
    assert_eq!(fake.request_count(), 1, "no attempt was left: {run}");
    assert_eq!(micros(&run["cost_usd"]), reserved, "{run}");
    let budget = admin(&server, "GET", "/admin/api/budgets/p1", None).await;
    assert_eq!((micros(&budget["spent_usd"]), micros(&budget["reserved_usd"])), (reserved, 0), "{budget}");
    let (player_day, studio_day) = settled_days(&server, user_id).await;
    assert_eq!(player_day.1, reserved);
    assert_eq!(studio_day, player_day);
}

async fn content_and_moods_cut_by_a_crash_are_charged_at_restart(db: Db) {
    let fake = FakeLlm::start();
    fake.set_usage(Some(USAGE));
    let db = test_db(db).await;
    let mut server = priced_server(&db.url, &fake, &[]).await;

    // Measured first: what one uncut item and one uncut mood hold while their call is out.
    fake.set_mode(Mode::Hang);
    let (mut ws, token, user_id) = player(&server).await;
    ws.lobby_frames = true;
    ws.recv_type("presence:state").await;
    let (status, _) = post_json(&server.url("/api/content"), &token, &json!({"kind": "quest", "subject_id": 1})).await;
    assert_eq!(status, 202);
    ws.send(json!({"type": "message:send", "text": "anyone out there?"})).await;
    ws.recv_type("message:new").await;
    eventually("both calls to be out", || async { (fake.request_count() >= 2).then_some(()) }).await;
    let today = admin(&server, "GET", &format!("/admin/api/players/{user_id}"), None).await["today"].clone();
    let held = (today["reserved_tokens"].as_i64().unwrap(), micros(&today["reserved_usd"]));
    assert!(held.0 > 2 * ONE_CALL_TOKENS && held.1 > 2 * ONE_CALL_MICROS, "{today}");
    server.kill9();

    fake.set_mode(Mode::Ok);
    let server = Server::start_with(&db.url, &fake, &[]).await;
    let item = eventually("the item to be ready after the restart", || async {
        let (_, item) = get_json(&server.url("/api/content/quest/1"), Some(&token)).await;
        (item["status"] == "ready").then_some(item)
    })
    .await;
    assert_eq!(item["status"], "ready");
    eventually("the mood to settle after the restart", || async {
        let (mut ws, _) = server.player().await;
        ws.lobby_frames = true;
        let history = ws.recv_type("lobby:history").await;
        (history["messages"][0]["mood_status"] == "ready").then_some(())
    })
    .await;
    assert_eq!(fake.request_count(), 4, "each cut call was made once more, no more");
    // Each cut call is charged what it held, each new call what it used.
    let (player_day, studio_day) = settled_days(&server, user_id).await;
    assert_eq!(player_day, (held.0 + 2 * ONE_CALL_TOKENS, held.1 + 2 * ONE_CALL_MICROS));
    assert_eq!(studio_day, player_day);
}

both_backends!(
    a_run_cut_by_a_crash_is_charged_at_restart,
    a_run_whose_last_attempt_was_cut_is_charged_as_it_dies,
    content_and_moods_cut_by_a_crash_are_charged_at_restart
);
