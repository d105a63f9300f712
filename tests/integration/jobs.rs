//! The job worker never loops: a job that fails on lorewire's side (here a row corrupted in the
//! database) is retried with backoff, counts against LOREWIRE_MAX_ATTEMPTS, and after the last
//! attempt its target gets a final state that clients are told of: a content item its fallback,
//! a run `dead`, a mood `neutral` / `fallback`. A job whose target cannot even be given that is
//! buried: kept `dead`, never claimed again, out of the queue depth.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use diesel::prelude::*;
use lorewire::jobs::{JobKind, Loaded, Loader};
use lorewire::store::schema::{content, jobs, messages, runs};
use lorewire::store::Store;
use serde_json::{json, Value};

use crate::common::{eventually, http, spawn_with, Db, Mode, Setup, TestApp, TestDb, WsClient};

const MAX_ATTEMPTS: u32 = 3;

/// One call slot, held for a while by the first item, so the next job waits queued.
async fn app_with_one_slot(db: Db, retry_base: Duration) -> TestApp {
    let app = spawn_with(Setup::new(db), |c| {
        c.llm_concurrency = 1;
        c.retry_base = retry_base;
        c.max_attempts = MAX_ATTEMPTS;
    })
    .await;
    app.fake.set_mode(Mode::Delay(Duration::from_millis(700)));
    app
}

async fn store(app: &TestApp) -> Store {
    let url = app.db.url.clone();
    actix_web::rt::task::spawn_blocking(move || Store::connect(&url).expect("test store")).await.unwrap()
}

/// Requests quest `subject_id` and returns its snapshot.
async fn request_quest(ws: &mut WsClient, subject_id: u64) -> Value {
    ws.send(json!({"type": "content:request", "kind": "quest", "subject_id": subject_id, "ref": subject_id,
                   "context": {"character_name": "Ada"}}))
        .await;
    loop {
        let frame = ws.recv().await;
        if frame["type"] == "content:snapshot" && frame["ref"] == subject_id {
            return frame["content"].clone();
        }
    }
}

/// The next `content:update` of quest `subject_id`.
async fn quest_update(ws: &mut WsClient, subject_id: u64) -> Value {
    loop {
        let frame = ws.recv_type("content:update").await;
        if frame["content"]["subject_id"] == subject_id {
            return frame["content"].clone();
        }
    }
}

async fn content_id(store: &Store, subject_id: i64) -> i64 {
    store
        .run(move |c| {
            Ok(content::table.filter(content::subject_id.eq(subject_id)).select(content::id).first::<i64>(c)?)
        })
        .await
        .unwrap()
}

/// `(status, attempts, last_error)` of the job on `(kind, target)`, if there is one.
async fn job_of(store: &Store, kind: &'static str, target: i64) -> Option<(String, i32, Option<String>)> {
    store
        .run(move |c| {
            Ok(jobs::table
                .filter(jobs::kind.eq(kind))
                .filter(jobs::target_id.eq(target))
                .select((jobs::status, jobs::attempts, jobs::last_error))
                .first(c)
                .optional()?)
        })
        .await
        .unwrap()
}

/// A database of its own, migrated, with no server on it.
async fn migrated_store(db: Db) -> (TestDb, Store) {
    let test_db = TestDb::new(db);
    let url = test_db.url.clone();
    let store = actix_web::rt::task::spawn_blocking(move || {
        let store = Store::connect(&url).expect("test store");
        store.migrate().expect("migrations");
        store
    })
    .await
    .unwrap();
    (test_db, store)
}

async fn job_count(store: &Store) -> i64 {
    store.run(|c| Ok(jobs::table.count().get_result(c)?)).await.unwrap()
}

/// Watches the job until it is gone; returns the most attempts it showed.
async fn attempts_until_gone(store: &Store, kind: &'static str, target: i64) -> i32 {
    let until = std::time::Instant::now() + crate::common::WAIT;
    let mut most = 0;
    while let Some((_, attempts, _)) = job_of(store, kind, target).await {
        most = most.max(attempts);
        assert!(std::time::Instant::now() < until, "the job is still there after {most} attempts");
        actix_web::rt::time::sleep(Duration::from_millis(10)).await;
    }
    most
}

