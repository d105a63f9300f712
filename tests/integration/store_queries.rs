//! The store's queries on a temp SQLite file, with no server, no actor and no upstream: the
//! content item's request and finish, the job queue's claim / requeue / give-back / burial /
//! adoption, the player queue limit, the lobby's messages, the budget's money, and a player's
//! moderation flags and block.

use chrono::{NaiveDateTime, TimeDelta};
use diesel::prelude::*;
use lorewire::domain::content::{ContentKind, ContentStatus};
use lorewire::store::content::{self, Finish, RequestItem, Requested};
use lorewire::store::jobs::{self, Ended, JobKind, JobRow};
use lorewire::store::schema::jobs as jobs_t;
use lorewire::store::{billing, messages, users, DbConn, Store, StoreError, StoreResult};

use crate::common::{Db, TestDb};

const WORKER: &str = "worker-a";

fn store() -> (TestDb, Store) {
    store_on(Db::Sqlite)
}

fn store_on(db: Db) -> (TestDb, Store) {
    let db = TestDb::new(db);
    let store = Store::connect(&db.url).expect("test store");
    store.migrate().expect("migrations");
    (db, store)
}

fn t0() -> NaiveDateTime {
    chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap().naive_utc()
}

fn write<T: Send + 'static>(
    store: &Store,
    f: impl FnMut(&mut DbConn) -> StoreResult<T> + Send + 'static,
) -> StoreResult<T> {
    store.write_blocking(f)
}

fn all_jobs(store: &Store) -> Vec<JobRow> {
    store.run_blocking(|c| Ok(jobs_t::table.order(jobs_t::id).load(c)?)).unwrap()
}

fn item(subject_id: i64, regenerate: bool, queue_limit: i64) -> RequestItem<'static> {
    RequestItem {
        origin: "test",
        kind: ContentKind::Quest,
        subject_id,
        owner: 0,
        player: 0,
        context: Some("{}"),
        empty_fields: "{}",
        regenerate,
        may_change: true,
        claim_for: None,
        queue_limit,
    }
}

fn request(store: &Store, subject_id: i64, regenerate: bool, queue_limit: i64) -> StoreResult<Requested> {
    write(store, move |c| content::request(c, &item(subject_id, regenerate, queue_limit), t0()).map(|(r, _)| r))
}

fn finish(store: &Store, job_id: i64, worker: &'static str, content_id: i64) -> Ended<content::ContentRow> {
    write(store, move |c| {
        let f = Finish {
            origin: "test",
            job_id,
            worker,
            content_id,
            status: ContentStatus::Ready,
            fields: r#"{"title":"t"}"#,
            model: Some("m"),
            reason: None,
            settles: None,
        };
        content::finish(c, &f, t0())
    })
    .unwrap()
}

fn claim(store: &Store, worker: &'static str, limit: i64, now: NaiveDateTime) -> Vec<JobRow> {
    write(store, move |c| jobs::claim(c, worker, limit, now)).unwrap()
}

#[test]
fn a_content_request_writes_one_row_and_one_job_and_its_finish_commits_once() {
    request_and_finish(Db::Sqlite);
}

/// PostgreSQL ends a job in one statement of its own (the job's removal and the result together).
#[test]
fn postgres_a_content_request_writes_one_row_and_one_job_and_its_finish_commits_once() {
    request_and_finish(Db::Postgres);
}

