//! The usage ledger in the writer's batch: settlements and holds are kept aside and written at
//! the commit, yet every reservation of the batch decides by them as if they had been written,
//! and a write that fails after writing its predecessors' changes early takes none of them
//! along (they are written at the commit all the same).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use diesel::{ExpressionMethods, QueryDsl, RunQueryDsl};
use futures_util::FutureExt;
use lorewire::core::usage::UsageConfig;
use lorewire::domain::limits::{Level, Refusal};
use lorewire::domain::runs::Usage;
use lorewire::limits::{self, Spend, Used};
use lorewire::store::schema::{usage_days, usage_holds};
use lorewire::store::{DbConn, Store, StoreError, StoreResult};

use crate::common::{Db, TestDb};
use crate::writer::{hold_writer, quiet, watch};

both_backends!(
    a_batch_reserves_by_the_settlements_it_kept_aside_and_a_failed_write_loses_none_of_them,
    holds_kept_aside_are_settled_in_their_own_batch,
    settlements_kept_for_the_commit_take_their_holds_and_a_players_reservation_waits_for_its_own,
    a_players_own_limits_stand_before_the_defaults_in_its_reservation,
    the_items_a_batch_ends_take_their_holds_in_one_statement,
    a_limit_changed_in_a_batch_holds_for_the_reservations_after_it,
);

const PLAYER: i64 = 7;

fn seed() -> UsageConfig {
    UsageConfig {
        studio_daily_micros: None,
        studio_daily_tokens: None,
        player_daily_micros: None,
        player_daily_tokens: Some(100),
        player_llm_rate: "60/1m".parse().unwrap(),
    }
}

fn now() -> chrono::NaiveDateTime {
    chrono::Utc::now().naive_utc()
}

/// Reserves `tokens` for the player's call `target`.
fn reserve(conn: &mut DbConn, target: &str, tokens: i64) -> StoreResult<Result<(), Refusal>> {
    reserve_for(conn, PLAYER, target, tokens)
}

fn reserve_for(conn: &mut DbConn, user_id: i64, target: &str, tokens: i64) -> StoreResult<Result<(), Refusal>> {
    let spend = Spend { user_id, project: None, model: "m", target, prompt_tokens: tokens, output_tokens: 0 };
    limits::reserve(conn, &seed(), &spend, now())
}

async fn open_store(db: Db) -> (TestDb, Store) {
    actix_web::rt::task::spawn_blocking(move || {
        let db = TestDb::new(db);
        let store = Store::connect(&db.url).expect("store");
        store.migrate().expect("migrations");
        (db, store)
    })
    .await
    .unwrap()
}

/// The player's ledger row of today: (spent, reserved) tokens.
fn player_day(conn: &mut DbConn) -> StoreResult<(i64, i64)> {
    day_of(conn, PLAYER)
}

fn day_of(conn: &mut DbConn, user_id: i64) -> StoreResult<(i64, i64)> {
    Ok(usage_days::table
        .filter(usage_days::level.eq(Level::Player.as_str()))
        .filter(usage_days::owner.eq(user_id.to_string()))
        .select((usage_days::spent_tokens, usage_days::reserved_tokens))
        .first(conn)?)
}

/// The studio's ledger row of today: (spent, reserved) tokens.
fn studio_day(conn: &mut DbConn) -> StoreResult<(i64, i64)> {
    Ok(usage_days::table
        .filter(usage_days::level.eq(Level::Studio.as_str()))
        .select((usage_days::spent_tokens, usage_days::reserved_tokens))
        .first(conn)?)
}

fn hold_targets(conn: &mut DbConn) -> StoreResult<Vec<String>> {
    Ok(usage_holds::table.order(usage_holds::id.asc()).select(usage_holds::target).load(conn)?)
}

