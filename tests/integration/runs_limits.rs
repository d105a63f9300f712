//! Generation runs at their limits: budget bookkeeping under concurrency (reconcile while other
//! processes reserve, concurrent first budgets, settlements that would go below zero).

use std::time::Duration;

use diesel::RunQueryDsl;
use lorewire::llm::providers::Provider;
use lorewire::store::{billing, write_tx, Store};
use serde_json::json;

use crate::common::{spawn_with, Db, Setup, TestApp, TestDb};

async fn app_with(db: Db, provider: Provider, configure: impl FnOnce(&mut lorewire::config::Config)) -> TestApp {
    spawn_with(Setup { provider, ..Setup::new(db) }, configure).await
}

/// A store of the test's own on a migrated database.
async fn store_for(db: &TestDb) -> Store {
    let url = db.url.clone();
    actix_web::rt::task::spawn_blocking(move || {
        let store = Store::connect(&url).unwrap();
        store.migrate().unwrap();
        store
    })
    .await
    .unwrap()
}

fn now() -> chrono::NaiveDateTime {
    chrono::Utc::now().naive_utc()
}

/// Another process admits a run (its budget reservation and its run row in one transaction)
/// while this one reconciles at start: the reservation committed meanwhile is kept. Then a
/// settlement releasing more than is reserved leaves zero instead of failing.
async fn reconcile_keeps_reservations_committed_meanwhile(db: Db) {
    let test_db = actix_web::rt::task::spawn_blocking(move || TestDb::new(db)).await.unwrap();
    let store = store_for(&test_db).await;
    store
        .run(|conn| {
            billing::put_budget(conn, "p1", 1_000_000, now())?;
            insert_active_run(conn, "r-earlier", 3_000)?;
            // Drift to be repaired: the budget holds nothing for the run above.
            diesel::sql_query("UPDATE budgets SET reserved_micros = 0").execute(conn)?;
            Ok(())
        })
        .await
        .unwrap();

    let (held_tx, held_rx) = std::sync::mpsc::channel();
    let other = store.clone();
    let admitting = std::thread::spawn(move || {
        other.run_blocking(|conn| {
            write_tx(conn, |conn| {
                assert!(billing::reserve(conn, "p1", 5_000, now())?);
                insert_active_run(conn, "r-meanwhile", 5_000)?;
                held_tx.send(()).unwrap();
                // Commits only after the reconciliation has begun.
                std::thread::sleep(Duration::from_millis(500));
                Ok(())
            })
        })
    });
    actix_web::rt::task::spawn_blocking(move || held_rx.recv().unwrap()).await.unwrap();
    let reconciled = store.run(|conn| billing::reconcile(conn, now())).await;
    admitting.join().unwrap().unwrap();
    assert_eq!(reconciled.unwrap(), 1);
    let budget = store.run(|conn| billing::budget(conn, "p1")).await.unwrap().unwrap();
    assert_eq!(budget.reserved_micros, 8_000, "both runs' reservations are held");

    store.run(|conn| billing::settle(conn, "p1", 9_000, 1_200, now())).await.unwrap();
    let budget = store.run(|conn| billing::budget(conn, "p1")).await.unwrap().unwrap();
    assert_eq!(budget.reserved_micros, 0, "released down to zero, not below");
    assert_eq!(budget.spent_micros, 1_200);
}

/// A queued run holding `reserved` on project p1, written as another process would.
fn insert_active_run(
    conn: &mut lorewire::store::DbConn,
    run_id: &str,
    reserved: i64,
) -> lorewire::store::StoreResult<()> {
    diesel::sql_query(format!(
        "INSERT INTO runs (run_id, project_id, action, input, model, dedup_key, status, reserved_micros, \
         created_at, updated_at) VALUES ('{run_id}', 'p1', 'WRITE', 'x', 'm', 'k-{run_id}', 'queued', {reserved}, \
         CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
    ))
    .execute(conn)?;
    Ok(())
}

/// Concurrent first `PUT /admin/api/budgets/{project}`: every one answers 200, and the budget
/// ends with one of the limits sent.
async fn concurrent_first_budget_puts_all_succeed(db: Db) {
    let app = app_with(db, Provider::Anthropic, |_| {}).await;
    for round in 0..5 {
        let path = format!("/admin/api/budgets/race{round}");
        let puts = (1..=4).map(|i| app.admin_put(&path, json!({"limit_usd": f64::from(i)})));
        for (status, body) in futures_util::future::join_all(puts).await {
            assert_eq!(status, 200, "{body}");
        }
        let (status, budget) = app.admin_get(&path).await;
        assert_eq!(status, 200, "{budget}");
        let limit = budget["limit_usd"].as_f64().unwrap();
        assert!([1.0, 2.0, 3.0, 4.0].contains(&limit), "{budget}");
        assert_eq!(budget["reserved_usd"], 0.0);
    }
}

both_backends!(reconcile_keeps_reservations_committed_meanwhile, concurrent_first_budget_puts_all_succeed,);
