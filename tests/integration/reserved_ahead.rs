//! PostgreSQL reserves the calls of a writer's batch's new items ahead of the batch, in the
//! statement that makes the items (`store::ahead`, `store::place`, `store::reserving`): each
//! ledger row once, by the sum of what the batch reserves there, where it fits; each request
//! takes its own reservation in its place. A request whose rows would not take the sum is left
//! to decide in its place, as before. A content job's end takes its call's holds in the
//! statement that ends it.

use std::sync::Arc;

use chrono::NaiveDateTime;
use diesel::{ExpressionMethods, QueryDsl, RunQueryDsl};
use lorewire::core::usage::UsageConfig;
use lorewire::domain::content::{ContentKind, ContentStatus};
use lorewire::domain::limits::{Level, Refusal};
use lorewire::domain::runs::Usage;
use lorewire::limits::{self, Spend, Used};
use lorewire::store::ahead::{Ahead, Finishing, Reserving};
use lorewire::store::content::{self, Finish, Requested};
use lorewire::store::jobs::Ended;
use lorewire::store::schema::{jobs, usage_days, usage_holds};
use lorewire::store::{DbConn, Store, StoreResult};

use crate::made_ahead::{asked, claimed, open_store, WORKER};
use crate::writer::{hold_writer, quiet, watch};

/// The statement that makes new items (and reserves their calls).
const PLACE: &str = "WITH v AS (SELECT * FROM unnest($1::text[]";

/// Each item's call reserves this many tokens.
const BOUND: i64 = 20;

fn t0() -> NaiveDateTime {
    chrono::Utc::now().naive_utc()
}

fn limits_with(studio: Option<i64>) -> UsageConfig {
    UsageConfig {
        studio_daily_micros: None,
        studio_daily_tokens: studio,
        player_daily_micros: None,
        player_daily_tokens: Some(100),
        player_llm_rate: "600/1m".parse().unwrap(),
    }
}

fn spend(player: i64, target: &str, tokens: i64) -> Spend<'_> {
    Spend { user_id: player, project: None, model: "m", target, prompt_tokens: tokens, output_tokens: 0 }
}

/// A request for quest `subject_id` by `player`, claimed, whose new item reserves its call as
/// the content service's requests do (told ahead, then in its place); `planned` is the bound
/// told ahead (the call's own, unless a test makes them differ).
fn ask(
    store: &Store,
    usage: UsageConfig,
    (subject_id, player): (i64, i64),
    planned: i64,
    at: NaiveDateTime,
) -> impl std::future::Future<Output = StoreResult<Result<(), Refusal>>> {
    ask_or_fail(store, usage, (subject_id, player), planned, at, false)
}

/// [`ask`]; with `fail`, a refused reservation fails the write, as the content service's does.
fn ask_or_fail(
    store: &Store,
    usage: UsageConfig,
    (subject_id, player): (i64, i64),
    planned: i64,
    at: NaiveDateTime,
    fail: bool,
) -> impl std::future::Future<Output = StoreResult<Result<(), Refusal>>> {
    let reserving =
        Reserving(Arc::new(move |conn: &mut DbConn| limits::plan(conn, &usage, &spend(player, "", planned), at)));
    let ahead = asked(subject_id, player, WORKER, at, Some(reserving));
    let write = move |conn: &mut DbConn| {
        let item = claimed(subject_id, player);
        let (requested, _) = content::request(conn, &item, at)?;
        let Requested::Created(row) = requested else { panic!("item {subject_id} not created: {requested:?}") };
        let target = format!("content:{}", row.id);
        match limits::reserve(conn, &usage, &spend(player, &target, BOUND), at)? {
            Err(refusal) if fail => Err(lorewire::store::StoreError::OverLimit(refusal)),
            reserved => Ok(reserved),
        }
    };
    store.write_ahead_for(Some(player), Some(ahead), write, |answer| answer)
}

/// (spent, reserved) tokens of a row of today.
fn row(conn: &mut DbConn, level: Level, owner: &str) -> StoreResult<(i64, i64)> {
    Ok(usage_days::table
        .filter(usage_days::level.eq(level.as_str()))
        .filter(usage_days::owner.eq(owner))
        .select((usage_days::spent_tokens, usage_days::reserved_tokens))
        .first(conn)?)
}

async fn reserved_at(store: &Store, level: Level, owner: &str) -> i64 {
    let owner = owner.to_owned();
    store.run(move |conn| row(conn, level, &owner)).await.unwrap().1
}

fn holds(conn: &mut DbConn) -> StoreResult<i64> {
    Ok(usage_holds::table.count().get_result(conn)?)
}

