//! Generation runs under races and against a hostile upstream or stored data: an abort is told
//! only once committed, a run's text stops at its bound however much the upstream sends, and a
//! corrupt run row is left out of the admin's lists instead of breaking them.

use std::time::Duration;

use diesel::prelude::*;
use lorewire::llm::providers::Provider;
use lorewire::runs::Price;
use lorewire::store::schema::runs;
use lorewire::store::{DbConn, Store};
use serde_json::{json, Value};

use crate::common::{get_json, post_json, spawn_provider, Db, Event, TestApp, WsClient};

const PRICE: Price = Price { input: 2_000_000, output: 10_000_000, cache_read: 200_000, cache_write: 2_500_000 };

fn start(input: &str, r: Value) -> Value {
    json!({"type": "generate:start", "project_id": "p1", "action": "WRITE", "input": input, "ref": r})
}

async fn store(app: &TestApp) -> Store {
    let url = app.db.url.clone();
    actix_web::rt::task::spawn_blocking(move || Store::connect(&url).expect("test store")).await.unwrap()
}

/// Holds the database's write lock from another connection (as another process would) until the
/// answer's sender is dropped or sends: on SQLite its `BEGIN IMMEDIATE`, on PostgreSQL a lock on
/// `runs` and `jobs` that keeps every other transaction from changing them. Answers once it holds.
async fn hold_writes(store: &Store) -> std::sync::mpsc::Sender<()> {
    let (release, released) = std::sync::mpsc::channel::<()>();
    let (held, holding) = tokio::sync::oneshot::channel::<()>();
    let (mut released, mut held) = (Some(released), Some(held));
    let hold = store.write(move |conn| {
        if let DbConn::Pg(pg) = conn {
            diesel::sql_query("LOCK TABLE runs, jobs IN EXCLUSIVE MODE").execute(pg)?;
        }
        let _ = held.take().expect("runs once").send(());
        let _ = released.take().expect("runs once").recv();
        Ok(())
    });
    actix_web::rt::spawn(hold);
    holding.await.expect("the lock is held");
    release
}

/// Starts a run on `ws` and reads up to its first delta; returns the run id.
async fn streaming_run(ws: &mut WsClient, input: &str, r: Value) -> String {
    ws.send(start(input, r)).await;
    let run_id = ws.recv_type("run:queued").await["run_id"].as_str().unwrap().to_owned();
    ws.recv_type("run:delta").await;
    run_id
}

/// The run as `GET /api/runs/{id}` shows it at once.
async fn run_now(app: &TestApp, token: &str, run_id: &str) -> Value {
    app.run_json(token, run_id).await
}

