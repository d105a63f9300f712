//! kill -9 in the middle of a batch of the writer's, on PostgreSQL with two processes: the
//! batch's statements (the studio's ledger row written once just before the commit, the
//! notifications sent together, the requests run without savepoints) are all of the batch or
//! none of it. The killed process is held by a test hook (`LOREWIRE_TEST_HOLD_COMMIT`) after
//! its batch wrote the studio's row and before its commit, while the other process writes the
//! same row: after the kill and a restart nothing is pending, no job is left, and the studio's
//! day is exactly what its players' days add up to, with nothing left reserved.

use serde_json::{json, Value};

use crate::common::fake_llm::FakeUsage;
use crate::common::{eventually, post_json, Db, FakeLlm, Mode};
use crate::process::{test_db, Server};
use crate::usage_cut::{admin, micros, player, priced_server};

const ITEMS: u64 = 6;

/// A player's day as (tokens, micro-dollars, reserved tokens, reserved micro-dollars).
async fn player_day(server: &Server, user_id: i64) -> (i64, i64, i64, i64) {
    let today = admin(server, "GET", &format!("/admin/api/players/{user_id}"), None).await["today"].clone();
    let int = |v: &Value| v.as_i64().unwrap_or_else(|| panic!("not an integer: {v}"));
    (int(&today["tokens"]), micros(&today["usd"]), int(&today["reserved_tokens"]), micros(&today["reserved_usd"]))
}

/// Once nothing stays reserved for players `a` and `b`: both were charged, and the studio's day
/// is exactly what their days add up to, with nothing left reserved.
async fn both_charged_and_the_studio_exact(server: &Server, user_a: i64, user_b: i64) {
    let (a, b) = eventually("nothing to stay reserved", || async {
        let (a, b) = (player_day(server, user_a).await, player_day(server, user_b).await);
        (a.2 == 0 && a.3 == 0 && b.2 == 0 && b.3 == 0).then_some((a, b))
    })
    .await;
    let studio = admin(server, "GET", "/admin/api/usage", None).await;
    assert!(a.0 > 0 && b.0 > 0, "both players were charged: {a:?} {b:?}");
    assert_eq!(studio["tokens"].as_i64().unwrap(), a.0 + b.0, "{studio}");
    assert_eq!(micros(&studio["usd"]), a.1 + b.1, "{studio}");
    assert_eq!(studio["reserved_tokens"], 0, "{studio}");
    assert_eq!(micros(&studio["reserved_usd"]), 0, "{studio}");
}

