//! Group commit: writes that arrive together share one transaction, each is answered only once
//! it committed, and a write that fails takes only itself down, unless the transaction itself
//! fails, which takes down exactly the writes in it. The pool's connections refuse writes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use diesel::{ExpressionMethods, QueryDsl, RunQueryDsl};
use lorewire::store::notify::Event;
use lorewire::store::schema::messages;
use lorewire::store::{messages as rows, users, DbConn, Failure, Store, StoreError, StoreResult};

use crate::common::{Db, TestDb};

both_backends!(
    writes_that_arrive_together_commit_once_and_a_failed_one_takes_only_itself,
    a_batch_whose_commit_fails_fails_every_write_in_it_and_the_next_batch_commits,
    reads_on_the_pool_cannot_write,
    a_whole_write_in_a_batch_takes_no_savepoint_of_its_own,
);

#[actix_web::test]
async fn sqlite_writes_reach_the_database_file_while_the_store_runs() {
    let Setup { store, user_id, _db, .. } = setup(Db::Sqlite).await;
    let file = std::path::PathBuf::from(&_db.url);
    let size = || std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    let before = size();
    // About 600 KB of messages, more than the WAL would take before an automatic checkpoint.
    let text = "x".repeat(2000);
    let writes: Vec<_> = (0..300)
        .map(|_| {
            let text = text.clone();
            store.write(move |conn| {
                rows::insert(conn, "test", rows::ChatLine::plain(user_id, "Ada", &text), 10_000, now())
            })
        })
        .collect();
    for answer in futures_util::future::join_all(writes).await {
        answer.unwrap();
    }
    // The writer never checkpoints; the checkpointer copies the WAL into the file meanwhile.
    crate::common::eventually("the committed pages to be copied into the database file", || async {
        (size() >= before + 500_000).then_some(())
    })
    .await;
}

struct Setup {
    store: Store,
    user_id: i64,
    /// The events handed on after each commit, in order.
    events: Arc<Mutex<Vec<Event>>>,
    _db: TestDb,
}

async fn setup(db: Db) -> Setup {
    let (db, store) = actix_web::rt::task::spawn_blocking(move || {
        let db = TestDb::new(db);
        let store = Store::connect(&db.url).expect("store");
        store.migrate().expect("migrations");
        (db, store)
    })
    .await
    .unwrap();
    let events = Arc::new(Mutex::new(Vec::new()));
    let heard = events.clone();
    store.announce_after_commit(Arc::new(move |batch| heard.lock().unwrap().extend(batch)));
    let (user, _) = store.write(|conn| users::start_session(conn, None, "hash-ada", "Ada", now())).await.unwrap();
    events.lock().unwrap().clear();
    Setup { store, user_id: user.id, events, _db: db }
}

fn now() -> chrono::NaiveDateTime {
    chrono::Utc::now().naive_utc()
}

fn batches(store: &Store) -> u64 {
    store.writer_counters().batches.get()
}

/// Queues a write that holds the writer until the returned sender is dropped, and waits until
/// it runs: whatever is queued after it waits and is taken as one batch.
pub(crate) async fn hold_writer(
    store: &Store,
) -> (std::sync::mpsc::Sender<()>, impl std::future::Future<Output = StoreResult<()>>) {
    let (release, held) = std::sync::mpsc::channel::<()>();
    let (running, started) = std::sync::mpsc::channel::<()>();
    let holding = store.write(move |_| {
        let _ = running.send(());
        let _ = held.recv_timeout(Duration::from_secs(30));
        Ok(())
    });
    actix_web::rt::task::spawn_blocking(move || started.recv_timeout(Duration::from_secs(30)))
        .await
        .unwrap()
        .expect("the holding write runs");
    (release, holding)
}