async fn a_batch_reserves_by_the_settlements_it_kept_aside_and_a_failed_write_loses_none_of_them(db: Db) {
    let (_db, store) = open_store(db).await;
    // Three rounds, each from the same start: the first batch runs without savepoints, fails
    // at write 2 and runs again with a savepoint each; all must end alike.
    for round in 0..3 {
        let call = move |n: u32| format!("call:{round}:{n}");
        // Reserved in a batch of its own: 40 of the player's 100 held.
        store.write(move |conn| reserve(conn, &call(0), 40)).await.unwrap().unwrap();
        assert_eq!(store.run(player_day).await.unwrap(), (0, 40), "round {round}");

        let (release, holding) = hold_writer(&store).await;
        // 1. The call made no call: its 40 are released, kept aside.
        let settle = store.write(move |conn| limits::settle(conn, &call(0), Used::Nothing, now()));
        // 2. Reserves 10 (writing write 1's release early, in its own savepoint), then fails.
        let failing = store.write(move |conn| {
            reserve(conn, &call(2), 10)?.expect("10 fit");
            Err::<(), _>(StoreError::Corrupt("refused on purpose".into()))
        });
        // 3. 70 fit only once write 1's release counts.
        let fits = store.write(move |conn| reserve(conn, &call(3), 70));
        // 4. 40 more do not: 70 are held.
        let refused = store.write(move |conn| reserve(conn, &call(4), 40));
        drop(release);
        holding.await.unwrap();
        settle.await.unwrap();
        assert!(matches!(failing.await, Err(StoreError::Corrupt(_))), "round {round}: write 2 fails");
        assert_eq!(fits.await.unwrap(), Ok(()), "round {round}: 70 fit once the release counts");
        let refusal = refused.await.unwrap().expect_err("40 more are over the limit");
        assert_eq!(refusal.level, Level::Player);
        // Write 1's release stands though write 2 wrote it early and rolled back.
        assert_eq!(store.run(player_day).await.unwrap(), (0, 70), "round {round}");
        assert_eq!(store.run(studio_day).await.unwrap(), (0, 70), "round {round}");
        assert_eq!(store.run(hold_targets).await.unwrap(), vec![call(3)], "round {round}");
        // Back to nothing held for the next round.
        store.write(move |conn| limits::settle(conn, &call(3), Used::Nothing, now())).await.unwrap();
        assert_eq!(store.run(player_day).await.unwrap(), (0, 0), "round {round}");
    }
}

async fn holds_kept_aside_are_settled_in_their_own_batch(db: Db) {
    let (_db, store) = open_store(db).await;
    let (release, holding) = hold_writer(&store).await;
    // Reserved and settled in one batch: the hold kept aside is written before it is read.
    let reserved = store.write(|conn| reserve(conn, "call:a", 30));
    let charged = store.write(|conn| limits::settle(conn, "call:a", Used::Unknown, now()));
    // Another player's reservation writes only that player's row early.
    let other = store.write(|conn| reserve_for(conn, PLAYER + 1, "call:b", 20));
    // A third player's hold kept aside, then its settlement kept for the commit: the commit's
    // settlement finds it (it is written first), beside a hold of another target it leaves.
    let third = PLAYER + 2;
    let kept = store.write(move |conn| reserve_for(conn, third, "content:c", 15));
    let later = store.write(move |conn| reserve_for(conn, third, "content:d", 5));
    let ten = Used::Reported(Usage { input_tokens: 10, ..Usage::default() });
    let settled = store.write(move |conn| limits::settle_later(conn, "content:c", third, ten, None, now()));
    drop(release);
    holding.await.unwrap();
    assert_eq!(reserved.await.unwrap(), Ok(()));
    let charged = charged.await.unwrap();
    assert_eq!(charged.player.0, 30, "the hold was found and charged as held");
    assert_eq!(other.await.unwrap(), Ok(()));
    assert_eq!((kept.await.unwrap(), later.await.unwrap()), (Ok(()), Ok(())));
    assert_eq!(settled.await.unwrap().charged().player, (10, 0), "the kept hold was settled");
    // At the commit: the first player's row, whose reservations fall, and the studio's, new
    // today, written together.
    assert_eq!(store.run(player_day).await.unwrap(), (30, 0));
    assert_eq!(store.run(|conn| day_of(conn, PLAYER + 1)).await.unwrap(), (0, 20));
    assert_eq!(store.run(move |conn| day_of(conn, third)).await.unwrap(), (10, 5));
    assert_eq!(store.run(studio_day).await.unwrap(), (40, 25));
    assert_eq!(store.run(hold_targets).await.unwrap(), ["call:b", "content:d"]);
}

/// Reserves `tokens` for the player `user_id`'s call `target`; panics when refused.
async fn reserved(store: &Store, user_id: i64, target: String, tokens: i64) {
    store.write(move |conn| reserve_for(conn, user_id, &target, tokens)).await.unwrap().unwrap();
}

