//! One batch of the writer's, in one transaction: the requests run one after another without
//! savepoints; at the first that does not succeed all is rolled back and the batch runs again
//! with each request in a savepoint of its own, so a failure fails only its own request. Just
//! before the commit what the batch kept aside is written ([`behind`]) and, on PostgreSQL
//! without an after-commit hook, the batch's notifications are sent in one statement.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;
use std::time::Duration;

use diesel::connection::TransactionManager;

use super::ahead::{self, Ahead};
use super::{begin_write, behind, memo, notify, BatchFailed, DbConn, Failure, StoreError, StoreResult, Tm};

/// How a request's work ended inside its savepoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ran {
    Ok,
    Failed,
    /// Lost a lock race with another transaction: worth one more try on its own.
    Raced,
}

/// One queued write: the work, what it answered, and where the answer goes.
pub(super) trait Request: Send {
    fn run(&mut self, conn: &mut DbConn) -> Ran;
    /// The work panicked; its answer is a failure of lorewire's own.
    fn panicked(&mut self);
    /// What it will write, when it is a content write that may be made ahead of its batch.
    fn ahead(&self) -> Option<&Ahead> {
        None
    }
    /// The batch is over: `Ok` when it committed, else why it did not.
    fn answer(self: Box<Self>, batch: Result<(), &BatchFailed>);
}

pub(super) type Done = Vec<Box<dyn Request>>;

/// How a batch run without savepoints ended.
enum Together {
    /// Every request succeeded: committed, or the commit failed.
    Ended(Result<Done, (BatchFailed, Done)>),
    /// A request failed, lost a race or panicked: the transaction was rolled back and begun
    /// again, and the batch is to be run once more, each request in a savepoint.
    Again(Vec<Box<dyn Request>>),
}

/// The begun transaction over `batch`. Answers the batch's end with the requests to answer, and
/// the requests that lost a lock race (left out of the commit, to be run again alone).
///
/// With company, the requests first run one after another without savepoints (two round trips
/// fewer each on PostgreSQL); at the first that does not succeed, all is rolled back and the
/// batch runs again with each request in a savepoint of its own, so a failure still fails
/// only its own request.
pub(super) fn run_batch(
    conn: &mut DbConn,
    batch: Vec<Box<dyn Request>>,
    announce: bool,
) -> (Result<Done, (BatchFailed, Done)>, Done) {
    // A new item's request alone is made ahead too: its item, job and reservation in one statement.
    let ahead_alone =
        matches!(conn, DbConn::Pg(_)) && batch.first().and_then(|r| r.ahead()).is_some_and(ahead::worth_alone);
    let batch = if batch.len() > 1 || ahead_alone {
        match run_together(conn, batch, announce) {
            Together::Ended(ended) => return (ended, Vec::new()),
            Together::Again(batch) => batch,
        }
    } else {
        batch
    };
    run_each(conn, batch, announce, true)
}

/// Whether `e` is a lock race lost to another transaction (a deadlock, a serialization failure).
fn lost_race(e: &StoreError) -> bool {
    matches!(e, StoreError::Query(_)) && e.failure() == Failure::Overloaded
}

/// Commits the batch's transaction: first what it kept aside is written ([`behind`]) and, when
/// `announce`, the collected notifications sent (on PostgreSQL in one statement).
fn commit_batch(conn: &mut DbConn, announce: bool, made_ahead: usize) -> StoreResult<()> {
    let payloads = if announce { notify::collected() } else { Vec::new() };
    let wrote_ledger = behind::flush(conn, &payloads)?;
    if wrote_ledger {
        hold_for_test(made_ahead);
    }
    Ok(Tm::commit_transaction(conn)?)
}

/// For the tests that kill the process in the middle of a batch: `LOREWIRE_TEST_HOLD_COMMIT`,
/// a file. Holding `ahead`, it holds only a batch that made writes ahead of it ([`ahead`]).
fn test_hold() -> Option<&'static std::path::Path> {
    static HOLD: OnceLock<Option<std::path::PathBuf>> = OnceLock::new();
    HOLD.get_or_init(|| std::env::var_os("LOREWIRE_TEST_HOLD_COMMIT").map(Into::into)).as_deref()
}