/// A value of the Prometheus text at `/metrics`.
async fn metric(app: &TestApp, name: &str) -> f64 {
    let body = http().get(app.url("/metrics")).send().await.unwrap().body().await.unwrap();
    let text = String::from_utf8(body.to_vec()).unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

async fn corrupt_content_context_ends_in_fallback_after_the_last_attempt(db: Db) {
    let app = app_with_one_slot(db, Duration::from_millis(200)).await;
    let store = store(&app).await;
    let (mut ws, _) = app.player("Ada").await;
    request_quest(&mut ws, 1).await;
    let pending = request_quest(&mut ws, 2).await;
    assert_eq!(pending["status"], "pending");
    let id = content_id(&store, 2).await;
    // While its job waits for the slot, the stored context stops being JSON.
    store
        .write(move |c| Ok(diesel::update(content::table.find(id)).set(content::context.eq("{not json")).execute(c)?))
        .await
        .unwrap();

    assert_eq!(quest_update(&mut ws, 1).await["status"], "ready");
    let most = attempts_until_gone(&store, "content", id).await;
    let item = quest_update(&mut ws, 2).await;
    assert_eq!(item["status"], "fallback", "{item}");
    assert_eq!(item["reason"], "invalid_response", "{item}");
    assert_eq!(item["version"], 2);
    for field in ["flavorText", "hookText"] {
        assert!(!item["fields"][field].as_str().unwrap().is_empty(), "{item}");
    }
    assert!(most >= 2 && most <= MAX_ATTEMPTS as i32, "the job showed {most} attempts");
    // Quest 1 was claimed once, quest 2 once per attempt; nothing more comes.
    assert_eq!(metric(&app, "lorewire_jobs_claimed_total").await, 1.0 + f64::from(MAX_ATTEMPTS));
    actix_web::rt::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(metric(&app, "lorewire_jobs_claimed_total").await, 1.0 + f64::from(MAX_ATTEMPTS));
    assert_eq!(job_count(&store).await, 0);
    assert_eq!(app.fake.request_count(), 1, "the corrupt item never went upstream");
    let (status, stored) =
        crate::common::get_json(&app.url("/api/content/quest/2"), Some(&app.player_token().await)).await;
    assert_eq!((status, &stored["status"]), (200, &json!("fallback")));
}

async fn job_back_past_its_attempts_gives_up_at_once(db: Db) {
    let app = app_with_one_slot(db, Duration::from_millis(200)).await;
    let store = store(&app).await;
    let (mut ws, _) = app.player("Ada").await;
    request_quest(&mut ws, 1).await;
    request_quest(&mut ws, 2).await;
    let id = content_id(&store, 2).await;
    // As after a process that died on the job's last attempt, and its lease taken over.
    store
        .write(move |c| {
            Ok(diesel::update(jobs::table.filter(jobs::kind.eq("content")).filter(jobs::target_id.eq(id)))
                .set(jobs::attempts.eq(MAX_ATTEMPTS as i32))
                .execute(c)?)
        })
        .await
        .unwrap();
    let item = quest_update(&mut ws, 2).await;
    assert_eq!(item["status"], "fallback", "{item}");
    assert_eq!(item["reason"], "invalid_response", "{item}");
    assert_eq!(metric(&app, "lorewire_jobs_claimed_total").await, 2.0);
    assert_eq!(app.fake.request_count(), 1);
    assert_eq!(job_count(&store).await, 0);
}

async fn job_whose_target_cannot_be_finished_is_buried(db: Db) {
    let app = app_with_one_slot(db, Duration::from_millis(100)).await;
    let store = store(&app).await;
    let (mut ws, _) = app.player("Ada").await;
    request_quest(&mut ws, 1).await;
    request_quest(&mut ws, 2).await;
    let id = content_id(&store, 2).await;
    // No kind, no fallback text: not even a final state can be written.
    store
        .write(move |c| Ok(diesel::update(content::table.find(id)).set(content::kind.eq("scroll")).execute(c)?))
        .await
        .unwrap();
    assert_eq!(quest_update(&mut ws, 1).await["status"], "ready");
    let (status, attempts, error) = eventually("the job to be buried", || async {
        job_of(&store, "content", id).await.filter(|(status, _, _)| status == "dead")
    })
    .await;
    assert_eq!((status.as_str(), attempts), ("dead", MAX_ATTEMPTS as i32));
    assert!(error.as_deref().unwrap_or("").contains("unknown kind"), "{error:?}");
    // Never claimed again, and not counted as queued work.
    actix_web::rt::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(job_of(&store, "content", id).await.map(|j| j.1), Some(MAX_ATTEMPTS as i32));
    assert_eq!(metric(&app, "lorewire_jobs_claimed_total").await, 1.0 + f64::from(MAX_ATTEMPTS));
    assert_eq!(metric(&app, "lorewire_queue_depth").await, 0.0);
}

async fn corrupt_run_goes_dead_after_the_last_attempt(db: Db) {
    let app = spawn_with(Setup::new(db), |c| {
        c.retry_base = Duration::from_millis(600);
        c.max_attempts = MAX_ATTEMPTS;
        c.circuit_failures = 100;
    })
    .await;
    let store = store(&app).await;
    // The first attempt fails upstream; the run waits out its backoff, queued.
    app.fake.push_modes([Mode::Status(500)]);
    let (mut ws, _) = app.player("Ada").await;
    ws.send(json!({"type": "generate:start", "project_id": "p1", "action": "WRITE", "input": "a dragon", "ref": 1}))
        .await;
    let queued = ws.recv_type("run:queued").await;
    let run_id = queued["run_id"].as_str().unwrap().to_owned();
    assert_eq!(ws.recv_type("run:started").await["run_id"], run_id.as_str());
    let id = run_id.clone();
    let pk = eventually("the first attempt to fail", || async {
        let id = id.clone();
        store
            .run(move |c| {
                Ok(runs::table
                    .filter(runs::run_id.eq(id))
                    .filter(runs::status.eq("queued"))
                    .filter(runs::error_code.is_not_null())
                    .select(runs::id)
                    .first::<i64>(c)
                    .optional()?)
            })
            .await
            .unwrap()
    })
    .await;
    // Its stored action stops being one lorewire knows before the retry is due.
    store
        .write(move |c| Ok(diesel::update(runs::table.find(pk)).set(runs::action.eq("SING")).execute(c)?))
        .await
        .unwrap();

    let error = ws.recv_type("run:error").await;
    assert_eq!(error["run_id"], run_id.as_str());
    assert_eq!(error["code"], "internal_error", "{error}");
    let (status, code, attempts, reserved): (String, Option<String>, i32, i64) = store
        .run(move |c| {
            Ok(runs::table
                .find(pk)
                .select((runs::status, runs::error_code, runs::attempts, runs::reserved_micros))
                .first(c)?)
        })
        .await
        .unwrap();
    assert_eq!((status.as_str(), code.as_deref(), reserved), ("dead", Some("internal_error"), 0));
    assert_eq!(attempts, 1, "one attempt reached the provider");
    assert_eq!(app.fake.request_count(), 1);
    assert_eq!(metric(&app, "lorewire_jobs_claimed_total").await, f64::from(MAX_ATTEMPTS));
    assert_eq!(job_count(&store).await, 0);
}

async fn mood_back_past_its_attempts_settles_neutral(db: Db) {
    let app = app_with_one_slot(db, Duration::from_millis(200)).await;
    let store = store(&app).await;
    let (mut ws, _) = app.player("Ada").await;
    ws.lobby_frames = true;
    // Joined first, so the message comes as `message:new` and not inside the join's history.
    ws.recv_type("presence:state").await;
    request_quest(&mut ws, 1).await;
    ws.send(json!({"type": "message:send", "text": "what a glorious day!"})).await;
    let message = ws.recv_type("message:new").await;
    let id = message["message"]["id"].as_i64().unwrap();
    store
        .write(move |c| {
            Ok(diesel::update(jobs::table.filter(jobs::kind.eq("mood")).filter(jobs::target_id.eq(id)))
                .set(jobs::attempts.eq(MAX_ATTEMPTS as i32))
                .execute(c)?)
        })
        .await
        .unwrap();
    let updated = ws.recv_type("message:mood_updated").await;
    assert_eq!(updated["id"], id);
    assert_eq!((&updated["mood"], &updated["mood_status"]), (&json!("neutral"), &json!("fallback")));
    let stored: (String, String) = store
        .run(move |c| Ok(messages::table.find(id).select((messages::mood, messages::mood_status)).first(c)?))
        .await
        .unwrap();
    assert_eq!(stored, ("neutral".to_owned(), "fallback".to_owned()));
    assert_eq!(app.fake.request_count(), 1, "only the quest went upstream");
    eventually("the jobs to end", || async { (job_count(&store).await == 0).then_some(()) }).await;
}

/// A claim reads each job's target with the loader of its kind inside the claim's own
/// transaction; a read that fails (a statement the database refuses, which on PostgreSQL aborts
/// the transaction around it) leaves the jobs claimed, with nothing loaded.
async fn a_claim_reads_its_targets_and_a_failed_read_keeps_the_claim(db: Db) {
    let (_db, store) = migrated_store(db).await;
    let now = chrono::Utc::now().naive_utc();
    store
        .write(move |c| {
            for (kind, target) in [(JobKind::Content, 41), (JobKind::Mood, 42), (JobKind::Content, 43)] {
                lorewire::store::jobs::enqueue(c, kind, target, 0, now)?;
            }
            Ok(())
        })
        .await
        .unwrap();

    // What a content job's loader sees: its target, and how many jobs are running by then.
    let reads: Loader = Arc::new(|c, target| {
        let running: i64 = jobs::table.filter(jobs::status.eq("running")).count().get_result(c)?;
        Ok(Loaded(Arc::new((target, running))))
    });
    let loaders = HashMap::from([(JobKind::Content, reads)]);
    let claimed = store.write(move |c| lorewire::jobs::claim(c, "w1", 2, now, &loaders)).await.unwrap();
    let seen: Vec<_> = claimed
        .iter()
        .map(|(job, loaded)| (job.target_id, loaded.as_ref().map(|l| *l.0.downcast_ref::<(i64, i64)>().unwrap())))
        .collect();
    // Both claimed jobs are running as the content job's target is read; the mood has no loader.
    assert_eq!(seen, [(41, Some((41, 2))), (42, None)]);

    // A statement no database accepts; Diesel's DSL cannot write one.
    let fails: Loader = Arc::new(|c, _| {
        diesel::sql_query("SELECT no_such_column FROM jobs").execute(c)?;
        unreachable!("the database refused the statement")
    });
    let loaders = HashMap::from([(JobKind::Content, fails)]);
    let claimed = store.write(move |c| lorewire::jobs::claim(c, "w2", 5, now, &loaders)).await.unwrap();
    let seen: Vec<_> = claimed.iter().map(|(job, loaded)| (job.target_id, loaded.is_some())).collect();
    assert_eq!(seen, [(43, false)]);
    let held = store
        .run(|c| {
            Ok(jobs::table
                .filter(jobs::target_id.eq(43))
                .select((jobs::status, jobs::locked_by))
                .first::<(String, Option<String>)>(c)?)
        })
        .await
        .unwrap();
    assert_eq!(held, ("running".to_owned(), Some("w2".to_owned())), "the claim committed");
}

/// A claim takes the highest priority first and, within a priority, the oldest first; each job
/// it takes is running, held by the claiming worker, one attempt further.
async fn a_claim_takes_the_highest_priority_then_the_oldest(db: Db) {
    let (_db, store) = migrated_store(db).await;
    let now = chrono::Utc::now().naive_utc();
    store
        .write(move |c| {
            for (target, priority) in [(1, 0), (2, 5), (3, 0), (4, 9), (5, 5)] {
                lorewire::store::jobs::enqueue(c, JobKind::Mood, target, priority, now)?;
            }
            Ok(())
        })
        .await
        .unwrap();
    let claimed = store.write(move |c| lorewire::store::jobs::claim(c, "w1", 4, now)).await.unwrap();
    let seen: Vec<_> = claimed
        .iter()
        .map(|job| (job.target_id, job.status.as_str(), job.locked_by.as_deref(), job.attempts))
        .collect();
    assert_eq!(
        seen,
        [
            (4, "running", Some("w1"), 1),
            (2, "running", Some("w1"), 1),
            (5, "running", Some("w1"), 1),
            (1, "running", Some("w1"), 1)
        ]
    );
    let left = store
        .run(|c| Ok(jobs::table.filter(jobs::status.eq("queued")).select(jobs::target_id).load::<i64>(c)?))
        .await
        .unwrap();
    assert_eq!(left, [3], "the one not taken is still queued");
}

/// A request made while the worker has a free slot writes its job already claimed (running, on
/// its first attempt) in the request's own transaction; one made while every slot is busy
/// queues its job, which runs when the slot frees. A request that creates no job gives its
/// reserved slot back.
async fn a_request_with_a_free_slot_claims_its_job_and_a_busy_slot_queues_it(db: Db) {
    // No poll in the test's time: a poll's claim holds the free slot while it looks, so a
    // request made meanwhile would queue its job.
    let app = spawn_with(Setup::new(db), |c| {
        c.llm_concurrency = 1;
        c.retry_base = Duration::from_millis(200);
        c.max_attempts = MAX_ATTEMPTS;
        c.job_poll = Duration::from_secs(600);
    })
    .await;
    app.fake.set_mode(Mode::Delay(Duration::from_millis(700)));
    let store = store(&app).await;
    let (mut ws, _) = app.player("Ada").await;
    assert_eq!(request_quest(&mut ws, 1).await["status"], "pending");
    let first = content_id(&store, 1).await;
    let (status, attempts, _) = job_of(&store, "content", first).await.expect("quest 1 has a job");
    assert_eq!((status.as_str(), attempts), ("running", 1), "claimed as it was written");

    request_quest(&mut ws, 2).await;
    let second = content_id(&store, 2).await;
    let (status, attempts, _) = job_of(&store, "content", second).await.expect("quest 2 has a job");
    assert_eq!((status.as_str(), attempts), ("queued", 0), "the one slot is busy");
    // Asking again for an item that exists writes no job: its reservation goes back each time.
    for _ in 0..3 {
        request_quest(&mut ws, 1).await;
    }

    assert_eq!(quest_update(&mut ws, 1).await["status"], "ready");
    assert_eq!(quest_update(&mut ws, 2).await["status"], "ready");
    eventually("the jobs to end", || async { (job_count(&store).await == 0).then_some(()) }).await;
    // A job's row goes in its end's commit; its slot is given back only after that commit.
    eventually("the slot to be free", || async {
        (metric(&app, "lorewire_job_slots_busy").await == 0.0).then_some(())
    })
    .await;
    request_quest(&mut ws, 3).await;
    let third = content_id(&store, 3).await;
    let (status, _, _) = job_of(&store, "content", third).await.expect("quest 3 has a job");
    assert_eq!(status, "running", "the slot came back");
    assert_eq!(quest_update(&mut ws, 3).await["status"], "ready");
    assert_eq!(app.fake.max_in_flight(), 1, "never more calls than slots");
    assert_eq!(metric(&app, "lorewire_jobs_claimed_total").await, 3.0);
}

/// Holds the database's write lock from another connection (as another process would) until
/// the answer's sender is dropped or sends: on SQLite its `BEGIN IMMEDIATE`, on PostgreSQL a
/// lock on `jobs` that keeps every other transaction from adding a job. Answers once it holds.
async fn hold_writes(store: &Store) -> std::sync::mpsc::Sender<()> {
    let (release, released) = std::sync::mpsc::channel::<()>();
    let (held, holding) = tokio::sync::oneshot::channel::<()>();
    let (mut released, mut held) = (Some(released), Some(held));
    let hold = store.write(move |conn| {
        if let lorewire::store::DbConn::Pg(pg) = conn {
            diesel::sql_query("LOCK TABLE jobs IN EXCLUSIVE MODE").execute(pg)?;
        }
        let _ = held.take().expect("runs once").send(());
        let _ = released.take().expect("runs once").recv();
        Ok(())
    });
    actix_web::rt::spawn(hold);
    holding.await.expect("the lock is held");
    release
}

/// A client that asks for an item and leaves before its write has committed: the job the write
/// claimed for the worker still runs at once (it is handed over by the commit, not by the
/// session that asked), so the next client to ask sees the item ready long before the job's
/// lease could run out and another worker take it over.
async fn a_job_claimed_for_a_client_who_left_still_runs(db: Db) {
    let app = spawn_with(Setup::new(db), |c| {
        c.llm_concurrency = 1;
        c.job_lease = Duration::from_secs(120);
    })
    .await;
    let store = store(&app).await;
    let (mut leaving, _) = app.player("Ada").await;
    let release = hold_writes(&store).await;
    leaving
        .send(json!({"type": "content:request", "kind": "quest", "subject_id": 7,
                     "context": {"character_name": "Ada"}}))
        .await;
    // Its write is queued behind the lock; then the session ends, and with it the request.
    actix_web::rt::time::sleep(Duration::from_millis(200)).await;
    leaving.close().await;
    eventually("the session to end", || async { (metric(&app, "lorewire_sessions_open").await == 0.0).then_some(()) })
        .await;
    drop(release);

    let item = eventually("the item to be written", || async {
        let id = store
            .run(|c| {
                Ok(content::table.filter(content::subject_id.eq(7)).select(content::id).first::<i64>(c).optional()?)
            })
            .await
            .unwrap();
        id
    })
    .await;
    let (mut next, _) = app.player("Bo").await;
    let content = request_quest(&mut next, 7).await;
    let content = if content["status"] == "pending" { quest_update(&mut next, 7).await } else { content };
    assert_eq!(content["status"], "ready", "{content}");
    assert_eq!(app.fake.requests().len(), 1, "one attempt: the job was never taken over");
    eventually("the job to end", || async { job_of(&store, "content", item).await.is_none().then_some(()) }).await;
}

/// A job of a kind no handler here runs (a newer version's, in a rolling deploy) is buried, and
/// its target still reaches a final state: every content item, mood and run left waiting with
/// no job of its own kind gets one, so nothing stays pending or queued forever.
async fn targets_of_a_job_kind_nobody_runs_still_reach_a_final_state(db: Db) {
    let app = app_with_one_slot(db, Duration::from_millis(100)).await;
    app.fake.set_mode(Mode::Delay(Duration::from_millis(1500)));
    let store = store(&app).await;
    let (mut ws, ack) = app.player("Ada").await;
    let token = ack["token"].as_str().unwrap().to_owned();
    ws.lobby_frames = true;
    // Quest 1 holds the one slot while the others are queued.
    request_quest(&mut ws, 1).await;
    request_quest(&mut ws, 2).await;
    ws.send(json!({"type": "message:send", "text": "hello"})).await;
    let message = ws.recv_type("message:new").await["message"]["id"].as_i64().unwrap();
    let body = json!({"project_id": "p1", "action": "WRITE", "input": "a lantern"});
    let (status, run) = crate::common::post_json(&app.url("/api/generate"), &token, &body).await;
    assert_eq!(status, 202, "{run}");
    let renamed = store
        .write(|c| {
            let queued: Vec<(i64, String)> =
                jobs::table.filter(jobs::status.eq("queued")).select((jobs::id, jobs::kind)).load(c)?;
            for (id, kind) in &queued {
                diesel::update(jobs::table.find(id)).set(jobs::kind.eq(format!("{kind}_v2"))).execute(c)?;
            }
            Ok(queued.len())
        })
        .await
        .unwrap();
    assert_eq!(renamed, 3, "quest 2, the mood and the run wait queued");

    assert_eq!(quest_update(&mut ws, 1).await["status"], "ready");
    assert_eq!(quest_update(&mut ws, 2).await["status"], "ready", "the item got a job it could run");
    let mood = eventually("the mood to settle", || async {
        let status: String = store
            .run(move |c| Ok(messages::table.find(message).select(messages::mood_status).first(c)?))
            .await
            .unwrap();
        (status != "pending").then_some(status)
    })
    .await;
    assert_eq!(mood, "ready");
    let run = app.final_run(&token, run["run_id"].as_str().unwrap()).await;
    assert_eq!(run["status"], "done", "{run}");
    for kind in ["content_v2", "mood_v2", "run_v2"] {
        let buried: Vec<(String, Option<String>)> = store
            .run(move |c| {
                Ok(jobs::table.filter(jobs::kind.eq(kind)).select((jobs::status, jobs::last_error)).load(c)?)
            })
            .await
            .unwrap();
        assert_eq!(buried.len(), 1, "{kind}: {buried:?}");
        assert_eq!(buried[0].0, "dead", "{kind}");
        assert!(buried[0].1.as_deref().unwrap_or("").contains("no handler"), "{buried:?}");
    }
    assert_eq!(metric(&app, "lorewire_queue_depth").await, 0.0);
}

both_backends!(
    targets_of_a_job_kind_nobody_runs_still_reach_a_final_state,
    a_job_claimed_for_a_client_who_left_still_runs,
    a_request_with_a_free_slot_claims_its_job_and_a_busy_slot_queues_it,
    a_claim_takes_the_highest_priority_then_the_oldest,
    a_claim_reads_its_targets_and_a_failed_read_keeps_the_claim,
    corrupt_content_context_ends_in_fallback_after_the_last_attempt,
    job_back_past_its_attempts_gives_up_at_once,
    job_whose_target_cannot_be_finished_is_buried,
    corrupt_run_goes_dead_after_the_last_attempt,
    mood_back_past_its_attempts_settles_neutral,
);