async fn settlements_kept_for_the_commit_take_their_holds_and_a_players_reservation_waits_for_its_own(db: Db) {
    let (_db, store) = open_store(db).await;
    let ten = Used::Reported(Usage { input_tokens: 4, output_tokens: 6, ..Usage::default() });
    // Three rounds, players of their own: the first batch runs without savepoints, fails at
    // write 3 and runs again with a savepoint each; all must end alike.
    for round in 0..3_i64 {
        let (p, q) = (10 + 2 * round, 11 + 2 * round);
        let call = move |n: u32| format!("content:{round}{n}");
        reserved(&store, p, call(0), 70).await;
        reserved(&store, q, call(1), 30).await;
        // The game server's own item (no player's row: its reservation writes nothing early).
        reserved(&store, limits::SERVER, call(5), 30).await;

        let (release, holding) = hold_writer(&store).await;
        // 1, 2. Two items end: their settlements are kept for the commit.
        let first = store.write(move |conn| limits::settle_later(conn, &call(0), p, ten, None, now()));
        let second = store.write(move |conn| limits::settle_later(conn, &call(1), q, Used::Unknown, None, now()));
        // 3. Reserves at p's row (taking p's settlement first, in its own savepoint), then fails.
        let failing = store.write(move |conn| {
            reserve_for(conn, p, &call(2), 10)?.expect("10 fit");
            Err::<(), _>(StoreError::Corrupt("refused on purpose".into()))
        });
        // 4. 80 fit at p only once the first settlement counts (10 spent, 70 released).
        let fits = store.write(move |conn| reserve_for(conn, p, &call(3), 80));
        // 5. q's item is asked for again: its new hold outlives the settlement of the old.
        let again = store.write(move |conn| reserve_for(conn, q, &call(1), 20));
        // 6, 7. The same for the game server's item.
        let server = limits::SERVER;
        let ended = store.write(move |conn| limits::settle_later(conn, &call(5), server, Used::Nothing, None, now()));
        let asked = store.write(move |conn| reserve_for(conn, server, &call(5), 20));
        drop(release);
        holding.await.unwrap();
        let (first, second) = (first.await.unwrap(), second.await.unwrap());
        assert!(matches!(failing.await, Err(StoreError::Corrupt(_))), "round {round}: write 3 fails");
        assert_eq!(fits.await.unwrap(), Ok(()), "round {round}: 80 fit once the settlement counts");
        assert_eq!(again.await.unwrap(), Ok(()), "round {round}");
        ended.await.unwrap();
        assert_eq!(asked.await.unwrap(), Ok(()), "round {round}");
        // Known once committed: what each settlement charged.
        assert_eq!(first.charged().player, (10, 0), "round {round}");
        assert_eq!(second.charged().player, (30, 0), "round {round}: charged as held");
        assert_eq!(store.run(move |conn| day_of(conn, p)).await.unwrap(), (10, 80), "round {round}");
        assert_eq!(store.run(move |conn| day_of(conn, q)).await.unwrap(), (30, 20), "round {round}");
        let mut holds = store.run(hold_targets).await.unwrap();
        holds.sort();
        assert_eq!(holds, vec![call(1), call(3), call(5)], "round {round}");
        for n in [1, 3, 5] {
            store.write(move |conn| limits::settle(conn, &call(n), Used::Nothing, now())).await.unwrap();
        }
    }
}