/// Every statement the writer's connection runs from now until [`quiet`] is called.
pub(crate) async fn watch(store: &Store) -> Arc<Mutex<Vec<String>>> {
    use diesel::connection::{Connection, InstrumentationEvent};
    let statements: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = statements.clone();
    let watching = store.write(move |conn| {
        let seen = seen.clone();
        conn.set_instrumentation(move |event: InstrumentationEvent<'_>| {
            if let InstrumentationEvent::StartQuery { query, .. } = event {
                seen.lock().unwrap().push(query.to_string());
            }
        });
        Ok(())
    });
    watching.await.unwrap();
    statements
}

/// Ends [`watch`].
pub(crate) async fn quiet(store: &Store) {
    use diesel::connection::{Connection, InstrumentationEvent};
    store
        .write(|conn| {
            conn.set_instrumentation(|_: InstrumentationEvent<'_>| {});
            Ok(())
        })
        .await
        .unwrap();
}

fn message_texts(conn: &mut DbConn) -> StoreResult<Vec<String>> {
    Ok(messages::table.order(messages::id.asc()).select(messages::text).load(conn)?)
}

fn stored_message_ids(events: &[Event]) -> Vec<i64> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Message { id, .. } => Some(*id),
            _ => None,
        })
        .collect()
}

async fn writes_that_arrive_together_commit_once_and_a_failed_one_takes_only_itself(db: Db) {
    let Setup { store, user_id, events, _db } = setup(db).await;
    let before = batches(&store);
    let (release, holding) = hold_writer(&store).await;

    let mut writes = Vec::new();
    for n in 0..20 {
        let text = format!("message {n}");
        writes.push(store.write(move |conn| {
            let row = rows::insert(conn, "test", rows::ChatLine::plain(user_id, "Ada", &text), 10_000, now())?;
            match n {
                // Stored, then failed: nothing of it may stay.
                7 => Err(StoreError::Corrupt("refused on purpose".into())),
                13 => panic!("a write that panics"),
                _ => Ok(row),
            }
        }));
    }
    drop(release);
    holding.await.unwrap();
    let answers = futures_util::future::join_all(writes).await;

    // The holder's transaction and one for all twenty.
    assert_eq!(batches(&store) - before, 2, "writes queued together share a transaction");
    let mut committed = Vec::new();
    for (n, answer) in answers.into_iter().enumerate() {
        match (n, answer) {
            (7, Err(StoreError::Corrupt(why))) => assert_eq!(why, "refused on purpose"),
            (13, Err(e)) => assert!(matches!(e, StoreError::Panicked), "write 13: {e}"),
            (7 | 13, other) => panic!("write {n} should have failed: {:?}", other.map(|r| r.id)),
            (_, Ok(row)) => {
                assert_eq!(row.text, format!("message {n}"));
                committed.push(row.id);
            }
            (_, Err(e)) => panic!("write {n} failed: {e}"),
        }
    }
    assert_eq!(committed.len(), 18);
    // Answered after the commit: a read on another connection sees every one of them.
    let texts = store.run(message_texts).await.unwrap();
    let expected: Vec<String> = (0..20).filter(|n| *n != 7 && *n != 13).map(|n| format!("message {n}")).collect();
    assert_eq!(texts, expected);
    // The events of what committed were handed on, in order; none of what rolled back.
    assert_eq!(stored_message_ids(&events.lock().unwrap()), committed);
}

/// A table whose foreign key is checked only at commit: a write breaking it makes the whole
/// transaction fail at `COMMIT`.
fn create_checked_at_commit(conn: &mut DbConn) -> StoreResult<()> {
    use diesel::connection::SimpleConnection;
    conn.batch_execute(
        "CREATE TABLE wt_parent (id INTEGER PRIMARY KEY); \
         CREATE TABLE wt_child (parent_id INTEGER NOT NULL REFERENCES wt_parent (id) DEFERRABLE INITIALLY DEFERRED);",
    )?;
    Ok(())
}

