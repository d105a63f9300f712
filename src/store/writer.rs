//! Group commit: the one thread that writes. Every write of the process is queued here; the
//! writer takes all that is queued (up to [`MAX_BATCH`]), runs each in a savepoint of one
//! transaction (`BEGIN IMMEDIATE` on SQLite, so it never waits on a busy lock of its own
//! process), commits once, hands the committed events to the after-commit hook in order, and
//! only then answers each request.
//!
//! A request that fails rolls back its savepoint only and is answered with its own error; the
//! others of its batch commit. A batch whose commit fails (or whose transaction the database
//! aborted) answers every request in it with that failure. A request that lost a lock race
//! (a deadlock, a serialization failure) is run once more alone after its batch. A connection
//! the database dropped or refused is opened again for the next batch.
//!
//! On SQLite the writer never checkpoints the WAL itself (a checkpoint copies up to a thousand
//! pages and would hold every write behind it): a checkpointer thread with a connection of its
//! own does, [`CHECKPOINT_EVERY`] after writes committed, in `PASSIVE` mode (it never waits on
//! the writer or a reader, nor they on it).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use diesel::connection::{SimpleConnection, TransactionManager};
use prometheus::IntCounter;
use tokio::sync::oneshot;

use super::{begin_write, notify, AfterCommit, Backend, DbConn, Failure, Manager, StoreError, StoreResult, Tm};

/// The most requests one transaction carries: enough to take in every client at once, few
/// enough that the first of them is not kept waiting behind a long commit.
pub const MAX_BATCH: usize = 256;

/// How often the checkpointer looks for committed writes to copy from the WAL into the database.
pub const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);

/// How a request's work ended inside its savepoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ran {
    Ok,
    Failed,
    /// Lost a lock race with another transaction: worth one more try on its own.
    Raced,
}

/// One queued write: the work, what it answered, and where the answer goes.
trait Request: Send {
    fn run(&mut self, conn: &mut DbConn) -> Ran;
    /// The work panicked; its answer is a failure of lorewire's own.
    fn panicked(&mut self);
    /// The batch is over: `Ok` when it committed, else why it did not.
    fn answer(self: Box<Self>, batch: Result<(), &BatchFailed>);
}

/// Why a whole batch failed, handed to every request in it.
#[derive(Debug, Clone)]
pub struct BatchFailed {
    pub failure: Failure,
    pub message: String,
}

impl BatchFailed {
    fn of(e: &StoreError) -> Self {
        BatchFailed { failure: e.failure(), message: e.to_string() }
    }
}

/// A write: `f`, and `then`, which turns what `f` answered into the answer once its batch
/// committed (on the writer thread, whether or not the caller still waits).
struct Work<T, U, F, C> {
    f: F,
    then: C,
    result: Option<StoreResult<T>>,
    reply: oneshot::Sender<StoreResult<U>>,
}

impl<T, U, F, C> Request for Work<T, U, F, C>
where
    T: Send,
    U: Send,
    F: FnMut(&mut DbConn) -> StoreResult<T> + Send,
    C: FnOnce(T) -> U + Send,
{
    fn run(&mut self, conn: &mut DbConn) -> Ran {
        let result = (self.f)(conn);
        let ran = match &result {
            Ok(_) => Ran::Ok,
            Err(e @ StoreError::Query(_)) if e.failure() == Failure::Overloaded => Ran::Raced,
            Err(_) => Ran::Failed,
        };
        self.result = Some(result);
        ran
    }

    fn panicked(&mut self) {
        self.result = Some(Err(StoreError::Panicked));
    }

    fn answer(self: Box<Self>, batch: Result<(), &BatchFailed>) {
        let Work { then, result, reply, .. } = *self;
        let answer = match (batch, result) {
            (_, Some(Err(own))) => Err(own),
            // Committed whatever `then` does; a panic in it is answered as one.
            (Ok(()), Some(Ok(value))) => catch_unwind(AssertUnwindSafe(|| then(value))).map_err(|_| {
                tracing::error!("the work after a committed write panicked");
                StoreError::Panicked
            }),
            (Err(failed), _) => Err(StoreError::Batch(failed.clone())),
            (Ok(()), None) => Err(StoreError::Canceled),
        };
        // The caller may have stopped waiting (a request cancelled): the write stands anyway.
        let _ = reply.send(answer);
    }
}