/// While the file [`test_hold`] names exists, a batch that wrote ledger rows (and, when the file
/// says `ahead`, made `made_ahead` writes ahead of it) waits before its commit until the file
/// is gone, having created `<file>.held` to say so.
fn hold_for_test(made_ahead: usize) {
    let Some(path) = test_hold() else { return };
    match std::fs::read(path) {
        Ok(says) if says == b"ahead" && made_ahead == 0 => return,
        Ok(_) => {}
        Err(_) => return,
    }
    let mut held = path.as_os_str().to_owned();
    held.push(".held");
    if let Err(e) = std::fs::write(&held, b"") {
        tracing::error!(error = %e, "could not say that the commit is held");
    }
    while path.exists() {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `batch` in the begun transaction without savepoints ([`run_batch`]).
fn run_together(conn: &mut DbConn, mut batch: Vec<Box<dyn Request>>, announce: bool) -> Together {
    let mut succeeded = true;
    let mut made_ahead = 0;
    if let DbConn::Pg(_) = conn {
        let asks: Vec<&Ahead> = batch.iter().filter_map(|r| r.ahead()).collect();
        match ahead::run(conn, &asks, asks.len() == batch.len()) {
            Ok(made) => made_ahead = made,
            Err(e) => {
                tracing::warn!(error = %e, "a batch's writes could not be made ahead of it; it runs each in a savepoint");
                succeeded = false;
            }
        }
    }
    // A request alone that fails is answered as it would be run alone: rolled back, not run again.
    let mut failed_alone = false;
    let alone = batch.len() == 1;
    for request in batch.iter_mut() {
        if !succeeded {
            break;
        }
        match run_one(conn, &mut **request, 1) {
            Ok(Ran::Ok) => {}
            Ok(Ran::Failed | Ran::Raced) => {
                failed_alone = alone;
                succeeded = false;
            }
            Err(_) => succeeded = false,
        }
    }
    // What was made ahead and not taken would commit a write nobody asked for (a job no
    // worker runs, an item's end its job did not commit).
    if succeeded && ahead::left() > 0 {
        tracing::error!(
            writes = ahead::left(),
            "writes made ahead of a batch were not taken; it runs each in a savepoint"
        );
        succeeded = false;
    }
    ahead::forget();
    if succeeded {
        match commit_batch(conn, announce, made_ahead) {
            Ok(()) => {
                notify::ended(true);
                return Together::Ended(Ok(batch));
            }
            // What the batch kept for its commit (the ledger's rows) lost a lock race with
            // another transaction: the batch runs again, as when one of its requests lost one.
            Err(e) if lost_race(&e) => tracing::warn!(error = %e, "a batch's commit lost a lock race; it runs again"),
            Err(e) => {
                notify::ended(false);
                let _ = Tm::rollback_transaction(conn);
                return Together::Ended(Err((BatchFailed::of(&e), batch)));
            }
        }
    }
    notify::ended(false);
    memo::forget();
    behind::truncate(behind::Mark::default());
    if failed_alone {
        return Together::Ended(match Tm::rollback_transaction(conn) {
            Ok(()) => Ok(batch),
            Err(e) => Err((BatchFailed::of(&StoreError::from(e)), batch)),
        });
    }
    let again = Tm::rollback_transaction(conn).map_err(StoreError::from).and_then(|()| begin_write(conn));
    match again {
        Ok(()) => {
            notify::begun();
            Together::Again(batch)
        }
        Err(e) => Together::Ended(Err((BatchFailed::of(&e), batch))),
    }
}

/// `batch` in the begun transaction, each request in a savepoint of its own when it has company.
/// A commit that loses a lock race runs the batch once more when `again`.
fn run_each(
    conn: &mut DbConn,
    batch: Vec<Box<dyn Request>>,
    announce: bool,
    again: bool,
) -> (Result<Done, (BatchFailed, Done)>, Done) {
    let alone = batch.len() == 1;
    let mut done: Done = Vec::with_capacity(batch.len());
    let mut raced: Done = Vec::new();
    let mut broken: Option<BatchFailed> = None;
    let mut last = Ran::Ok;
    for mut request in batch {
        if broken.is_some() {
            done.push(request);
            continue;
        }
        let ran = if alone { run_one(conn, &mut *request, 1) } else { run_in_savepoint(conn, &mut *request) };
        match ran {
            Err(e) => {
                // The database ended the whole transaction (SQLite does on a full disk).
                broken = Some(BatchFailed::of(&e));
                done.push(request);
            }
            Ok(Ran::Raced) if !alone => raced.push(request),
            Ok(ran) => {
                last = ran;
                done.push(request);
            }
        }
    }
    // Alone, a failed request is the transaction's end: nothing of it may stay.
    let keep = broken.is_none() && !(alone && last != Ran::Ok);
    let ended =
        if keep { commit_batch(conn, announce, 0) } else { Tm::rollback_transaction(conn).map_err(StoreError::from) };
    notify::ended(keep && ended.is_ok());
    let failed = match (broken, ended) {
        (Some(failed), _) => failed,
        (None, Ok(())) => return (Ok(done), raced),
        (None, Err(e)) => {
            if keep {
                let _ = Tm::rollback_transaction(conn);
            }
            if again && keep && lost_race(&e) {
                tracing::warn!(error = %e, "a batch's commit lost a lock race; it runs again");
                memo::forget();
                behind::truncate(behind::Mark::default());
                match begin_write(conn) {
                    Ok(()) => {
                        notify::begun();
                        done.extend(raced);
                        return run_each(conn, done, announce, false);
                    }
                    Err(e) => BatchFailed::of(&e),
                }
            } else {
                BatchFailed::of(&e)
            }
        }
    };
    done.extend(raced);
    (Err((failed, done)), Vec::new())
}

/// Runs `request` in a savepoint: released when it succeeded, rolled back when it did not.
fn run_in_savepoint(conn: &mut DbConn, request: &mut dyn Request) -> StoreResult<Ran> {
    let mark = behind::mark();
    Tm::begin_transaction(conn)?;
    notify::begun();
    let ran = run_one(conn, request, 2);
    let ended = match ran {
        Ok(Ran::Ok) => Tm::commit_transaction(conn),
        Ok(Ran::Failed | Ran::Raced) | Err(_) => {
            memo::forget();
            behind::truncate(mark);
            Tm::rollback_transaction(conn)
        }
    };
    notify::ended(matches!(ran, Ok(Ran::Ok)) && ended.is_ok());
    ended?;
    ran
}

/// Runs `request` with `open` transactions around it; closes what a panic left open beyond them.
fn run_one(conn: &mut DbConn, request: &mut dyn Request, open: u32) -> StoreResult<Ran> {
    let ran = match catch_unwind(AssertUnwindSafe(|| request.run(conn))) {
        Ok(ran) => ran,
        Err(_) => {
            tracing::error!("a write panicked; it is rolled back");
            memo::forget();
            request.panicked();
            Ran::Failed
        }
    };
    notify::unwind_to(open as usize);
    unwind_to(conn, open)?;
    Ok(ran)
}

/// How many transactions are open on `conn` (`None` when its manager is broken).
pub(super) fn depth(conn: &mut DbConn) -> Option<u32> {
    Tm::transaction_manager_status_mut(conn).transaction_depth().ok().map(|d| d.map_or(0, |d| d.get()))
}

/// Rolls back what a request left open beyond `base` transactions.
fn unwind_to(conn: &mut DbConn, base: u32) -> StoreResult<()> {
    while depth(conn).ok_or(StoreError::Query(diesel::result::Error::BrokenTransactionManager))? > base {
        Tm::rollback_transaction(conn)?;
    }
    Ok(())
}
