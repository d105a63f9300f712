//! PostgreSQL makes the new items of a writer's batch with their claimed jobs, and the ends of
//! the jobs it ends, each in one statement ahead of the batch (`store::ahead`): each write, run
//! in its place, takes its own; an item two writes of the batch name, or one there already, is
//! left to its writes.

use chrono::NaiveDateTime;
use diesel::{ExpressionMethods, QueryDsl, RunQueryDsl};
use lorewire::domain::content::{ContentKind, ContentStatus};
use lorewire::store::ahead::{Ahead, Asked, Finishing};
use lorewire::store::content::{self, ContentRow, Finish, RequestItem, Requested};
use lorewire::store::jobs::{self, Ended, JobKind, JobRow, Place};
use lorewire::store::schema::{content as content_t, jobs as jobs_t};
use lorewire::store::{DbConn, Store, StoreResult};

use crate::common::{Db, TestDb};
use crate::writer::{hold_writer, quiet, watch};

pub(crate) const WORKER: &str = "worker-a";

fn t0() -> NaiveDateTime {
    chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap().naive_utc()
}

pub(crate) async fn open_store() -> (TestDb, Store) {
    actix_web::rt::task::spawn_blocking(|| {
        let db = TestDb::new(Db::Postgres);
        // One writer: every request below goes into the batch held behind `hold_writer`.
        let store = Store::connect_with(&db.url, 1).expect("store");
        store.migrate().expect("migrations");
        (db, store)
    })
    .await
    .unwrap()
}

/// A claimed request for quest `subject_id` by `player`; `ahead_worker` is the worker its
/// [`Ahead`] names (the request's own, unless a test makes them differ).
fn ask(
    store: &Store,
    subject_id: i64,
    player: i64,
    ahead_worker: &str,
) -> impl std::future::Future<Output = StoreResult<(Requested, Option<JobRow>)>> {
    let ahead = asked(subject_id, player, ahead_worker, t0(), None);
    let write = move |conn: &mut DbConn| content::request(conn, &claimed(subject_id, player), t0());
    store.write_ahead_for(Some(player), Some(ahead), write, |answer| answer)
}

/// What a claimed request for quest `subject_id` by `player` tells its batch ([`claimed`]).
pub(crate) fn asked(
    subject_id: i64,
    player: i64,
    worker: &str,
    at: NaiveDateTime,
    reserving: Option<lorewire::store::ahead::Reserving>,
) -> Ahead {
    Ahead::Request(Asked {
        kind: ContentKind::Quest,
        subject_id,
        owner: 0,
        fields: "{}".into(),
        context: "{}".into(),
        player,
        worker: Some(worker.to_owned()),
        at,
        reserving,
    })
}

/// A request for the shared quest `subject_id` by `player`, its job claimed by [`WORKER`].
pub(crate) fn claimed(subject_id: i64, player: i64) -> RequestItem<'static> {
    RequestItem {
        origin: "test",
        kind: ContentKind::Quest,
        subject_id,
        owner: 0,
        player,
        context: Some("{}"),
        empty_fields: "{}",
        regenerate: false,
        may_change: true,
        claim_for: Some(WORKER),
        queue_limit: 100,
    }
}

fn all_jobs(conn: &mut DbConn) -> StoreResult<Vec<JobRow>> {
    Ok(jobs_t::table.order(jobs_t::target_id).load(conn)?)
}

/// Jobs there before the batch: player 1's queued (the turn served), player 2's running.
async fn prelude(store: &Store) {
    store
        .write(|conn| {
            jobs::enqueue_for(conn, JobKind::Content, 900, Place::new(0, 1), t0())?;
            jobs::enqueue_claimed(conn, JobKind::Content, 901, Place::new(0, 2), WORKER, t0())?;
            jobs::enqueue_for(conn, JobKind::Content, 902, Place::new(0, 2), t0())?;
            Ok(())
        })
        .await
        .unwrap();
}