/// What the writer has done, for `/metrics` (the app registers them).
#[derive(Clone)]
pub struct WriterCounters {
    /// Writes run, however they ended (one run again after losing a lock race counts twice).
    pub writes: IntCounter,
    /// Transactions the writer ran: one per batch.
    pub batches: IntCounter,
    /// Batches that failed as a whole.
    pub failed_batches: IntCounter,
}

impl WriterCounters {
    fn new() -> Self {
        let counter = |name: &str, help: &str| IntCounter::new(name, help).expect("metric");
        WriterCounters {
            writes: counter("store_writes_total", "Writes the store's writer ran"),
            batches: counter(
                "store_write_batches_total",
                "Transactions the store's writer ran (one per batch of writes)",
            ),
            failed_batches: counter("store_write_batches_failed_total", "Batches of writes that failed as a whole"),
        }
    }
}

/// The queue into the writer thread; the thread ends when the last sender is dropped.
#[derive(Clone)]
pub struct Writer {
    queue: mpsc::Sender<Box<dyn Request>>,
    counters: WriterCounters,
    /// Dropped with the last store: the checkpointer stops.
    _checkpoints: Option<mpsc::Sender<()>>,
}

impl Writer {
    /// Starts the writer thread, with a connection of its own from `manager`.
    pub fn start(manager: Manager, after_commit: Arc<OnceLock<AfterCommit>>) -> std::io::Result<Writer> {
        let (queue, requests) = mpsc::channel();
        let counters = WriterCounters::new();
        let checkpoints = match manager.backend {
            Backend::Sqlite => {
                let (stop, stopped) = mpsc::channel();
                let (manager, batches) = (manager.clone(), counters.batches.clone());
                std::thread::Builder::new()
                    .name("lorewire-checkpoint".into())
                    .spawn(move || checkpoint(&manager, &batches, &stopped))?;
                Some(stop)
            }
            Backend::Postgres => None,
        };
        let serve = Serve { manager, after_commit, conn: None, counters: counters.clone() };
        std::thread::Builder::new().name("lorewire-writer".into()).spawn(move || serve.serve(requests))?;
        Ok(Writer { queue, counters, _checkpoints: checkpoints })
    }

    pub fn counters(&self) -> &WriterCounters {
        &self.counters
    }

    /// Queues `f`; once the batch it ran in has committed, `then` turns what it answered into
    /// the answer, which arrives then (or the batch's failure does, and `then` is dropped).
    pub fn submit<T, U, F, C>(&self, f: F, then: C) -> oneshot::Receiver<StoreResult<U>>
    where
        T: Send + 'static,
        U: Send + 'static,
        F: FnMut(&mut DbConn) -> StoreResult<T> + Send + 'static,
        C: FnOnce(T) -> U + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        // A send fails only when the thread is gone: the dropped reply then answers `Canceled`.
        let _ = self.queue.send(Box::new(Work { f, then, result: None, reply }));
        answer
    }
}

struct Serve {
    manager: Manager,
    after_commit: Arc<OnceLock<AfterCommit>>,
    conn: Option<DbConn>,
    counters: WriterCounters,
}

impl Serve {
    fn serve(mut self, requests: mpsc::Receiver<Box<dyn Request>>) {
        while let Ok(first) = requests.recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match requests.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            let raced = self.commit(batch);
            // Each alone now, in its own transaction, which answers it however it ends.
            for request in raced {
                self.commit(vec![request]);
            }
        }
    }

    /// Runs `batch` in one transaction and answers it; returns the requests that lost a lock
    /// race, unanswered, when there were others in the batch (a request alone is always answered).
    fn commit(&mut self, batch: Vec<Box<dyn Request>>) -> Vec<Box<dyn Request>> {
        self.counters.batches.inc();
        self.counters.writes.inc_by(batch.len() as u64);
        let mut conn = match self.begin() {
            Ok(conn) => conn,
            Err(e) => {
                let failed = BatchFailed::of(&e);
                self.counters.failed_batches.inc();
                tracing::error!(error = %e, requests = batch.len(), "the writer could not begin a transaction");
                batch.into_iter().for_each(|r| r.answer(Err(&failed)));
                return Vec::new();
            }
        };
        let collecting = self.after_commit.get().map(|_| notify::collect());
        notify::begun();
        let (outcome, raced) = run_batch(&mut conn, batch);
        match outcome {
            Ok(done) => {
                if let Some(hook) = self.after_commit.get() {
                    let events = collecting.map(notify::Collecting::collected).unwrap_or_default();
                    if !events.is_empty() {
                        hook(events);
                    }
                }
                done.into_iter().for_each(|r| r.answer(Ok(())));
            }
            Err((failed, done)) => {
                drop(collecting);
                self.counters.failed_batches.inc();
                tracing::error!(error = %failed.message, requests = done.len(), "a batch of writes failed");
                done.into_iter().for_each(|r| r.answer(Err(&failed)));
            }
        }
        // A connection left in a broken state is opened anew next time.
        if !Tm::is_broken_transaction_manager(&mut conn) && depth(&mut conn) == Some(0) {
            self.conn = Some(conn);
        }
        raced
    }

    /// The writer's connection with a transaction begun on it. A connection kept from before
    /// that cannot begin (the database dropped it) is replaced by a new one at once.
    fn begin(&mut self) -> StoreResult<DbConn> {
        if let Some(mut conn) = self.conn.take() {
            match begin_write(&mut conn) {
                Ok(()) => return Ok(conn),
                Err(e) => tracing::warn!(error = %e, "the writer's connection failed; connecting again"),
            }
        }
        let mut conn = self.manager.establish()?;
        if let DbConn::Sqlite(c) = &mut conn {
            // The checkpointer's job (see the module's doc).
            c.batch_execute("PRAGMA wal_autocheckpoint = 0")?;
        }
        begin_write(&mut conn)?;
        Ok(conn)
    }
}