fn request_and_finish(db: Db) {
    let (_db, store) = store_on(db);
    let Requested::Created(row) = request(&store, 7, false, 100).unwrap() else { panic!("not created") };
    assert_eq!((row.status.as_str(), row.version), ("pending", 1));
    let Requested::Existing(again) = request(&store, 7, false, 100).unwrap() else { panic!("not existing") };
    assert_eq!(again.id, row.id);
    let queued = all_jobs(&store);
    assert_eq!(queued.len(), 1, "one job for one item");
    assert_eq!(
        (queued[0].kind.as_str(), queued[0].target_id, queued[0].status.as_str()),
        ("content", row.id, "queued")
    );

    let job = claim(&store, WORKER, 10, t0()).remove(0);
    // Another worker's finish commits nothing.
    assert!(matches!(finish(&store, job.id, "worker-b", row.id), Ended::TakenOver));
    let stored = store.run_blocking(move |c| content::find_by_id(c, row.id)).unwrap().unwrap();
    assert_eq!(stored.status, "pending");

    let Ended::Done(Some(done)) = finish(&store, job.id, WORKER, row.id) else { panic!("not finished") };
    assert_eq!((done.status.as_str(), done.version, done.model.as_deref()), ("ready", 2, Some("m")));
    assert!(all_jobs(&store).is_empty(), "the job goes with the result");
    // The job is gone: a second finish is refused.
    assert!(matches!(finish(&store, job.id, WORKER, row.id), Ended::TakenOver));

    let Requested::Regenerating(regen) = request(&store, 7, true, 100).unwrap() else { panic!("not regenerating") };
    assert_eq!((regen.status.as_str(), regen.version, regen.model), ("pending", 3, None));
    assert_eq!(all_jobs(&store).len(), 1);
    // Regenerating an item already pending changes nothing.
    assert!(matches!(request(&store, 7, true, 100).unwrap(), Requested::Existing(_)));
    assert_eq!(all_jobs(&store).len(), 1);

    // A job whose item is no longer pending ends with nothing written but its removal.
    let job = claim(&store, WORKER, 10, t0()).remove(0);
    let regen_id = regen.id;
    let ended = move |c: &mut DbConn| -> StoreResult<usize> {
        use lorewire::store::schema::content as content_t;
        Ok(diesel::update(content_t::table.find(regen_id)).set(content_t::status.eq("fallback")).execute(c)?)
    };
    assert_eq!(write(&store, ended).unwrap(), 1);
    assert!(matches!(finish(&store, job.id, WORKER, row.id), Ended::Done(None)));
    assert!(all_jobs(&store).is_empty(), "the job is gone");
    let stored = store.run_blocking(move |c| content::find_by_id(c, row.id)).unwrap().unwrap();
    assert_eq!((stored.status.as_str(), stored.version), ("fallback", 3), "nothing else written");
}

#[test]
fn a_refused_content_request_stores_nothing() {
    let (_db, store) = store();
    request(&store, 1, false, 1).unwrap();
    let refused = request(&store, 2, false, 1);
    assert!(matches!(refused, Err(StoreError::QueueFull(1))), "{refused:?}");
    assert!(store.run_blocking(|c| content::find(c, ContentKind::Quest, 2, 0)).unwrap().is_none());
    assert_eq!(all_jobs(&store).len(), 1);
}

#[test]
fn the_player_queue_counts_only_queued_content_and_mood_jobs() {
    let (_db, store) = store();
    let check = |store: &Store| write(store, |c| jobs::check_player_queue(c, 2));
    write(&store, |c| jobs::enqueue(c, JobKind::Content, 1, 0, t0())).unwrap();
    write(&store, |c| jobs::enqueue(c, JobKind::Run, 2, 0, t0())).unwrap();
    assert!(check(&store).is_ok(), "a run job is no player job");
    write(&store, |c| jobs::enqueue(c, JobKind::Mood, 3, 0, t0())).unwrap();
    assert!(matches!(check(&store), Err(StoreError::QueueFull(2))));
    // A running job no longer waits in the queue.
    claim(&store, WORKER, 1, t0());
    assert!(check(&store).is_ok());
}