/// Runs `asks` ((subject, player)) in one batch; their answers and the statements it ran.
async fn one_batch(store: &Store, usage: UsageConfig, asks: &[(i64, i64)]) -> (Vec<Result<(), Refusal>>, Vec<String>) {
    told(store, usage, asks, BOUND).await
}

/// [`one_batch`], each request telling ahead a bound of `planned`.
async fn told(
    store: &Store,
    usage: UsageConfig,
    asks: &[(i64, i64)],
    planned: i64,
) -> (Vec<Result<(), Refusal>>, Vec<String>) {
    let statements = watch(store).await;
    let (release, holding) = hold_writer(store).await;
    let at = t0();
    let answers: Vec<_> = asks.iter().map(|&ask_for| ask(store, usage, ask_for, planned, at)).collect();
    drop(release);
    holding.await.unwrap();
    let mut answered = Vec::new();
    for answer in answers {
        answered.push(answer.await.unwrap());
    }
    quiet(store).await;
    let statements = statements.lock().unwrap().clone();
    (answered, statements)
}

fn count(statements: &[String], starts: &str) -> usize {
    statements.iter().filter(|q| q.starts_with(starts)).count()
}

/// Each player's row there (a first call in a batch of its own).
async fn open_rows(store: &Store, usage: UsageConfig, players: &[(i64, i64)]) {
    for &(subject, player) in players {
        one_batch(store, usage, &[(subject, player)]).await.0[0].clone().expect("the first call fits");
    }
}

/// Four new items of three players in one batch: one statement reserves them all, each row
/// once by its sum; every request answers its reservation made, with its hold.
#[actix_web::test]
async fn postgres_a_batchs_reservations_are_made_in_one_statement() {
    let (_db, store) = open_store().await;
    let usage = limits_with(None);
    open_rows(&store, usage, &[(100, 1), (101, 2), (102, 3)]).await;
    let (answers, statements) = one_batch(&store, usage, &[(1, 1), (2, 2), (3, 1), (4, 3)]).await;
    assert_eq!(answers, [Ok(()), Ok(()), Ok(()), Ok(())]);
    assert_eq!(count(&statements, PLACE), 1, "one statement for the items and their reservations: {statements:#?}");
    assert_eq!(count(&statements, "UPDATE \"usage_days\""), 0, "none in place: {statements:#?}");
    assert_eq!(reserved_at(&store, Level::Player, "1").await, 3 * BOUND);
    assert_eq!(reserved_at(&store, Level::Player, "2").await, 2 * BOUND);
    assert_eq!(reserved_at(&store, Level::Player, "3").await, 2 * BOUND);
    assert_eq!(reserved_at(&store, Level::Studio, "").await, 7 * BOUND);
    assert_eq!(store.run(holds).await.unwrap(), 7);
}

/// Player 1 has room for one more call, not two: its row does not take the batch's sum, so its
/// requests decide in their places (the first fits, the second is refused); the studio's
/// limited row took player 1's share too and gives it back; player 2's call is made ahead.
/// Three rounds, each from where the last left.
#[actix_web::test]
async fn postgres_a_reservation_that_does_not_fit_ahead_is_decided_by_its_request() {
    let (_db, store) = open_store().await;
    let usage = limits_with(Some(10_000));
    for round in 0..3_i64 {
        let (full, other) = (10 + 2 * round, 11 + 2 * round);
        // 80 of `full`'s 100 held: room for one call of 20.
        open_rows(&store, usage, &[(1000 * round + 900, full), (1000 * round + 901, full), (1000 * round + 902, full)])
            .await;
        open_rows(&store, usage, &[(1000 * round + 903, full), (1000 * round + 904, other)]).await;
        let studio_before = reserved_at(&store, Level::Studio, "").await;
        let base = 1000 * round;
        let (answers, statements) =
            one_batch(&store, usage, &[(base + 1, full), (base + 2, other), (base + 3, full)]).await;
        assert_eq!(answers[0], Ok(()), "round {round}: the first fits");
        assert_eq!(answers[1], Ok(()), "round {round}");
        let refused = answers[2].clone().expect_err("the second is over the player's 100");
        assert_eq!(refused.level, Level::Player);
        assert_eq!(count(&statements, PLACE), 1, "round {round}: tried ahead: {statements:#?}");
        let in_place = count(&statements, "UPDATE \"usage_days\"");
        let taken_back = count(&statements, "UPDATE usage_days d SET reserved_tokens = d.reserved_tokens - s.tokens");
        // In place: the first fits; the second is refused, opens the row (as a day's first call
        // would) and is refused again.
        assert_eq!((in_place, taken_back), (3, 1), "round {round}: {statements:#?}");
        assert_eq!(reserved_at(&store, Level::Player, &full.to_string()).await, 100, "round {round}");
        assert_eq!(reserved_at(&store, Level::Player, &other.to_string()).await, 2 * BOUND, "round {round}");
        assert_eq!(
            reserved_at(&store, Level::Studio, "").await,
            studio_before + 2 * BOUND,
            "round {round}: the studio holds the two calls made, not the refused one"
        );
    }
}

