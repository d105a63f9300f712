//! Group commit: the threads that write (one on SQLite, `LOREWIRE_DB_WRITERS` on PostgreSQL,
//! each with its own connection; one player's writes always go through the same one). Every write of the process is queued here; a writer takes all that is queued (up to
//! [`MAX_BATCH`]), runs them one after another in one transaction (`BEGIN IMMEDIATE` on SQLite,
//! so it never waits on a busy lock of its own process), commits once, hands the committed
//! events to the after-commit hook in order, and only then answers each request.
//!
//! A request that fails is answered with its own error; the others of its batch commit
//! ([`super::batch`]). A batch whose commit fails (or whose transaction the database
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

use super::ahead::Ahead;
use super::batch::{depth, run_batch, Ran, Request};
use super::BatchFailed;
use super::{
    begin_write, behind, memo, notify, AfterCommit, Backend, DbConn, Failure, Manager, StoreError, StoreResult, Tm,
};

/// The most requests one transaction carries: enough to take in every client at once, few
/// enough that the first of them is not kept waiting behind a long commit.
pub const MAX_BATCH: usize = 256;

/// How often the checkpointer looks for committed writes to copy from the WAL into the database.
pub const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);

/// A write: `f`, and `then`, which turns what `f` answered into the answer once its batch
/// committed (on the writer thread, whether or not the caller still waits).
struct Work<T, U, F, C> {
    f: F,
    then: C,
    ahead: Option<Ahead>,
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

    fn ahead(&self) -> Option<&Ahead> {
        self.ahead.as_ref()
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

/// The queues into the writer threads; each thread ends when the last sender is dropped.
#[derive(Clone)]
pub struct Writer {
    /// One per writer thread; the first takes every write that names no player.
    queues: Vec<mpsc::Sender<Box<dyn Request>>>,
    counters: WriterCounters,
    /// Dropped with the last store: the checkpointer stops.
    _checkpoints: Option<mpsc::Sender<()>>,
}

impl Writer {
    /// Starts the writer threads, each with a connection of its own from `manager`: `writers` on
    /// PostgreSQL (a batch waits on a round trip per statement, so while one writer waits the
    /// others run theirs), one on SQLite (it takes one writer at a time).
    pub fn start(
        manager: Manager,
        after_commit: Arc<OnceLock<AfterCommit>>,
        writers: usize,
    ) -> std::io::Result<Writer> {
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
        let writers = match manager.backend {
            Backend::Sqlite => 1,
            Backend::Postgres => writers.max(1),
        };
        let mut queues = Vec::with_capacity(writers);
        // What the batches of every writer thread read, kept between them ([`memo`]).
        let between = Arc::new(memo::Between::default());
        for _ in 0..writers {
            let (queue, requests) = mpsc::channel();
            let serve = Serve {
                manager: manager.clone(),
                after_commit: after_commit.clone(),
                conn: None,
                counters: counters.clone(),
                between: between.clone(),
            };
            std::thread::Builder::new().name("lorewire-writer".into()).spawn(move || serve.serve(requests))?;
            queues.push(queue);
        }
        Ok(Writer { queues, counters, _checkpoints: checkpoints })
    }

    pub fn counters(&self) -> &WriterCounters {
        &self.counters
    }

    /// Queues `f` for the writer of `player` (`None`: the first writer); once the batch it ran
    /// in has committed, `then` turns what it answered into the answer, which arrives then (or
    /// the batch's failure does, and `then` is dropped). One player's writes go through one
    /// writer, in the order they were queued, as do all writes that name no player.
    pub fn submit<T, U, F, C>(&self, player: Option<i64>, f: F, then: C) -> oneshot::Receiver<StoreResult<U>>
    where
        T: Send + 'static,
        U: Send + 'static,
        F: FnMut(&mut DbConn) -> StoreResult<T> + Send + 'static,
        C: FnOnce(T) -> U + Send + 'static,
    {
        self.submit_ahead(player, None, f, then)
    }

    /// [`Writer::submit`] of a content write (a request, a job's end) that says what it will
    /// write ([`Ahead`]): that may be made ahead of its batch together with the others'.
    pub fn submit_ahead<T, U, F, C>(
        &self,
        player: Option<i64>,
        ahead: Option<Ahead>,
        f: F,
        then: C,
    ) -> oneshot::Receiver<StoreResult<U>>
    where
        T: Send + 'static,
        U: Send + 'static,
        F: FnMut(&mut DbConn) -> StoreResult<T> + Send + 'static,
        C: FnOnce(T) -> U + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        // A send fails only when the thread is gone: the dropped reply then answers `Canceled`.
        let writer = player.map_or(0, |player| player.unsigned_abs() as usize % self.queues.len());
        let _ = self.queues[writer].send(Box::new(Work { f, then, ahead, result: None, reply }));
        answer
    }
}

struct Serve {
    manager: Manager,
    after_commit: Arc<OnceLock<AfterCommit>>,
    conn: Option<DbConn>,
    counters: WriterCounters,
    between: Arc<memo::Between>,
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
        // Even alone: a write that took the studio's row before its last statement could wait
        // on a row another writer holds while that writer waits on the studio's row.
        let (_memo, _behind) = (memo::start(&self.between), behind::start());
        // On PostgreSQL without a hook, the batch's notifications go out together just before
        // its commit (`batch::commit_batch`); with a hook, after it.
        let announce = self.after_commit.get().is_none() && self.manager.backend == Backend::Postgres;
        let collecting = (self.after_commit.get().is_some() || announce).then(notify::collect);
        notify::begun();
        let (outcome, raced) = run_batch(&mut conn, batch, announce);
        match outcome {
            Ok(done) => {
                memo::committed();
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