#[test]
fn jobs_are_claimed_by_priority_then_age_and_requeued_given_back_released_or_buried() {
    let (_db, store) = store();
    for (target, priority) in [(1, 0), (2, 5), (3, 0)] {
        write(&store, move |c| jobs::enqueue(c, JobKind::Content, target, priority, t0())).unwrap();
    }
    let first = claim(&store, WORKER, 2, t0());
    assert_eq!(first.iter().map(|j| j.target_id).collect::<Vec<_>>(), [2, 1]);
    assert!(first.iter().all(|j| j.status == "running" && j.attempts == 1 && j.locked_by.as_deref() == Some(WORKER)));
    let (high, low) = (first[0].id, first[1].id);

    // A retry waits for its time; its attempt counts.
    let later = t0() + TimeDelta::seconds(30);
    assert!(write(&store, move |c| jobs::requeue(c, high, WORKER, later, "boom", t0())).unwrap());
    assert!(!write(&store, move |c| jobs::requeue(c, low, "worker-b", t0(), "no", t0())).unwrap(), "not b's job");
    assert_eq!(claim(&store, "worker-b", 10, t0()).iter().map(|j| j.target_id).collect::<Vec<_>>(), [3]);
    assert!(claim(&store, WORKER, 10, later - TimeDelta::seconds(1)).is_empty());
    let retried = claim(&store, WORKER, 10, later);
    assert_eq!((retried[0].id, retried[0].attempts, retried[0].last_error.as_deref()), (high, 2, Some("boom")));

    // A wait for the provider gives its claim back.
    assert!(write(&store, move |c| jobs::give_back(c, high, WORKER, t0(), "circuit open", t0())).unwrap());
    assert_eq!(claim(&store, WORKER, 10, t0())[0].attempts, 2);

    // A graceful stop gives back every claim of the worker.
    assert_eq!(write(&store, |c| jobs::release(c, WORKER, t0())).unwrap(), 2);
    let released = all_jobs(&store);
    let attempts = |id| released.iter().find(|j| j.id == id).map(|j| (j.status.clone(), j.attempts)).unwrap();
    assert_eq!(attempts(high), ("queued".to_owned(), 1));
    assert_eq!(attempts(low), ("queued".to_owned(), 0));

    // A buried job is kept, never claimed again, and out of the queue depth.
    let again = claim(&store, WORKER, 10, t0());
    assert_eq!(again.len(), 2);
    assert!(write(&store, move |c| jobs::bury(c, low, WORKER, "no handler", t0())).unwrap());
    assert_eq!(store.run_blocking(jobs::depth).unwrap(), 2);
    write(&store, |c| jobs::release(c, WORKER, t0())).unwrap();
    assert_eq!(claim(&store, WORKER, 10, t0()).iter().map(|j| j.id).collect::<Vec<_>>(), [high]);
    let buried = all_jobs(&store).into_iter().find(|j| j.id == low).unwrap();
    assert_eq!((buried.status.as_str(), buried.last_error.as_deref()), ("dead", Some("no handler")));
}

#[test]
fn stale_leases_are_taken_over_and_only_a_holder_renews() {
    let (_db, store) = store();
    write(&store, |c| jobs::enqueue(c, JobKind::Mood, 1, 0, t0())).unwrap();
    let job = claim(&store, WORKER, 1, t0()).remove(0);
    let id = job.id;
    let t10 = t0() + TimeDelta::seconds(10);
    assert_eq!(write(&store, move |c| jobs::renew(c, "worker-b", &[id], t10)).unwrap(), 0);
    assert_eq!(write(&store, move |c| jobs::renew(c, WORKER, &[id], t10)).unwrap(), 1);
    // The lease was renewed at t10: not stale before it.
    assert_eq!(write(&store, move |c| jobs::reclaim_stale(c, t10, t10)).unwrap(), 0);
    let t20 = t0() + TimeDelta::seconds(20);
    assert_eq!(write(&store, move |c| jobs::reclaim_stale(c, t20, t20)).unwrap(), 1);
    let taken = claim(&store, "worker-b", 1, t20).remove(0);
    assert_eq!((taken.id, taken.attempts), (id, 2), "the attempt the dead worker was on counts");
    assert!(!write(&store, move |c| jobs::complete(c, id, WORKER)).unwrap(), "no longer the first worker's");
}