/// `generate:abort` is answered only once the run's `aborted` status and its charge are
/// committed: a client that reads the run right after `run:error` sees what it was told. Each
/// round races the abort against the read; then the commit is held back from another
/// connection, and no `run:error` may come while it is.
async fn abort_is_told_once_committed(db: Db) {
    let app = spawn_provider(db, Provider::OpenAi, |_| {}).await;
    app.set_price("gpt-5-mini", &PRICE).await;
    app.fake.set_stream_chunks((0..200).map(|i| format!("word{i:03} ")).collect());
    app.fake.set_chunk_pause(Some(Duration::from_millis(20)));
    let (mut ws, ack) = app.player("Aborter").await;
    let token = ack["token"].as_str().unwrap().to_owned();

    for round in 0..12 {
        let run_id = streaming_run(&mut ws, &format!("saga {round}"), json!(round)).await;
        ws.send(json!({"type": "generate:abort", "run_id": run_id, "ref": format!("stop{round}")})).await;
        let reply = ws.recv_type("run:error").await;
        assert_eq!((reply["ref"].as_str(), reply["code"].as_str()), (Some(&*format!("stop{round}")), Some("aborted")));
        let run = run_now(&app, &token, &run_id).await;
        assert_eq!(run["status"], "aborted", "round {round}: told aborted, then read {run}");
        assert!(run["cost_usd"].as_f64().unwrap() > 0.0, "round {round}: charged before it was told: {run}");
    }

    let store = store(&app).await;
    let run_id = streaming_run(&mut ws, "the held saga", json!("held")).await;
    let release = hold_writes(&store).await;
    ws.send(json!({"type": "generate:abort", "run_id": run_id, "ref": "held"})).await;
    let until = tokio::time::Instant::now() + Duration::from_millis(500);
    while let Some(event) = ws.next_event(until.saturating_duration_since(tokio::time::Instant::now())).await {
        if let Event::Json(frame) = event {
            assert_ne!(frame["type"], "run:error", "told while the abort could not be committed: {frame}");
        }
    }
    assert_eq!(run_now(&app, &token, &run_id).await["status"], "running");
    release.send(()).unwrap();
    let reply = ws.recv_type("run:error").await;
    assert_eq!((reply["ref"].as_str(), reply["code"].as_str()), (Some("held"), Some("aborted")));
    let run = run_now(&app, &token, &run_id).await;
    assert_eq!(run["status"], "aborted", "{run}");
    assert!(run["cost_usd"].as_f64().unwrap() > 0.0, "{run}");
}

/// An upstream that ignores `max_tokens` streams far past what the run asked for: the stream is
/// stopped at the bound (16 bytes per output token asked for), the run ends `done` with the text
/// cut there, streamed and stored alike, and the attempt is charged.
async fn run_text_stops_at_its_bound(db: Db) {
    const MAX_OUTPUT: u32 = 8;
    let bound = lorewire::runs::max_text_bytes(MAX_OUTPUT);
    let app = spawn_provider(db, Provider::Anthropic, |c| c.max_output_tokens = MAX_OUTPUT).await;
    app.set_price(&app.config.llm_model.clone(), &PRICE).await;
    let chunk = "an endless river of words that never stops ";
    app.fake.set_stream_chunks(vec![chunk.to_owned(); 300]);
    app.fake.set_chunk_pause(Some(Duration::from_millis(5)));
    let (mut ws, ack) = app.player("Flooded").await;
    let token = ack["token"].as_str().unwrap().to_owned();

    ws.send(start("a flood", json!(1))).await;
    let run_id = ws.recv_type("run:queued").await["run_id"].as_str().unwrap().to_owned();
    let mut deltas = String::new();
    let done = loop {
        let frame = ws.recv().await;
        match frame["type"].as_str().unwrap() {
            "run:delta" => deltas.push_str(frame["text"].as_str().unwrap()),
            "run:done" => break frame,
            "run:started" => {}
            other => panic!("unexpected {other}: {frame}"),
        }
    };
    let text = done["text"].as_str().unwrap();
    assert_eq!(text, deltas, "run:done holds exactly what was streamed");
    assert_eq!(text.len(), bound, "cut at the bound");
    assert!(chunk.repeat(10).starts_with(text));
    let run = app.final_run(&token, &run_id).await;
    assert_eq!(run["status"], "done", "{run}");
    assert_eq!(run["text"], text, "stored as streamed");
    assert!(run["cost_usd"].as_f64().unwrap() > 0.0, "charged: {run}");
    assert!(run["usage"]["output_tokens"].as_u64().unwrap() <= u64::from(MAX_OUTPUT), "{run}");
    crate::common::eventually("the upstream stream to be stopped", || async {
        (app.fake.streams_cut_by_client() == 1).then_some(())
    })
    .await;
}