/// Players 1 and 3 ask for two new items each in one batch: one statement makes all four with
/// their claimed jobs, each request answers its own item created, and every job has the turn a
/// statement of its own would have given it (the same requests one batch each, on a second
/// database).
#[actix_web::test]
async fn postgres_a_batchs_new_items_are_made_in_one_statement_with_the_turns_one_each_would_take() {
    let asks = [(1, 1), (2, 3), (3, 1), (4, 3)];
    let (_db, store) = open_store().await;
    prelude(&store).await;
    let statements = watch(&store).await;
    let (release, holding) = hold_writer(&store).await;
    let answers: Vec<_> = asks.iter().map(|&(subject, player)| ask(&store, subject, player, WORKER)).collect();
    drop(release);
    holding.await.unwrap();
    let mut jobs_answered = Vec::new();
    for (answer, &(subject, player)) in answers.into_iter().zip(&asks) {
        let (requested, job) = answer.await.unwrap();
        let Requested::Created(row) = requested else { panic!("item {subject} not created: {requested:?}") };
        let job = job.expect("its job, claimed");
        assert_eq!((row.subject_id, row.status.as_str()), (subject, "pending"));
        assert_eq!((job.target_id, job.player_id, job.locked_by.as_deref()), (row.id, player, Some(WORKER)));
        jobs_answered.push((job.id, job.turn));
    }
    quiet(&store).await;
    let statements = statements.lock().unwrap().clone();
    let made = statements.iter().filter(|q| q.starts_with("WITH v AS")).count();
    let inserts = statements.iter().filter(|q| q.starts_with("INSERT INTO")).count();
    assert_eq!((made, inserts), (1, 0), "one statement for the four items and their jobs: {statements:#?}");

    let stored = store.run(all_jobs).await.unwrap();
    let stored_new: Vec<(i64, i64)> = stored.iter().filter(|j| j.target_id < 900).map(|j| (j.id, j.turn)).collect();
    let mut answered = jobs_answered.clone();
    answered.sort();
    let mut stored_sorted = stored_new.clone();
    stored_sorted.sort();
    assert_eq!(answered, stored_sorted, "each request answers its job as stored");

    // The same requests one after another, each a batch of its own.
    let (_db2, alone) = open_store().await;
    prelude(&alone).await;
    for &(subject, player) in &asks {
        let (requested, _) = ask(&alone, subject, player, WORKER).await.unwrap();
        assert!(matches!(requested, Requested::Created(_)));
    }
    let turns = |jobs: Vec<JobRow>| jobs.into_iter().map(|j| (j.player_id, j.turn)).collect::<Vec<_>>();
    let one_each = turns(alone.run(all_jobs).await.unwrap());
    assert_eq!(turns(stored), one_each, "the turns one statement each gives");
    let player_1: Vec<i64> = one_each.iter().filter(|(p, _)| *p == 1).map(|(_, t)| *t).collect();
    assert!(player_1[1] > player_1[0], "a player's jobs take turns one after another: {one_each:?}");
}

/// An item asked for twice in one batch, or there already, is left to its requests: one is
/// created with its job, the other answered as it is; the rest of the batch is made ahead.
#[actix_web::test]
async fn postgres_an_item_asked_twice_in_a_batch_or_there_already_is_left_to_its_requests() {
    let (_db, store) = open_store().await;
    let (first, _) = ask(&store, 5, 1, WORKER).await.unwrap();
    assert!(matches!(first, Requested::Created(_)));
    let (release, holding) = hold_writer(&store).await;
    let answers: Vec<_> =
        [(5, 3), (6, 1), (6, 3), (7, 1), (8, 3)].iter().map(|&(s, p)| ask(&store, s, p, WORKER)).collect();
    drop(release);
    holding.await.unwrap();
    let mut what = Vec::new();
    for answer in answers {
        let (requested, job) = answer.await.unwrap();
        let created = matches!(requested, Requested::Created(_));
        assert_eq!(created, job.is_some(), "a job with a created item only");
        what.push((requested.row().subject_id, created));
    }
    assert_eq!(what, [(5, false), (6, true), (6, false), (7, true), (8, true)]);
    let jobs = store.run(all_jobs).await.unwrap();
    let targets: Vec<i64> = jobs.iter().map(|j| j.target_id).collect();
    // Made ahead, 7 and 8 come before 6, created in its place.
    let items: Vec<(i64, i64)> = store
        .run(|conn| {
            Ok(content_t::table.select((content_t::id, content_t::subject_id)).order(content_t::id).load(conn)?)
        })
        .await
        .unwrap();
    assert_eq!(items.iter().map(|(_, s)| *s).collect::<Vec<_>>(), [5, 7, 8, 6], "one row per item");
    assert_eq!(targets, items.iter().map(|(id, _)| *id).collect::<Vec<_>>(), "one job per item");
}