#[test]
fn pending_items_without_a_job_are_adopted_once_and_a_buried_job_is_not_replaced() {
    let (_db, store) = store();
    let Requested::Created(orphan) = request(&store, 1, false, 100).unwrap() else { panic!() };
    let Requested::Created(buried) = request(&store, 2, false, 100).unwrap() else { panic!() };
    let (orphan, buried) = (orphan.id, buried.id);
    // The orphan's job was of a kind nobody runs: gone. The other's is buried.
    write(&store, move |c| Ok(diesel::delete(jobs_t::table.filter(jobs_t::target_id.eq(orphan))).execute(c)?)).unwrap();
    let job = claim(&store, WORKER, 10, t0()).remove(0);
    assert_eq!(job.target_id, buried);
    write(&store, move |c| jobs::bury(c, job.id, WORKER, "broken", t0())).unwrap();

    assert_eq!(write(&store, |c| content::adopt_orphans(c, t0())).unwrap(), 1);
    assert_eq!(write(&store, |c| content::adopt_orphans(c, t0())).unwrap(), 0, "adopted once");
    let rows = all_jobs(&store);
    assert_eq!(rows.len(), 2);
    let adopted = rows.iter().find(|j| j.target_id == orphan).unwrap();
    assert_eq!((adopted.kind.as_str(), adopted.status.as_str(), adopted.attempts), ("content", "queued", 0));
    // A target with a job of the kind already gets no second one.
    assert_eq!(write(&store, move |c| jobs::adopt(c, JobKind::Content, [(orphan, 0)], t0())).unwrap(), 0);
}

#[test]
fn messages_come_back_oldest_first_each_with_its_mood_job() {
    let (_db, store) = store();
    let (user, _) = write(&store, |c| users::start_session(c, None, "hash", "ada", t0())).unwrap();
    for text in ["one", "two", "three"] {
        let uid = user.id;
        let row =
            write(&store, move |c| messages::insert(c, "test", messages::ChatLine::plain(uid, "ada", text), 100, t0()))
                .unwrap();
        assert_eq!((row.mood.as_str(), row.mood_status.as_str()), ("neutral", "pending"));
    }
    let recent = store.run_blocking(|c| messages::recent(c, 2)).unwrap();
    assert_eq!(recent.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(), ["two", "three"]);
    let moods = all_jobs(&store);
    assert_eq!(moods.len(), 3);
    assert!(moods.iter().all(|j| j.kind == "mood"));

    let uid = user.id;
    let refused =
        write(&store, move |c| messages::insert(c, "test", messages::ChatLine::plain(uid, "ada", "four"), 3, t0()));
    assert!(matches!(refused, Err(StoreError::QueueFull(3))), "{refused:?}");
    assert_eq!(store.run_blocking(messages::count).unwrap(), 3, "a refused message is not stored");
}

#[test]
fn a_budget_reserves_only_what_fits_and_settles_the_charge() {
    let (_db, store) = store();
    let budget = |store: &Store| store.run_blocking(|c| billing::budget(c, "p")).unwrap().unwrap();
    let reserve = |store: &Store, amount| write(store, move |c| billing::reserve(c, "p", amount, t0())).unwrap();
    assert!(!reserve(&store, 1), "no budget, no reservation");
    write(&store, |c| billing::put_budget(c, "p", 100, t0())).unwrap();
    assert!(reserve(&store, 60));
    assert!(!reserve(&store, 50), "60 + 50 is over 100");
    assert_eq!(budget(&store).reserved_micros, 60);
    write(&store, |c| billing::settle(c, "p", 60, 30, t0())).unwrap();
    let settled = budget(&store);
    assert_eq!((settled.spent_micros, settled.reserved_micros), (30, 0));
    assert!(reserve(&store, 70), "30 spent + 70 fits exactly");
    assert!(!reserve(&store, 1));
    // More released than reserved saturates at zero.
    write(&store, |c| billing::settle(c, "p", 500, 0, t0())).unwrap();
    assert_eq!(budget(&store).reserved_micros, 0);
}

