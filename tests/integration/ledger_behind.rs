//! The usage ledger in the writer's batch: settlements and holds are kept aside and written at
//! the commit, yet every reservation of the batch decides by them as if they had been written,
//! and a write that fails after writing its predecessors' changes early takes none of them
//! along (they are written at the commit all the same).

use std::time::Duration;

use diesel::{ExpressionMethods, QueryDsl, RunQueryDsl};
use lorewire::core::usage::UsageConfig;
use lorewire::domain::limits::{Level, Refusal};
use lorewire::limits::{self, Spend, Used};
use lorewire::store::schema::{usage_days, usage_holds};
use lorewire::store::{DbConn, Store, StoreError, StoreResult};

use crate::common::{Db, TestDb};

both_backends!(
    a_batch_reserves_by_the_settlements_it_kept_aside_and_a_failed_write_loses_none_of_them,
    holds_kept_aside_are_settled_in_their_own_batch,
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

/// Queues a write that holds the writer until the returned sender is dropped, and waits until
/// it runs: whatever is queued after it is taken as one batch.
async fn hold_writer(
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
    drop(release);
    holding.await.unwrap();
    assert_eq!(reserved.await.unwrap(), Ok(()));
    let charged = charged.await.unwrap();
    assert_eq!(charged.player.0, 30, "the hold was found and charged as held");
    assert_eq!(other.await.unwrap(), Ok(()));
    // At the commit: the first player's row, whose reservations fall, and the studio's, new
    // today, written together.
    assert_eq!(store.run(player_day).await.unwrap(), (30, 0));
    assert_eq!(store.run(|conn| day_of(conn, PLAYER + 1)).await.unwrap(), (0, 20));
    assert_eq!(store.run(studio_day).await.unwrap(), (30, 20));
    assert_eq!(store.run(hold_targets).await.unwrap(), vec!["call:b".to_owned()]);
}