fn insert_orphan(conn: &mut DbConn) -> StoreResult<()> {
    diesel::sql_query("INSERT INTO wt_child (parent_id) VALUES (99)").execute(conn)?;
    Ok(())
}

async fn a_batch_whose_commit_fails_fails_every_write_in_it_and_the_next_batch_commits(db: Db) {
    let Setup { store, user_id, events, _db } = setup(db).await;
    store.write(create_checked_at_commit).await.unwrap();
    let failed_before = store.writer_counters().failed_batches.get();
    let (release, holding) = hold_writer(&store).await;
    let first = store.write(move |conn| {
        rows::insert(conn, "test", rows::ChatLine::plain(user_id, "Ada", "lost with its batch"), 10_000, now())
    });
    let orphan = store.write(insert_orphan);
    let last = store.write(move |conn| {
        rows::insert(conn, "test", rows::ChatLine::plain(user_id, "Ada", "lost too"), 10_000, now())
    });
    drop(release);
    holding.await.unwrap();

    for (what, answer) in
        [("first", first.await.map(|_| ())), ("orphan", orphan.await), ("last", last.await.map(|_| ()))]
    {
        let e = answer.expect_err(what);
        assert!(matches!(e, StoreError::Batch(_)), "{what}: {e}");
        assert_eq!(e.failure(), Failure::Internal, "{what}: a broken constraint is lorewire's own fault: {e}");
    }
    assert_eq!(store.writer_counters().failed_batches.get() - failed_before, 1);
    assert!(store.run(message_texts).await.unwrap().is_empty(), "nothing of the failed batch stays");
    assert!(events.lock().unwrap().is_empty(), "nothing of the failed batch is announced");

    // The writer goes on with the next batch.
    let row = store
        .write(move |conn| rows::insert(conn, "test", rows::ChatLine::plain(user_id, "Ada", "after"), 10_000, now()))
        .await
        .unwrap();
    assert_eq!(store.run(message_texts).await.unwrap(), ["after"]);
    assert_eq!(stored_message_ids(&events.lock().unwrap()), [row.id]);
}

async fn reads_on_the_pool_cannot_write(db: Db) {
    let Setup { store, user_id, _db, .. } = setup(db).await;
    let e = store
        .run(move |conn| {
            rows::insert(conn, "test", rows::ChatLine::plain(user_id, "Ada", "through the wrong door"), 10_000, now())
        })
        .await
        .expect_err("a pooled connection refuses writes");
    assert_eq!(e.failure(), Failure::Unavailable, "{e}");
    assert!(store.run(message_texts).await.unwrap().is_empty());
}

/// A chat line is the whole of its request: inside the writer's batch it runs without a
/// savepoint of its own (two round trips fewer on PostgreSQL), and one that fails still leaves
/// nothing (the batch rolls it back).
async fn a_whole_write_in_a_batch_takes_no_savepoint_of_its_own(db: Db) {
    use diesel::connection::{Connection, InstrumentationEvent};
    let Setup { store, user_id, _db, .. } = setup(db).await;
    let statements: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = statements.clone();
    store
        .write(move |conn| {
            let seen = seen.clone();
            conn.set_instrumentation(move |event: InstrumentationEvent<'_>| {
                if let InstrumentationEvent::StartQuery { query, .. } = event {
                    seen.lock().unwrap().push(query.to_string());
                }
            });
            let row = rows::insert(conn, "test", rows::ChatLine::plain(user_id, "Ada", "hello"), 10_000, now())?;
            conn.set_instrumentation(|_: InstrumentationEvent<'_>| {});
            Ok(row)
        })
        .await
        .unwrap();
    let statements = statements.lock().unwrap().clone();
    assert!(statements.iter().any(|q| q.contains("INSERT INTO")), "the line was written: {statements:#?}");
    assert!(!statements.iter().any(|q| q.contains("SAVEPOINT")), "no savepoint: {statements:#?}");
    assert_eq!(store.run(message_texts).await.unwrap(), ["hello"]);
}