#[actix_web::test]
async fn a_batch_killed_before_its_commit_leaves_nothing_pending_lost_or_twice() {
    let fake = FakeLlm::start();
    fake.set_usage(Some(FakeUsage { input: 40, output: 20, cache_read: 0, cache_write: 0 }));
    fake.set_mode(Mode::Hang);
    let db = test_db(Db::Postgres).await;
    let dir = tempfile::tempdir().unwrap();
    let hold = dir.path().join("hold");
    let hold_env = hold.to_str().unwrap().to_owned();
    // Three writers each: one player's writes on one of them, the studio's row on all.
    let mut held =
        priced_server(&db.url, &fake, &[("LOREWIRE_TEST_HOLD_COMMIT", &hold_env), ("LOREWIRE_DB_WRITERS", "3")]).await;
    let other = Server::start_with(&db.url, &fake, &[("LOREWIRE_DB_WRITERS", "3")]).await;
    let (_ws_a, token_a, user_a) = player(&held).await;
    let (_ws_b, token_b, user_b) = player(&other).await;

    // Every item's call hangs until the upstream timeout (3 s): each then falls back, its
    // settlement written on the studio's row by both processes at about the same time.
    for id in 1..=ITEMS {
        let body = json!({"kind": "quest", "subject_id": id});
        assert_eq!(post_json(&held.url("/api/content"), &token_a, &body).await.0, 202);
        let body = json!({"kind": "quest", "subject_id": 100 + id});
        assert_eq!(post_json(&other.url("/api/content"), &token_b, &body).await.0, 202);
    }
    eventually("every call to be in flight", || async { (fake.request_count() >= 2 * ITEMS as usize).then_some(()) })
        .await;
    std::fs::write(&hold, b"").unwrap();
    let mut marker = hold.clone().into_os_string();
    marker.push(".held");
    let marker = std::path::PathBuf::from(marker);
    eventually("a batch that wrote the studio's row to be held before its commit", || async {
        marker.exists().then_some(())
    })
    .await;
    held.kill9();
    std::fs::remove_file(&hold).unwrap();

    fake.set_mode(Mode::Ok);
    let restarted = Server::start_with(&db.url, &fake, &[("LOREWIRE_DB_WRITERS", "3")]).await;
    for (server, token, first) in [(&restarted, &token_a, 1), (&other, &token_b, 101)] {
        for id in first..first + ITEMS {
            let content = server.final_content(token, &format!("/api/content/quest/{id}")).await;
            assert!(["ready", "fallback"].contains(&content["status"].as_str().unwrap()), "{content}");
        }
    }
    let summary = eventually("no job to be left", || async {
        let summary = admin(&restarted, "GET", "/admin/api/metrics/summary", None).await;
        (summary["queue_depth"] == 0).then_some(summary)
    })
    .await;
    assert_eq!(summary["content"]["pending"].as_i64().unwrap_or(0), 0, "{summary}");
    let total: i64 = summary["content"].as_object().unwrap().values().map(|n| n.as_i64().unwrap()).sum();
    assert_eq!(total, 2 * ITEMS as i64, "one row per item: {summary}");

    both_charged_and_the_studio_exact(&restarted, user_a, user_b).await;
}