/// Requests for items there already, in a batch whose every write told what it writes, are
/// answered by the statement made ahead of it (one read for all); with a write in the batch
/// that told nothing (it may change any item), each is read again in its place and sees what
/// that write did.
#[actix_web::test]
async fn postgres_items_there_already_are_read_once_unless_a_write_of_the_batch_told_nothing() {
    let (_db, store) = open_store().await;
    for subject in [1, 2, 3] {
        ask(&store, subject, 1, WORKER).await.unwrap();
    }
    for told_all in [true, false] {
        let statements = watch(&store).await;
        let (release, holding) = hold_writer(&store).await;
        let untold = (!told_all).then(|| {
            store.write(|conn| {
                let item = content_t::table.filter(content_t::subject_id.eq(2));
                Ok(diesel::update(item).set(content_t::fields.eq(r#"{"title":"changed"}"#)).execute(conn)?)
            })
        });
        let answers: Vec<_> = [1, 2, 3].iter().map(|&subject| ask(&store, subject, 3, WORKER)).collect();
        drop(release);
        holding.await.unwrap();
        if let Some(untold) = untold {
            assert_eq!(untold.await.unwrap(), 1);
        }
        let mut fields = Vec::new();
        for answer in answers {
            let (requested, job) = answer.await.unwrap();
            assert!(matches!(requested, Requested::Existing(_)) && job.is_none(), "{requested:?}");
            fields.push(requested.row().fields.clone());
        }
        quiet(&store).await;
        let statements = statements.lock().unwrap().clone();
        let reads = statements.iter().filter(|q| q.starts_with("WITH v AS (SELECT * FROM unnest($1::text[]")).count();
        let expected = if told_all { 1 } else { 4 };
        assert_eq!(reads, expected, "told all: {told_all}: {statements:#?}");
        let changed = r#"{"title":"changed"}"#;
        assert_eq!(fields[1] == changed, !told_all, "the request sees the write before it: {fields:?}");
    }
}

/// An item made ahead that its request does not take (here it names another worker than the
/// request claims for) is never committed: the batch runs again, each request in a savepoint,
/// and every job is claimed by the worker its request named.
#[actix_web::test]
async fn postgres_an_item_made_ahead_and_not_taken_is_not_committed() {
    let (_db, store) = open_store().await;
    let (release, holding) = hold_writer(&store).await;
    let answers: Vec<_> = [(1, 1, "worker-b"), (2, 3, "worker-b")]
        .iter()
        .map(|&(subject, player, worker)| ask(&store, subject, player, worker))
        .collect();
    drop(release);
    holding.await.unwrap();
    for answer in answers {
        let (requested, job) = answer.await.unwrap();
        assert!(matches!(requested, Requested::Created(_)), "{requested:?}");
        assert_eq!(job.unwrap().locked_by.as_deref(), Some(WORKER));
    }
    let jobs = store.run(all_jobs).await.unwrap();
    let workers: Vec<Option<String>> = jobs.into_iter().map(|j| j.locked_by).collect();
    assert_eq!(workers, [Some(WORKER.to_owned()), Some(WORKER.to_owned())]);
}

/// The end of job `job` (by `worker`) of the item `row`: `ready` with the subject id as its title.
fn end(
    store: &Store,
    row: &ContentRow,
    job: i64,
    worker: &'static str,
) -> impl std::future::Future<Output = StoreResult<Ended<ContentRow>>> {
    let fields = format!(r#"{{"title":"{}"}}"#, row.subject_id);
    let ahead = Ahead::Finish(Finishing {
        kind: ContentKind::Quest,
        subject_id: row.subject_id,
        owner: row.owner_id,
        content_id: row.id,
        job_id: job,
        worker: worker.to_owned(),
        status: ContentStatus::Ready,
        fields: fields.clone(),
        model: Some("m".into()),
        reason: None,
        at: t0(),
        settles: None,
    });
    let content_id = row.id;
    let write = move |conn: &mut DbConn| {
        let finish = Finish {
            origin: "test",
            job_id: job,
            worker,
            content_id,
            status: ContentStatus::Ready,
            fields: &fields,
            model: Some("m"),
            reason: None,
            settles: None,
        };
        content::finish(conn, &finish, t0())
    };
    store.write_ahead_for(Some(1), Some(ahead), write, |ended| ended)
}

/// Items 1 to 4, created with their jobs claimed by [`WORKER`], each in a batch of its own.
async fn four_items(store: &Store) -> Vec<(ContentRow, i64)> {
    let mut made = Vec::new();
    for subject in 1..=4 {
        let (requested, job) = ask(store, subject, 1, WORKER).await.unwrap();
        let Requested::Created(row) = requested else { panic!("not created") };
        made.push((row, job.unwrap().id));
    }
    made
}

/// The jobs one batch ends are ended in one statement ahead of it: a job's item finished, a job
/// another worker holds left alone (taken over), a job whose item is no longer pending removed
/// with the item as it is; each end answered as one statement of its own answers it.
#[actix_web::test]
async fn postgres_the_jobs_a_batch_ends_end_in_one_statement() {
    let (_db, store) = open_store().await;
    let items = four_items(&store).await;
    let third = items[2].0.id;
    store
        .write(move |conn| {
            let row = content_t::table.find(third);
            Ok(diesel::update(row).set(content_t::status.eq("ready")).execute(conn)?)
        })
        .await
        .unwrap();
    let statements = watch(&store).await;
    let (release, holding) = hold_writer(&store).await;
    let workers = [WORKER, "worker-b", WORKER, WORKER];
    let ends: Vec<_> = items.iter().zip(workers).map(|((row, job), worker)| end(&store, row, *job, worker)).collect();
    drop(release);
    holding.await.unwrap();
    let mut found = Vec::new();
    for ended in ends {
        found.push(match ended.await.unwrap() {
            Ended::Done(Some(row)) => format!("{} {} v{}", row.subject_id, row.status, row.version),
            Ended::Done(None) => "no longer pending".to_owned(),
            Ended::TakenOver => "taken over".to_owned(),
        });
    }
    quiet(&store).await;
    assert_eq!(found, ["1 ready v2", "taken over", "no longer pending", "4 ready v2"]);
    let statements = statements.lock().unwrap().clone();
    let ending = statements.iter().filter(|q| q.starts_with("WITH v AS") && q.contains("DELETE FROM jobs")).count();
    let deletes = statements.iter().filter(|q| q.starts_with("DELETE")).count();
    assert_eq!((ending, deletes), (1, 0), "one statement for the four ends: {statements:#?}");
    let left: Vec<i64> = store.run(all_jobs).await.unwrap().into_iter().map(|j| j.target_id).collect();
    assert_eq!(left, [items[1].0.id], "only the job another worker holds is left");
    let fields: Vec<String> = store
        .run(|conn| Ok(content_t::table.select(content_t::fields).order(content_t::id).load(conn)?))
        .await
        .unwrap();
    assert_eq!(fields, [r#"{"title":"1"}"#, "{}", "{}", r#"{"title":"4"}"#]);
}

/// A job's end and a request for its item in one batch are left to run in their places: the
/// request sees the item as the end left it.
#[actix_web::test]
async fn postgres_an_end_and_a_request_of_one_item_in_a_batch_run_in_their_places() {
    let (_db, store) = open_store().await;
    let items = four_items(&store).await;
    let statements = watch(&store).await;
    let (release, holding) = hold_writer(&store).await;
    let first = end(&store, &items[0].0, items[0].1, WORKER);
    let asked = ask(&store, 1, 3, WORKER);
    let second = end(&store, &items[1].0, items[1].1, WORKER);
    drop(release);
    holding.await.unwrap();
    assert!(matches!(first.await.unwrap(), Ended::Done(Some(_))));
    let (requested, job) = asked.await.unwrap();
    let Requested::Existing(row) = requested else { panic!("not existing: {requested:?}") };
    assert_eq!((row.status.as_str(), job.is_none()), ("ready", true), "the item as its end left it");
    assert!(matches!(second.await.unwrap(), Ended::Done(Some(_))));
    quiet(&store).await;
    let statements = statements.lock().unwrap().clone();
    let ending = statements.iter().filter(|q| q.starts_with("WITH v AS") && q.contains("DELETE FROM jobs")).count();
    assert_eq!(ending, 2, "each end in its place: {statements:#?}");
}