/// Reservations made ahead that their requests do not take (told a bound other than their
/// own) are never committed: the batch runs again with each write in its place, and every row
/// holds exactly what its requests reserved.
#[actix_web::test]
async fn postgres_reservations_made_ahead_and_not_taken_are_not_committed() {
    let (_db, store) = open_store().await;
    let usage = limits_with(None);
    open_rows(&store, usage, &[(100, 1), (101, 2)]).await;
    let (answers, statements) = told(&store, usage, &[(1, 1), (2, 2), (3, 1)], BOUND + 7).await;
    assert_eq!(answers, [Ok(()), Ok(()), Ok(())]);
    assert_eq!(count(&statements, PLACE), 4, "made ahead once, then each in its place: {statements:#?}");
    assert!(count(&statements, "ROLLBACK") >= 1, "and rolled back: {statements:#?}");
    assert_eq!(reserved_at(&store, Level::Player, "1").await, 3 * BOUND);
    assert_eq!(reserved_at(&store, Level::Player, "2").await, 2 * BOUND);
    assert_eq!(reserved_at(&store, Level::Studio, "").await, 5 * BOUND);
    assert_eq!(store.run(holds).await.unwrap(), 5);
}

/// Job `job_id`'s item `content_id` ready, its holds (of `target`) taken with the end.
fn ready<'a>(job_id: i64, content_id: i64, target: &'a str) -> Finish<'a> {
    Finish {
        origin: "test",
        job_id,
        worker: WORKER,
        content_id,
        status: ContentStatus::Ready,
        fields: "{}",
        model: Some("m"),
        reason: None,
        settles: Some(target),
    }
}

/// The running jobs: (job id, item id, player).
fn running(conn: &mut DbConn) -> StoreResult<Vec<(i64, i64, i64)>> {
    Ok(jobs::table.order(jobs::id.asc()).select((jobs::id, jobs::target_id, jobs::player_id)).load(conn)?)
}

/// Ends `jobs` ((job id, item id, player)) in one batch as a content job does: the item ready,
/// its call's 10 tokens settled. The statements the batch ran.
async fn end_all(store: &Store, jobs: &[(i64, i64, i64)]) -> Vec<String> {
    let statements = watch(store).await;
    let (release, holding) = hold_writer(store).await;
    let at = t0();
    let ends: Vec<_> = jobs
        .iter()
        .map(|&(job_id, content_id, player)| {
            let target = format!("content:{content_id}");
            let ahead = Ahead::Finish(Finishing {
                kind: ContentKind::Quest,
                subject_id: content_id,
                owner: 0,
                content_id,
                job_id,
                worker: WORKER.to_owned(),
                status: ContentStatus::Ready,
                fields: "{}".into(),
                model: Some("m".into()),
                reason: None,
                at,
                settles: Some(target.clone()),
            });
            let write = move |conn: &mut DbConn| {
                let ended = content::finish(conn, &ready(job_id, content_id, &target), at)?;
                assert!(matches!(ended, Ended::Done(Some(_))), "job {job_id} ended: {ended:?}");
                let used = Used::Reported(Usage { input_tokens: 10, ..Usage::default() });
                limits::settle_later(conn, &target, player, used, Some("m"), at)
            };
            store.write_ahead_for(Some(player), Some(ahead), write, |settled| settled)
        })
        .collect();
    drop(release);
    holding.await.unwrap();
    for end in ends {
        assert_eq!(end.await.unwrap().charged().player, (10, 0), "settled by what it used");
    }
    quiet(store).await;
    let statements = statements.lock().unwrap().clone();
    statements
}

/// Content jobs ended in a batch take their calls' holds in the statement that ends them
/// (three made ahead together, then one alone): no DELETE of holds of its own; each call is
/// settled, its reservation released and what it used spent.
#[actix_web::test]
async fn postgres_content_jobs_take_their_holds_with_their_ends() {
    let (_db, store) = open_store().await;
    let usage = limits_with(None);
    let (answers, _) = one_batch(&store, usage, &[(1, 1), (2, 2), (3, 3), (4, 1)]).await;
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    let jobs = store.run(running).await.unwrap();
    assert_eq!(jobs.len(), 4);
    let together = end_all(&store, &jobs[..3]).await;
    let alone = end_all(&store, &jobs[3..]).await;
    for (statements, ends) in [(together, 1), (alone, 1)] {
        let ended = count(&statements, "WITH v AS (SELECT * FROM unnest($1::int8[]");
        let deletes = statements.iter().filter(|q| q.starts_with("DELETE FROM \"usage_holds\"")).count();
        assert_eq!((ended, deletes), (ends, 0), "{statements:#?}");
    }
    assert_eq!(store.run(|conn| row(conn, Level::Player, "1")).await.unwrap(), (20, 0));
    assert_eq!(store.run(|conn| row(conn, Level::Player, "2")).await.unwrap(), (10, 0));
    assert_eq!(store.run(|conn| row(conn, Level::Player, "3")).await.unwrap(), (10, 0));
    assert_eq!(store.run(|conn| row(conn, Level::Studio, "")).await.unwrap(), (40, 0));
    assert_eq!(store.run(holds).await.unwrap(), 0, "every hold taken");
}