#[test]
fn queued_jobs_are_claimed_round_robin_over_players_at_each_priority() {
    let (_db, store) = store();
    let enqueue = |target: i64, priority: i32, player: i64| {
        write(&store, move |c| jobs::enqueue_for(c, JobKind::Content, target, jobs::Place::new(priority, player), t0()))
            .unwrap()
    };
    // Player 1 floods first; players 2 and 3 come later with one job each; a higher priority job last.
    for target in 1..=5 {
        enqueue(target, 0, 1);
    }
    enqueue(6, 0, 2);
    enqueue(7, 0, 3);
    enqueue(8, 1, 1);
    // Each job claimed is done before the next claim (one busy slot).
    let next = || {
        let job = claim(&store, WORKER, 1, t0()).remove(0);
        assert!(write(&store, move |c| jobs::complete(c, job.id, WORKER)).unwrap());
        job.target_id
    };
    let order: Vec<i64> = (0..8).map(|_| next()).collect();
    // Priority first; then the players take turns: players 2 and 3 came with player 1's first job
    // to serve, so they share its turn (the older first), then player 1's others in order.
    assert_eq!(order, [8, 1, 6, 7, 2, 3, 4, 5]);
    // Players who come while another's job runs go next, in the order they came.
    for target in 11..=13 {
        enqueue(target, 0, 1);
    }
    let running = claim(&store, WORKER, 1, t0()).remove(0);
    assert_eq!(running.target_id, 11);
    enqueue(14, 0, 2);
    enqueue(15, 0, 3);
    assert!(write(&store, move |c| jobs::complete(c, running.id, WORKER)).unwrap());
    let order: Vec<i64> = (0..4).map(|_| next()).collect();
    assert_eq!(order, [14, 15, 12, 13]);
    assert!(claim(&store, WORKER, 1, t0()).is_empty());
}

/// A player's moderation flags are counted after a time, in the database; holding a player's row
/// creates it (none for an unknown user); a block sets the stored flag.
#[test]
fn flags_are_counted_after_a_time_and_a_block_is_stored() {
    use lorewire::store::moderation::{self as flags, NewFlag};
    use lorewire::store::usage;
    let (_db, store) = store();
    let (ada, _) = write(&store, |c| users::start_session(c, None, "ha", "ada", t0())).unwrap();
    let (bo, _) = write(&store, |c| users::start_session(c, None, "hb", "bo", t0())).unwrap();
    let flag = |user_id: i64, hours: i64| {
        write(&store, move |c| {
            let at = t0() + TimeDelta::hours(hours);
            flags::record(
                c,
                &NewFlag { surface: "chat", user_id: Some(user_id), text: "x", categories: "[]", created_at: at },
            )
        })
        .unwrap()
    };
    for (user, hours) in [(ada.id, 0), (ada.id, 30), (ada.id, 40), (bo.id, 40)] {
        flag(user, hours);
    }
    let count = |since: i64| {
        let (id, since) = (ada.id, t0() + TimeDelta::hours(since));
        store.run_blocking(move |c| flags::count_since(c, id, since)).unwrap()
    };
    assert_eq!((count(-1), count(0), count(30), count(40)), (3, 2, 1, 0), "after `since` only, Ada's only");

    assert!(write(&store, |c| usage::hold_player(c, 999, t0())).unwrap().is_none(), "no such user");
    let id = ada.id;
    let held = write(&store, move |c| usage::hold_player(c, id, t0())).unwrap().expect("a row");
    assert!(!held.blocked);
    write(&store, move |c| usage::block(c, "test", id, t0())).unwrap();
    let ids = [ada.id, bo.id];
    assert_eq!(store.run_blocking(move |c| usage::blocked_among(c, &ids)).unwrap(), [ada.id]);
}

/// The statements of an item's life (its request and job, the ledger's reservation, the
/// claim-free finish and the settlement) stay prepared on the connection: over three items,
/// no statement run more than once is left out of the connection's cache (Diesel prepares an
/// UPDATE, an `IN` list or an upsert again at every call unless told its SQL never changes).
#[test]
fn an_items_statements_stay_prepared() {
    statements_stay_prepared(Db::Sqlite);
}

