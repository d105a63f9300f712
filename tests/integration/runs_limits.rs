//! Generation runs at their limits: budget bookkeeping under concurrency (reconcile while other
//! processes reserve, settlements that would go below zero).

use std::time::Duration;

use diesel::RunQueryDsl;
use lorewire::store::{billing, write_tx, Store};

use crate::common::{Db, TestDb};

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

both_backends!(reconcile_keeps_reservations_committed_meanwhile,);