/// An end that takes its item's holds and keeps no settlement for them does not commit: the
/// holds would stay taken and their reservation held for good.
#[actix_web::test]
async fn postgres_holds_taken_with_an_end_and_never_settled_are_not_committed() {
    let (_db, store) = open_store().await;
    let usage = limits_with(None);
    let (answers, _) = one_batch(&store, usage, &[(1, 1)]).await;
    assert_eq!(answers, [Ok(())]);
    let (job_id, content_id, _) = store.run(running).await.unwrap()[0];
    let target = format!("content:{content_id}");
    let ended = store.write(move |conn| content::finish(conn, &ready(job_id, content_id, &target), t0())).await;
    assert!(ended.is_err(), "refused at the commit: {ended:?}");
    assert_eq!(store.run(holds).await.unwrap(), 1, "the hold is there");
    assert_eq!(store.run(running).await.unwrap().len(), 1, "and the job");
    assert_eq!(reserved_at(&store, Level::Player, "1").await, BOUND);
}

/// A new item's request alone makes its item, its job and its reservation in one statement; one
/// refused fails alone, once (rolled back, not run again), and leaves nothing behind.
#[actix_web::test]
async fn postgres_a_request_alone_makes_its_item_and_reservation_in_one_statement() {
    let (_db, store) = open_store().await;
    let usage = limits_with(None);
    // 4 x 20 of the player's 100: the row there, room for one more.
    open_rows(&store, usage, &[(100, 1), (101, 1), (102, 1), (103, 1)]).await;
    let (answers, statements) = one_batch(&store, usage, &[(1, 1)]).await;
    assert_eq!(answers, [Ok(())]);
    let in_place = count(&statements, "UPDATE \"usage_days\"");
    assert_eq!((count(&statements, PLACE), in_place), (1, 0), "{statements:#?}");
    assert_eq!(reserved_at(&store, Level::Player, "1").await, 100);

    let statements = watch(&store).await;
    let refused = ask_or_fail(&store, usage, (2, 1), BOUND, t0(), true).await;
    quiet(&store).await;
    let statements = statements.lock().unwrap().clone();
    assert!(matches!(refused, Err(lorewire::store::StoreError::OverLimit(_))), "{refused:?}");
    assert_eq!((count(&statements, PLACE), count(&statements, "ROLLBACK")), (1, 1), "run once: {statements:#?}");
    assert_eq!(reserved_at(&store, Level::Player, "1").await, 100);
    assert_eq!(store.run(holds).await.unwrap(), 5);
    let items: i64 =
        store.run(|conn| Ok(lorewire::store::schema::content::table.count().get_result(conn)?)).await.unwrap();
    assert_eq!(items, 5, "the refused item was not stored");
}

/// A request alone for an item there already reads it once: the statement that would have made
/// it (and reserved its call) answers it, and nothing is reserved.
#[actix_web::test]
async fn postgres_a_request_alone_for_an_item_there_reads_it_once() {
    let (_db, store) = open_store().await;
    let usage = limits_with(None);
    open_rows(&store, usage, &[(1, 1)]).await;
    let statements = watch(&store).await;
    let at = t0();
    let reserving = Reserving(Arc::new(move |conn: &mut DbConn| limits::plan(conn, &usage, &spend(1, "", BOUND), at)));
    let ahead = asked(1, 1, WORKER, at, Some(reserving));
    let write = move |conn: &mut DbConn| {
        let item = claimed(1, 1);
        Ok(content::request(conn, &item, at)?.0)
    };
    let requested = store.write_ahead_for(Some(1), Some(ahead), write, |answer| answer).await.unwrap();
    quiet(&store).await;
    let statements = statements.lock().unwrap().clone();
    assert!(matches!(requested, Requested::Existing(_)), "{requested:?}");
    assert_eq!(count(&statements, PLACE), 1, "read once: {statements:#?}");
    assert_eq!(reserved_at(&store, Level::Player, "1").await, BOUND, "only the first call's");
}