/// The same on PostgreSQL, where the request and the finish are statements written out.
#[test]
fn postgres_an_items_statements_stay_prepared() {
    statements_stay_prepared(Db::Postgres);
}

fn statements_stay_prepared(db: Db) {
    use diesel::connection::InstrumentationEvent;
    use lorewire::store::usage::{self as ledger, Account};
    use std::collections::{HashMap, HashSet};
    use std::sync::{Arc, Mutex};
    let (_db, store) = store_on(db);
    // How often each statement started, and the statements the connection cached.
    type Seen = (HashMap<String, usize>, HashSet<String>);
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let record = seen.clone();
    let counter = move |event: InstrumentationEvent<'_>| {
        let mut seen = record.lock().unwrap();
        match event {
            InstrumentationEvent::StartQuery { query, .. } => {
                let text = query.to_string();
                let sql = text.split(" -- binds").next().unwrap_or_default().to_owned();
                *seen.0.entry(sql).or_default() += 1;
            }
            InstrumentationEvent::CacheQuery { sql, .. } => {
                seen.1.insert(sql.to_owned());
            }
            _ => {}
        }
    };
    write(&store, move |c| {
        c.set_instrumentation(counter.clone());
        let player = Account { level: "player", owner: "7", limits: (Some(100_000), None), own: Some(7) };
        let studio = Account { level: "studio", owner: "", limits: (None, None), own: None };
        for account in [&player, &studio] {
            ledger::open(c, account, "2027-01-01", t0())?;
        }
        let seed = lorewire::core::config::Config::with_database("unused").usage;
        ledger::seed_limits(c, &lorewire::limits::seed_row(&seed, t0()))?;
        for subject_id in 1..=3 {
            let asked = RequestItem { claim_for: Some(WORKER), player: 7, ..item(subject_id, false, 100) };
            let (Requested::Created(row), Some(job)) = content::request(c, &asked, t0())? else {
                panic!("not created")
            };
            let reserved = ledger::reserve(c, [&player, &studio, &studio], "2027-01-01", (10, 0), t0())?;
            assert_eq!(reserved.len(), 2);
            // The limits' own path: its one read of the terms, the reservation and the hold.
            let target = format!("content:{}", row.id);
            let spend = lorewire::limits::Spend {
                user_id: 7,
                project: Some("p1"),
                model: "m",
                target: &target,
                prompt_tokens: 10,
                output_tokens: 5,
            };
            lorewire::limits::reserve(c, &seed, &spend, t0())?.expect("no limit refuses");
            let f = Finish {
                origin: "test",
                job_id: job.id,
                worker: WORKER,
                content_id: row.id,
                status: ContentStatus::Ready,
                fields: r#"{"title":"t"}"#,
                model: Some("m"),
                reason: None,
                settles: None,
            };
            assert!(matches!(content::finish(c, &f, t0())?, Ended::Done(Some(_))));
            ledger::settle(c, [("player", "7"), ("studio", ""), ("studio", "")], "2027-01-01", (10, 0), (4, 0), t0())?;
            let usage = lorewire::runs::Usage { input_tokens: 3, output_tokens: 2, ..Default::default() };
            lorewire::limits::settle(c, &target, lorewire::limits::Used::Reported(usage), t0())?;
        }
        Ok(())
    })
    .unwrap();
    let (started, cached) = &*seen.lock().unwrap();
    let again: Vec<&String> =
        started.iter().filter(|(sql, n)| **n > 1 && !cached.contains(*sql)).map(|(sql, _)| sql).collect();
    assert!(again.is_empty(), "prepared again at every call: {again:#?}");
}