/// A player's own limits, read by its reservation: a token limit of its own below the default
/// refuses what the default allows, a USD limit of its own refuses a model without a price (fail
/// closed) though the defaults have no USD limit, and a player without its own has the defaults.
async fn a_players_own_limits_stand_before_the_defaults_in_its_reservation(db: Db) {
    use lorewire::store::usage::{self as ledger, PlayerChange};
    use lorewire::store::users;
    let (_db, store) = open_store(db).await;
    let seed = lorewire::limits::seed_row(&seed(), now());
    store.write(move |conn| ledger::seed_limits(conn, &seed)).await.unwrap();
    let user =
        |name: &'static str| store.write(move |conn| Ok(users::start_session(conn, None, name, name, now())?.0.id));
    let (own_tokens, own_usd, plain) =
        (user("ada").await.unwrap(), user("bo").await.unwrap(), user("cy").await.unwrap());
    let put = |user_id: i64, change: PlayerChange| {
        store.write(move |conn| ledger::put_player(conn, "test", user_id, &change, now()))
    };
    put(own_tokens, PlayerChange { daily_tokens: Some(Some(20)), ..PlayerChange::default() }).await.unwrap();
    put(own_usd, PlayerChange { daily_micros: Some(Some(1_000)), ..PlayerChange::default() }).await.unwrap();
    // "m" has no price.
    let refused = store.write(move |conn| reserve_for(conn, own_tokens, "a:1", 30)).await.unwrap();
    assert_eq!(refused.map_err(|r| r.level), Err(Level::Player), "30 over its own 20");
    assert_eq!(store.write(move |conn| reserve_for(conn, own_tokens, "a:2", 20)).await.unwrap(), Ok(()));
    let refused = store.write(move |conn| reserve_for(conn, own_usd, "b:1", 30)).await.unwrap().unwrap_err();
    assert_eq!(refused.level, Level::Player);
    assert!(refused.message.contains("has no price"), "{}", refused.message);
    assert_eq!(store.write(move |conn| reserve_for(conn, plain, "c:1", 90)).await.unwrap(), Ok(()), "the default 100");
    let refused = store.write(move |conn| reserve_for(conn, plain, "c:2", 20)).await.unwrap();
    assert_eq!(refused.map_err(|r| r.level), Err(Level::Player), "110 over the default 100");
    let mut holds = store.run(hold_targets).await.unwrap();
    holds.sort();
    assert_eq!(holds, ["a:2", "c:1"], "a refused reservation holds nothing");
}

/// Three items ended in one batch: their holds are taken at its commit in one DELETE, and
/// each settlement charges what it used.
async fn the_items_a_batch_ends_take_their_holds_in_one_statement(db: Db) {
    let (_db, store) = open_store(db).await;
    for player in 1..=3 {
        reserved(&store, player, format!("content:{player}"), 50).await;
    }
    // The writer's connection tells what it runs from here to after the commit.
    let statements = watch(&store).await;
    let (release, holding) = hold_writer(&store).await;
    let used = |tokens: u64| Used::Reported(Usage { input_tokens: tokens, ..Usage::default() });
    let ended: Vec<_> = (1..=3_i64)
        .map(|player| {
            let target = format!("content:{player}");
            store.write(move |conn| limits::settle_later(conn, &target, player, used(player as u64), None, now()))
        })
        .collect();
    drop(release);
    holding.await.unwrap();
    let mut settled = Vec::new();
    for end in ended {
        settled.push(end.await.unwrap());
    }
    quiet(&store).await;
    let statements = statements.lock().unwrap().clone();
    let deletes = statements.iter().filter(|q| q.starts_with("DELETE FROM") && q.contains("usage_holds")).count();
    assert_eq!(deletes, 1, "one DELETE for the batch's holds: {statements:#?}");
    let charged: Vec<(i64, i64)> = settled.iter().map(|s| s.charged().player).collect();
    assert_eq!(charged, [(1, 0), (2, 0), (3, 0)]);
    assert!(store.run(hold_targets).await.unwrap().is_empty(), "every hold taken");
    for player in 1..=3 {
        assert_eq!(store.run(move |conn| day_of(conn, player)).await.unwrap(), (player, 0));
    }
}

/// PostgreSQL writes a batch's ledger rows in one upsert. A row a settlement releases is there
/// already (its reservation made it); should one be gone, it is created holding nothing, as a
/// settlement in place leaves a row, never holding less than nothing.
#[actix_web::test]
async fn postgres_a_settled_row_that_is_gone_is_created_holding_nothing() {
    let (_db, store) = open_store(Db::Postgres).await;
    reserved(&store, 1, "content:1".into(), 40).await;
    reserved(&store, 2, "content:2".into(), 30).await;
    let gone = store.write(|conn| {
        let row = usage_days::table.filter(usage_days::level.eq("player")).filter(usage_days::owner.eq("1"));
        Ok(diesel::delete(row).execute(conn)?)
    });
    assert_eq!(gone.await.unwrap(), 1);
    let ten = Used::Reported(Usage { input_tokens: 10, ..Usage::default() });
    let (release, holding) = hold_writer(&store).await;
    let first = store.write(move |conn| limits::settle_later(conn, "content:1", 1, ten, None, now()));
    let second = store.write(move |conn| limits::settle_later(conn, "content:2", 2, ten, None, now()));
    drop(release);
    holding.await.unwrap();
    first.await.unwrap();
    second.await.unwrap();
    assert_eq!(store.run(|conn| day_of(conn, 1)).await.unwrap(), (10, 0), "created, holding nothing");
    assert_eq!(store.run(|conn| day_of(conn, 2)).await.unwrap(), (10, 0));
    assert_eq!(store.run(studio_day).await.unwrap(), (20, 0));
}