/// One corrupt run row (an unknown action or status; on SQLite also a time that does not parse)
/// is left out of `GET /admin/api/runs` and `GET /admin/api/dead-letters`, named in their
/// `skipped`, while the good rows are listed; reading that run alone answers 500, not a panic.
async fn corrupt_run_rows_are_skipped_and_named(db: Db) {
    let app = spawn_provider(db, Provider::Anthropic, |_| {}).await;
    let token = app.player_token().await;
    let mut ids = Vec::new();
    for input in ["good dead", "bad action", "bad dead", "bad status", "bad time"] {
        let body = json!({"project_id": "p1", "action": "WRITE", "input": input});
        let (status, run) = post_json(&app.url("/api/generate"), &token, &body).await;
        assert_eq!(status, 202, "{run}");
        let run_id = run["run_id"].as_str().unwrap().to_owned();
        assert_eq!(app.final_run(&token, &run_id).await["status"], "done");
        ids.push(run_id);
    }
    let [good_dead, bad_action, bad_dead, bad_status, bad_time] = <[String; 5]>::try_from(ids).unwrap();
    let store = store(&app).await;
    let sqlite = db == Db::Sqlite;
    let (gd, ba, bd, bs, bt) =
        (good_dead.clone(), bad_action.clone(), bad_dead.clone(), bad_status.clone(), bad_time.clone());
    store
        .write(move |conn| {
            let of = |id: &str| runs::table.filter(runs::run_id.eq(id.to_owned()));
            diesel::update(of(&gd)).set(runs::status.eq("dead")).execute(conn)?;
            diesel::update(of(&ba)).set(runs::action.eq("SING")).execute(conn)?;
            diesel::update(of(&bd)).set((runs::status.eq("dead"), runs::action.eq("HUM"))).execute(conn)?;
            diesel::update(of(&bs)).set(runs::status.eq("sleeping")).execute(conn)?;
            if let DbConn::Sqlite(c) = conn {
                diesel::sql_query("UPDATE runs SET created_at = 'the day before' WHERE run_id = ?")
                    .bind::<diesel::sql_types::Text, _>(&bt)
                    .execute(c)?;
            }
            Ok(())
        })
        .await
        .unwrap();

    let ids_of = |list: &Value, key: &str| -> Vec<String> {
        list[key].as_array().unwrap().iter().map(|r| r["run_id"].as_str().unwrap().to_owned()).collect()
    };
    let (status, list) = app.admin_get("/admin/api/runs").await;
    assert_eq!(status, 200, "{list}");
    let mut listed = vec![good_dead.clone()];
    let mut skipped = vec![bad_action.clone(), bad_dead.clone(), bad_status.clone()];
    if sqlite {
        skipped.insert(0, bad_time.clone());
    } else {
        listed.insert(0, bad_time.clone());
    }
    listed.sort();
    skipped.sort();
    let (mut got_listed, mut got_skipped) = (ids_of(&list, "runs"), ids_of(&list, "skipped"));
    got_listed.sort();
    got_skipped.sort();
    assert_eq!((got_listed, got_skipped), (listed, skipped), "{list}");
    assert!(list["skipped"].as_array().unwrap().iter().all(|s| !s["error"].as_str().unwrap().is_empty()), "{list}");

    let (status, dead) = app.admin_get("/admin/api/dead-letters").await;
    assert_eq!(status, 200, "{dead}");
    assert_eq!(ids_of(&dead, "runs"), vec![good_dead.clone()], "{dead}");
    assert_eq!(ids_of(&dead, "skipped"), vec![bad_dead.clone()], "{dead}");
    assert!(dead["skipped"][0]["error"].as_str().unwrap().contains("unknown action"), "{dead}");

    let mut broken = vec![bad_action, bad_status];
    if sqlite {
        broken.push(bad_time);
    }
    for run_id in broken {
        let (status, body) = get_json(&app.url(&format!("/api/runs/{run_id}")), Some(&token)).await;
        assert_eq!((status, body["error"].as_str()), (500, Some("internal")), "{run_id}: {body}");
    }
}

both_backends!(abort_is_told_once_committed, run_text_stops_at_its_bound, corrupt_run_rows_are_skipped_and_named);