/// The checkpointer (SQLite): every [`CHECKPOINT_EVERY`] that saw a batch, a passive
/// checkpoint on a connection of its own; ends when the store is gone.
fn checkpoint(manager: &Manager, batches: &IntCounter, stop: &mpsc::Receiver<()>) {
    let mut conn: Option<DbConn> = None;
    let mut seen = batches.get();
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY) {
        if batches.get() == seen {
            continue;
        }
        seen = batches.get();
        let opened = conn.take().map_or_else(|| manager.establish(), Ok);
        // A connection that failed is opened anew next time.
        match opened.and_then(|mut c| Ok(c.batch_execute("PRAGMA wal_checkpoint(PASSIVE)").map(|()| c)?)) {
            Ok(c) => conn = Some(c),
            Err(e) => tracing::warn!(error = %e, "could not checkpoint the database's write-ahead log"),
        }
    }
}

type Done = Vec<Box<dyn Request>>;

/// The begun transaction over `batch`, each request in a savepoint of its own when it has company.
/// Answers the batch's end with the requests to answer, and the requests that lost a lock race
/// (left out of the commit, to be run again alone).
fn run_batch(conn: &mut DbConn, batch: Vec<Box<dyn Request>>) -> (Result<Done, (BatchFailed, Done)>, Done) {
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
    let ended = if keep { Tm::commit_transaction(conn) } else { Tm::rollback_transaction(conn) };
    notify::ended(keep && ended.is_ok());
    let failed = match (broken, ended) {
        (Some(failed), _) => failed,
        (None, Ok(())) => return (Ok(done), raced),
        (None, Err(e)) => {
            if keep {
                let _ = Tm::rollback_transaction(conn);
            }
            BatchFailed::of(&e.into())
        }
    };
    done.extend(raced);
    (Err((failed, done)), Vec::new())
}

/// Runs `request` in a savepoint: released when it succeeded, rolled back when it did not.
fn run_in_savepoint(conn: &mut DbConn, request: &mut dyn Request) -> StoreResult<Ran> {
    Tm::begin_transaction(conn)?;
    notify::begun();
    let ran = run_one(conn, request, 2);
    let ended = match ran {
        Ok(Ran::Ok) => Tm::commit_transaction(conn),
        Ok(Ran::Failed | Ran::Raced) | Err(_) => Tm::rollback_transaction(conn),
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
            request.panicked();
            Ran::Failed
        }
    };
    notify::unwind_to(open as usize);
    unwind_to(conn, open)?;
    Ok(ran)
}

/// How many transactions are open on `conn` (`None` when its manager is broken).
fn depth(conn: &mut DbConn) -> Option<u32> {
    Tm::transaction_manager_status_mut(conn).transaction_depth().ok().map(|d| d.map_or(0, |d| d.get()))
}

/// Rolls back what a request left open beyond `base` transactions.
fn unwind_to(conn: &mut DbConn, base: u32) -> StoreResult<()> {
    while depth(conn).ok_or(StoreError::Query(diesel::result::Error::BrokenTransactionManager))? > base {
        Tm::rollback_transaction(conn)?;
    }
    Ok(())
}