/// PostgreSQL writes what a batch kept for its commit in one statement: the holds of its
/// reservations (in order), the ledger rows' changes and the notifications (in order).
#[actix_web::test]
async fn postgres_a_batch_writes_its_holds_ledger_rows_and_notifications_in_one_statement() {
    use diesel::Connection;
    use lorewire::store::notify::{self, Event, CHANNEL};
    let (db, store) = open_store(Db::Postgres).await;
    let url = db.url.clone();
    let mut listener = actix_web::rt::task::spawn_blocking(move || {
        let mut listener = diesel::PgConnection::establish(&url).expect("listener");
        diesel::sql_query(format!("LISTEN {CHANNEL}")).execute(&mut listener).expect("LISTEN");
        listener
    })
    .await
    .unwrap();
    // Each player's row made by a first reservation (its batch's statements are not counted).
    for player in 1..=3 {
        reserved(&store, player, format!("first:{player}"), 10).await;
    }
    let statements = watch(&store).await;
    let (release, holding) = hold_writer(&store).await;
    let writes: Vec<_> = (1..=3_i64)
        .map(|player| {
            store.write(move |conn| {
                let reserved = reserve_for(conn, player, &format!("second:{player}"), 20)?;
                let blocked = Event::PlayerBlocked { origin: "test".into(), user_id: player };
                notify::send(conn, &blocked)?;
                Ok(reserved)
            })
        })
        .collect();
    drop(release);
    holding.await.unwrap();
    for write in writes {
        write.await.unwrap().expect("fits under the player's 100");
    }
    quiet(&store).await;
    let statements = statements.lock().unwrap().clone();
    let closing = statements.iter().filter(|q| q.starts_with("WITH held AS")).count();
    let apart = statements
        .iter()
        .filter(|q| !q.starts_with("WITH held AS") && (q.starts_with("INSERT INTO") || q.contains("pg_notify(")))
        .count();
    assert_eq!((closing, apart), (1, 0), "one statement for holds, ledger rows and notifications: {statements:#?}");

    let mut told = Vec::new();
    for _ in 0..500 {
        told.extend(listener.notifications_iter().map(|n| n.expect("notification").payload));
        if told.len() >= 3 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let told: Vec<Event> = told.iter().map(|p| serde_json::from_str(p).expect("an event")).collect();
    let players: Vec<i64> = told
        .iter()
        .map(|e| match e {
            Event::PlayerBlocked { user_id, .. } => *user_id,
            other => panic!("unexpected event {other:?}"),
        })
        .collect();
    assert_eq!(players, [1, 2, 3], "told once each, in the batch's order");
    let targets = store.run(hold_targets).await.unwrap();
    assert_eq!(targets, ["first:1", "first:2", "first:3", "second:1", "second:2", "second:3"]);
    for player in 1..=3 {
        assert_eq!(store.run(move |conn| day_of(conn, player)).await.unwrap(), (0, 30));
    }
    assert_eq!(store.run(studio_day).await.unwrap(), (0, 90), "the studio's reservations, summed");
    drop(db);
}

/// The stored limits are read once per batch: a project's limit changed in the batch holds for
/// the reservations after it in the same batch.
async fn a_limit_changed_in_a_batch_holds_for_the_reservations_after_it(db: Db) {
    use lorewire::store::usage as ledger;
    let (_db, store) = open_store(db).await;
    let seed = lorewire::limits::seed_row(&seed(), now());
    store.write(move |conn| ledger::seed_limits(conn, &seed)).await.unwrap();
    let for_project = |target: &'static str, tokens: i64| {
        store.write(move |conn| {
            let spend = Spend {
                user_id: limits::SERVER,
                project: Some("p"),
                model: "m",
                target,
                prompt_tokens: tokens,
                output_tokens: 0,
            };
            limits::reserve(conn, &self::seed(), &spend, now())
        })
    };
    let (release, holding) = hold_writer(&store).await;
    let first = for_project("run:1", 50);
    let limited = store.write(|conn| ledger::put_project(conn, "p", (Some(Some(60)), None), now()));
    let second = for_project("run:2", 20);
    drop(release);
    holding.await.unwrap();
    assert_eq!(first.await.unwrap(), Ok(()), "no limit yet");
    limited.await.unwrap();
    let refused = second.await.unwrap().expect_err("50 + 20 over the new 60");
    assert_eq!(refused.level, Level::Project);
}