fn claimed(subject_id: i64, context: &'static str, may_change: bool) -> RequestItem<'static> {
    RequestItem { context: Some(context), may_change, claim_for: Some(WORKER), ..item(subject_id, false, 100) }
}

fn request_claimed(store: &Store, item: RequestItem<'static>) -> StoreResult<Requested> {
    write(store, move |c| content::request(c, &item, t0()).map(|(r, _)| r))
}

/// On PostgreSQL a request whose job is claimed at once finds or creates its item in one
/// statement; one that finds it created by a transaction that committed after that statement
/// began (held open here until the request waits on it) answers the item as it is.
#[test]
fn postgres_a_claimed_request_finds_or_creates_its_item_in_one_statement() {
    let (db, store) = store_on(Db::Postgres);
    let Requested::Created(row) = request_claimed(&store, claimed(7, "{}", true)).unwrap() else {
        panic!("not created")
    };
    let jobs = all_jobs(&store);
    assert_eq!(jobs.len(), 1);
    assert_eq!(
        (jobs[0].target_id, jobs[0].status.as_str(), jobs[0].locked_by.as_deref()),
        (row.id, "running", Some(WORKER))
    );
    let Requested::Existing(again) = request_claimed(&store, claimed(7, "{}", true)).unwrap() else {
        panic!("not existing")
    };
    assert_eq!(again.id, row.id);
    assert_eq!(all_jobs(&store).len(), 1, "no second job");
    // A requester that may not change the item is refused another context, and answered its own.
    let refused = request_claimed(&store, claimed(7, r#"{"a":"b"}"#, false));
    assert!(matches!(refused, Err(StoreError::ServerOnly)), "{refused:?}");
    assert!(matches!(request_claimed(&store, claimed(7, "{}", false)), Ok(Requested::Existing(_))));

    // Another transaction inserts item 8 and holds its commit until the request waits on it.
    let mut other = diesel::PgConnection::establish(&db.url).unwrap();
    let watcher = &mut diesel::PgConnection::establish(&db.url).unwrap();
    diesel::sql_query("BEGIN").execute(&mut other).unwrap();
    diesel::sql_query(
        "INSERT INTO content (kind, subject_id, status, fields, context, version, created_at, updated_at, owner_id) \
         VALUES ('quest', 8, 'ready', '{}', '{}', 1, now(), now(), 0)",
    )
    .execute(&mut other)
    .unwrap();
    let asking = {
        let store = store.clone();
        std::thread::spawn(move || request_claimed(&store, claimed(8, "{}", true)))
    };
    #[derive(QueryableByName)]
    struct Waiting {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let waits =
        "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'";
    let started = std::time::Instant::now();
    while diesel::sql_query(waits).get_result::<Waiting>(watcher).unwrap().n == 0 {
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "the request never waited on the insert");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    diesel::sql_query("COMMIT").execute(&mut other).unwrap();
    let Requested::Existing(found) = asking.join().unwrap().unwrap() else { panic!("not existing") };
    assert_eq!((found.subject_id, found.status.as_str()), (8, "ready"));
    assert_eq!(all_jobs(&store).len(), 1, "no job for an item there already");
}

/// What the writer's batches read (here a model's price) is kept between batches per store: a
/// second database in the same process reads its own; a change through the store is read by the
/// next write after it.
#[test]
fn what_batches_read_is_kept_per_store_and_read_again_after_a_change() {
    use lorewire::domain::money::Price;
    use lorewire::store::billing;
    let ((_a_db, a), (_b_db, b)) = (store(), store());
    let put = |store: &Store, input: i64| {
        let price = Price { input, output: 1, cache_read: 0, cache_write: 0 };
        write(store, move |c| billing::put_price(c, "m", &price, t0())).unwrap();
    };
    let read = |store: &Store| write(store, |c| Ok(billing::price(c, "m")?.map(|p| p.input))).unwrap();
    put(&a, 10);
    put(&b, 20);
    assert_eq!(read(&a), Some(10));
    assert_eq!(read(&b), Some(20), "another store's read is not this one's");
    assert_eq!(read(&a), Some(10));
    put(&a, 11);
    assert_eq!(read(&a), Some(11), "the write after a change reads it");
    assert_eq!(read(&b), Some(20));
}