/// kill -9 while a batch that made content writes ahead of it (new items with their claimed
/// jobs, or jobs' ends, many in one statement: `store::ahead`) is held before its commit, the
/// other process writing the same studio row meanwhile: after a restart nothing is pending, no
/// job is left, and the studio's day is exactly what its players' days add up to, with nothing
/// left reserved. Bursts of one player's requests go to the held process until one of its
/// batches made writes ahead (one writer: a burst queues behind the batch before it).
#[actix_web::test]
async fn a_batch_that_made_writes_ahead_killed_before_its_commit_leaves_nothing_behind() {
    let fake = FakeLlm::start();
    fake.set_usage(Some(FakeUsage { input: 40, output: 20, cache_read: 0, cache_write: 0 }));
    let db = test_db(Db::Postgres).await;
    let dir = tempfile::tempdir().unwrap();
    let hold = dir.path().join("hold");
    let hold_env = hold.to_str().unwrap().to_owned();
    let one_writer = ("LOREWIRE_DB_WRITERS", "1");
    let mut held = priced_server(&db.url, &fake, &[("LOREWIRE_TEST_HOLD_COMMIT", &hold_env), one_writer]).await;
    let other = Server::start_with(&db.url, &fake, &[one_writer]).await;
    let (_ws_a, token_a, user_a) = player(&held).await;
    let (_ws_b, token_b, user_b) = player(&other).await;
    // Items of both players stored before the hold.
    for id in 1..=8 {
        let body = json!({"kind": "quest", "subject_id": id});
        assert_eq!(post_json(&held.url("/api/content"), &token_a, &body).await.0, 202);
        let body = json!({"kind": "quest", "subject_id": 1000 + id});
        assert_eq!(post_json(&other.url("/api/content"), &token_b, &body).await.0, 202);
    }
    std::fs::write(&hold, b"ahead").unwrap();
    let mut marker = hold.clone().into_os_string();
    marker.push(".held");
    let marker = std::path::PathBuf::from(marker);

    let (mut asked, mut rounds) = (8, 0);
    let mut bursts = Vec::new();
    for round in 0..100 {
        if marker.exists() {
            break;
        }
        rounds += 1;
        for _ in 0..8 {
            asked += 1;
            let (url, token, body) =
                (held.url("/api/content"), token_a.clone(), json!({"kind": "quest", "subject_id": asked}));
            bursts.push(actix_web::rt::spawn(async move { post_json(&url, &token, &body).await }));
        }
        // Waits on the studio's row while a batch is held: not waited for.
        let (url, token, body) =
            (other.url("/api/content"), token_b.clone(), json!({"kind": "quest", "subject_id": 2000 + round}));
        bursts.push(actix_web::rt::spawn(async move { post_json(&url, &token, &body).await }));
        actix_web::rt::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    eventually("a batch that made writes ahead to be held before its commit", || async {
        marker.exists().then_some(())
    })
    .await;
    held.kill9();
    bursts.iter().for_each(|burst| burst.abort());
    std::fs::remove_file(&hold).unwrap();

    let restarted = Server::start_with(&db.url, &fake, &[one_writer]).await;
    let summary = eventually("nothing to be pending and no job to be left", || async {
        let summary = admin(&restarted, "GET", "/admin/api/metrics/summary", None).await;
        let pending = summary["content"]["pending"].as_i64().unwrap_or(0);
        (summary["queue_depth"] == 0 && pending == 0).then_some(summary)
    })
    .await;
    let total: i64 = summary["content"].as_object().unwrap().values().map(|n| n.as_i64().unwrap()).sum();
    // Player a asked for `asked` items, player b for 8 and one a round.
    assert!(
        total >= 16 && total <= asked + 8 + rounds,
        "the items stored before the hold, at most one row per item asked: {summary}"
    );
    both_charged_and_the_studio_exact(&restarted, user_a, user_b).await;
}

/// Several writers on one process (`LOREWIRE_DB_WRITERS=3`), many players at once: every item
/// ends, one row each, and the studio's day is exactly what its players' days add up to.
#[actix_web::test]
async fn several_writers_keep_every_players_ledger_and_the_studios_exact() {
    const PLAYERS: u64 = 8;
    let fake = FakeLlm::start();
    fake.set_usage(Some(FakeUsage { input: 40, output: 20, cache_read: 0, cache_write: 0 }));
    let db = test_db(Db::Postgres).await;
    let server = priced_server(&db.url, &fake, &[("LOREWIRE_DB_WRITERS", "3")]).await;
    let mut players = Vec::new();
    for _ in 0..PLAYERS {
        players.push(player(&server).await);
    }
    // The players at once, each one request after another.
    let requests = players.iter().enumerate().map(|(p, (_, token, _))| {
        let server = &server;
        async move {
            for i in 0..ITEMS {
                let body = json!({"kind": "quest", "subject_id": 1000 * (p as u64 + 1) + i});
                assert_eq!(post_json(&server.url("/api/content"), token, &body).await.0, 202);
            }
        }
    });
    futures_util::future::join_all(requests).await;
    let summary = eventually("every item to end", || async {
        let summary = admin(&server, "GET", "/admin/api/metrics/summary", None).await;
        (summary["content"]["ready"].as_i64() == Some((PLAYERS * ITEMS) as i64) && summary["queue_depth"] == 0)
            .then_some(summary)
    })
    .await;
    assert_eq!((&summary["content"]["fallback"], &summary["content"]["pending"]), (&json!(0), &json!(0)), "{summary}");
    let mut sum = (0, 0);
    for (_, _, user_id) in &players {
        let day = eventually("nothing to stay reserved", || async {
            let day = player_day(&server, *user_id).await;
            (day.2 == 0 && day.3 == 0).then_some(day)
        })
        .await;
        assert_eq!(day.0, 60 * ITEMS as i64, "each item charged once, as reported: {day:?}");
        sum = (sum.0 + day.0, sum.1 + day.1);
    }
    let studio = admin(&server, "GET", "/admin/api/usage", None).await;
    assert_eq!((studio["tokens"].as_i64().unwrap(), micros(&studio["usd"])), sum, "{studio}");
    assert_eq!(studio["reserved_tokens"], 0, "{studio}");
}