/// Waits (once: not when the batch runs again) until `other` says it got as far, after saying
/// so itself; then lingers `linger`.
fn meet(first: &AtomicBool, tell: &Mutex<mpsc::Sender<()>>, other: &Mutex<mpsc::Receiver<()>>, linger: Duration) {
    if first.swap(false, Ordering::SeqCst) {
        let _ = tell.lock().unwrap().send(());
        other.lock().unwrap().recv_timeout(Duration::from_secs(10)).expect("the other batch got as far");
        std::thread::sleep(linger);
    }
}

/// Two processes' batches (two stores on one database), each holding a player's ledger row and
/// settling the other player's call: at their commits each wants the row the other holds.
/// PostgreSQL ends the deadlock by failing one commit; that batch runs again and both commit.
#[actix_web::test]
async fn postgres_two_batches_crossing_at_their_commits_both_commit() {
    let (db, a) = open_store(Db::Postgres).await;
    let url = db.url.clone();
    let b = actix_web::rt::task::spawn_blocking(move || Store::connect(&url).expect("store")).await.unwrap();
    a.write(|conn| reserve_for(conn, 1, "t1", 10)).await.unwrap().unwrap();
    a.write(|conn| reserve_for(conn, 2, "t2", 10)).await.unwrap().unwrap();

    let (a_tells, a_told) = mpsc::channel();
    let (b_tells, b_told) = mpsc::channel();
    let (a_tells, a_told) = (Arc::new(Mutex::new(a_tells)), Arc::new(Mutex::new(a_told)));
    let (b_tells, b_told) = (Arc::new(Mutex::new(b_tells)), Arc::new(Mutex::new(b_told)));
    let (a_first, b_first) = (Arc::new(AtomicBool::new(true)), Arc::new(AtomicBool::new(true)));

    let (release_a, holding_a) = hold_writer(&a).await;
    let (release_b, holding_b) = hold_writer(&b).await;
    // A holds player 1's row, B player 2's; each settles the other's call (kept for the commit).
    let a_writes = vec![
        a.write(|conn| reserve_for(conn, 1, "a1", 5).map(|r| r.is_ok())).boxed_local(),
        a.write(|conn| limits::settle(conn, "t2", Used::Nothing, now()).map(|_| true)).boxed_local(),
        a.write(move |_| {
            meet(&a_first, &a_tells, &b_told, Duration::ZERO);
            Ok(true)
        })
        .boxed_local(),
    ];
    let b_writes = vec![
        b.write(|conn| reserve_for(conn, 2, "b2", 5).map(|r| r.is_ok())).boxed_local(),
        b.write(|conn| limits::settle(conn, "t1", Used::Nothing, now()).map(|_| true)).boxed_local(),
        // B commits once A waits at its commit on player 2's row.
        b.write(move |_| {
            meet(&b_first, &b_tells, &a_told, Duration::from_millis(300));
            Ok(true)
        })
        .boxed_local(),
    ];
    drop((release_a, release_b));
    holding_a.await.unwrap();
    holding_b.await.unwrap();
    let (a_answers, b_answers) =
        futures_util::future::join(futures_util::future::join_all(a_writes), futures_util::future::join_all(b_writes))
            .await;
    for (n, answer) in a_answers.into_iter().chain(b_answers).enumerate() {
        assert!(answer.unwrap_or_else(|e| panic!("write {n} failed: {e}")), "write {n} reserved");
    }
    assert_eq!(a.run(|conn| day_of(conn, 1)).await.unwrap(), (0, 5));
    assert_eq!(a.run(|conn| day_of(conn, 2)).await.unwrap(), (0, 5));
    assert_eq!(a.run(studio_day).await.unwrap(), (0, 10));
    let mut holds = a.run(hold_targets).await.unwrap();
    holds.sort();
    assert_eq!(holds, ["a1", "b2"]);
    drop(db);
}
