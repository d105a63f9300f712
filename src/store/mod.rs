//! Store: the pool, the backend choice, migrations, and the two doors from async code into
//! the database: [`Store::run`] reads on a pooled connection (the blocking pool; the pool's
//! connections refuse writes), [`Store::write`] queues a write for a writer thread (one player's
//! always the same one), which commits the writes that arrive together in one transaction
//! ([`writer`], [`batch`]).
//!
//! Never runs a Diesel call on an async worker; never holds a connection across an upstream
//! call (closures passed to `run` and `write` are synchronous, so they cannot await the network).

pub mod ahead;
mod batch;
pub mod behind;
pub mod billing;
mod closing;
pub mod content;
pub mod content_row;
mod ending;
mod error;
pub mod jobs;
mod kept;
pub mod llm_config;
mod memo;
pub mod messages;
pub mod moderation;
pub mod notify;
mod place;
mod reserving;
pub mod run_attempts;
pub mod runs;
pub mod schema;
pub mod space;
mod sql;
pub mod upstreams;
pub mod usage;
pub mod users;
pub mod writer;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use diesel::connection::{AnsiTransactionManager, SimpleConnection, TransactionManager};
use diesel::pg::PgConnection;
use diesel::sqlite::SqliteConnection;
use diesel::Connection;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

pub use error::{
    is_unique_violation, BatchFailed, Failure, ProbeFailed, StoreError, StoreResult, QUEUE_FULL, SERVER_ONLY,
};
pub use kept::Kept;

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
const PG_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// One connection type for both backends: the queries are written once against it.
#[derive(diesel::MultiConnection)]
pub enum DbConn {
    Sqlite(SqliteConnection),
    Pg(PgConnection),
}

/// Runs the same Diesel expression on the inner connection, for the DSL that the
/// MultiConnection cannot express (upserts, `FOR UPDATE SKIP LOCKED`, batch inserts).
#[macro_export]
macro_rules! on_backend {
    ($conn:expr, |$c:ident| $body:expr) => {
        match $conn {
            $crate::store::DbConn::Sqlite($c) => $body,
            $crate::store::DbConn::Pg($c) => $body,
        }
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Chooses the backend from the URL scheme so connection errors are reported as they are.
pub fn backend_of(url: &str) -> (Backend, String) {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        (Backend::Postgres, url.to_owned())
    } else {
        let path = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")).unwrap_or(url);
        (Backend::Sqlite, path.to_owned())
    }
}

/// The most connections a process opens to `backend`: also the most store calls it runs at once.
pub fn pool_size(backend: Backend) -> usize {
    match backend {
        Backend::Sqlite => 8,
        Backend::Postgres => 16,
    }
}

/// r2d2 manager that establishes the right backend itself, so a wrong password or a
/// server that is down is reported as such (the derived MultiConnection hides it).
#[derive(Debug, Clone)]
pub struct Manager {
    backend: Backend,
    url: String,
    /// The connections refuse writes (the pool's: every write goes through the writer).
    reads_only: bool,
}

impl Manager {
    pub fn new(url: &str) -> Self {
        let (backend, url) = backend_of(url);
        Manager { backend, url, reads_only: false }
    }

    /// The same database, for connections that only read.
    fn reading(&self) -> Self {
        Manager { reads_only: true, ..self.clone() }
    }

    fn establish(&self) -> StoreResult<DbConn> {
        let conn = match self.backend {
            Backend::Postgres => {
                let mut c = PgConnection::establish(&self.url).map_err(|e| StoreError::Connect(e.to_string()))?;
                if self.reads_only {
                    c.batch_execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")?;
                }
                DbConn::Pg(c)
            }
            Backend::Sqlite => {
                let mut c = SqliteConnection::establish(&self.url).map_err(|e| StoreError::Connect(e.to_string()))?;
                // WAL lets readers run beside the writer; busy_timeout makes writers wait their turn.
                // The timeout goes first: switching to WAL needs a lock too, and another process
                // (or a pool closing, which checkpoints) may hold it for a moment.
                c.batch_execute(
                    "PRAGMA busy_timeout = 10000; PRAGMA journal_mode = WAL; \
                     PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;",
                )?;
                if self.reads_only {
                    c.batch_execute("PRAGMA query_only = ON")?;
                }
                DbConn::Sqlite(c)
            }
        };
        Ok(conn)
    }
}

impl r2d2::ManageConnection for Manager {
    type Connection = DbConn;
    type Error = StoreError;

    fn connect(&self) -> Result<DbConn, StoreError> {
        self.establish()
    }
    fn is_valid(&self, conn: &mut DbConn) -> Result<(), StoreError> {
        conn.batch_execute("SELECT 1").map_err(StoreError::from)
    }
    fn has_broken(&self, conn: &mut DbConn) -> bool {
        <DbConn as Connection>::TransactionManager::is_broken_transaction_manager(conn)
    }
}

pub type Pool = r2d2::Pool<Manager>;

/// Where the store hands the events of committed transactions (see [`notify`]).
pub type AfterCommit = Arc<dyn Fn(Vec<notify::Event>) + Send + Sync>;

/// The database, shared by every actor and handler.
#[derive(Clone)]
pub struct Store {
    /// Connections for reads.
    pool: Pool,
    /// The queue of writes.
    writer: writer::Writer,
    /// Opens the connection migrations run on.
    manager: Manager,
    backend: Backend,
    /// Set once at start when changes are announced by a backplane of its own rather than by
    /// PostgreSQL's notifications.
    after_commit: Arc<OnceLock<AfterCommit>>,
}

impl Store {
    /// Connects (reporting the real error when the database cannot be reached) and builds the pool.
    pub fn connect(url: &str) -> StoreResult<Store> {
        Self::connect_with(url, 1)
    }

    /// [`Store::connect`] with `writers` writer connections on PostgreSQL (SQLite: one).
    pub fn connect_with(url: &str, writers: usize) -> StoreResult<Store> {
        let manager = Manager::new(url);
        let backend = manager.backend;
        // Fail fast with the database's own words rather than a pool timeout.
        manager.establish()?;
        let pool = r2d2::Pool::builder()
            .max_size(pool_size(backend) as u32)
            .min_idle(Some(1))
            .connection_timeout(Duration::from_secs(10))
            .error_handler(Box::new(r2d2::LoggingErrorHandler))
            .build(manager.reading())?;
        let after_commit = Arc::new(OnceLock::new());
        let writer = writer::Writer::start(manager.clone(), after_commit.clone(), writers)
            .map_err(|e| StoreError::Connect(format!("could not start the writer thread: {e}")))?;
        Ok(Store { pool, writer, manager, backend, after_commit })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The writer's counters (writes, batches, failed batches), for the metrics registry.
    pub fn writer_counters(&self) -> &writer::WriterCounters {
        self.writer.counters()
    }

    /// Runs pending migrations for this backend; returns how many ran.
    pub fn migrate(&self) -> StoreResult<usize> {
        let mut conn = self.manager.establish()?;
        let ran = on_backend!(&mut conn, |c| {
            let migrations = match self.backend {
                Backend::Sqlite => SQLITE_MIGRATIONS,
                Backend::Postgres => PG_MIGRATIONS,
            };
            c.run_pending_migrations(migrations).map(|v| v.len()).map_err(|e| StoreError::Migration(e.to_string()))?
        });
        Ok(ran)
    }

    /// From now on, the changes transactions announce ([`notify::send`]) go to `hook` once
    /// they commit, in order, instead of PostgreSQL's notifications. Set once, at start.
    pub fn announce_after_commit(&self, hook: AfterCommit) {
        if self.after_commit.set(hook).is_err() {
            tracing::error!("the store's after-commit hook was set twice; the first one stays");
        }
    }

    /// Runs `f`, which only reads, with a pooled connection on the blocking thread pool.
    pub async fn run<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConn) -> StoreResult<T> + Send + 'static,
    {
        let store = self.clone();
        actix_web::rt::task::spawn_blocking(move || store.run_blocking(f)).await.map_err(|_| StoreError::Canceled)?
    }

    /// The same as [`Store::run`] for callers already off the async threads.
    pub fn run_blocking<T>(&self, f: impl FnOnce(&mut DbConn) -> StoreResult<T>) -> StoreResult<T> {
        f(&mut *self.pool.get()?)
    }

    /// Queues `f`, which writes, for the writer: it runs in the transaction of its batch, and
    /// the answer comes once that transaction has committed (and its events are handed on), or
    /// failed. `f` may run more than once (a write of its batch failed, or it lost a lock race:
    /// each earlier run was rolled back); what it only counts belongs in `then`
    /// ([`Store::write_then`]). Queued when called, not when first polled: writes run in the
    /// order they were asked for.
    pub fn write<T, F>(&self, f: F) -> impl std::future::Future<Output = StoreResult<T>> + Send + 'static
    where
        T: Send + 'static,
        F: FnMut(&mut DbConn) -> StoreResult<T> + Send + 'static,
    {
        self.write_then(f, |value| value)
    }

    /// [`Store::write`], with `then` run on what `f` answered as soon as its batch committed, on
    /// the writer's thread, before the answer is sent: what must follow the commit even when
    /// the caller no longer waits for it (a cancelled request), such as handing a job it
    /// claimed to the worker. `then` must not block; it is dropped when the write fails.
    pub fn write_then<T, U, F, C>(
        &self,
        f: F,
        then: C,
    ) -> impl std::future::Future<Output = StoreResult<U>> + Send + 'static
    where
        T: Send + 'static,
        U: Send + 'static,
        F: FnMut(&mut DbConn) -> StoreResult<T> + Send + 'static,
        C: FnOnce(T) -> U + Send + 'static,
    {
        self.write_then_for(None, f, then)
    }

    /// [`Store::write`] for `player`: on PostgreSQL the writes of several players may run on
    /// several connections at once (`LOREWIRE_DB_WRITERS`), one player's in the order asked
    /// for. What names no player runs in order with every other write naming none.
    pub fn write_for<T, F>(
        &self,
        player: i64,
        f: F,
    ) -> impl std::future::Future<Output = StoreResult<T>> + Send + 'static
    where
        T: Send + 'static,
        F: FnMut(&mut DbConn) -> StoreResult<T> + Send + 'static,
    {
        self.write_then_for(Some(player), f, |value| value)
    }

    /// [`Store::write_then`] for `player` ([`Store::write_for`]).
    pub fn write_then_for<T, U, F, C>(
        &self,
        player: Option<i64>,
        f: F,
        then: C,
    ) -> impl std::future::Future<Output = StoreResult<U>> + Send + 'static
    where
        T: Send + 'static,
        U: Send + 'static,
        F: FnMut(&mut DbConn) -> StoreResult<T> + Send + 'static,
        C: FnOnce(T) -> U + Send + 'static,
    {
        self.write_ahead_for(player, None, f, then)
    }

    /// [`Store::write_then_for`] of a content write (a request, a job's end) that says what it
    /// will write: on PostgreSQL that may be made ahead of its batch, in one statement with the
    /// others' ([`ahead`]).
    pub fn write_ahead_for<T, U, F, C>(
        &self,
        player: Option<i64>,
        ahead: Option<ahead::Ahead>,
        f: F,
        then: C,
    ) -> impl std::future::Future<Output = StoreResult<U>> + Send + 'static
    where
        T: Send + 'static,
        U: Send + 'static,
        F: FnMut(&mut DbConn) -> StoreResult<T> + Send + 'static,
        C: FnOnce(T) -> U + Send + 'static,
    {
        let answer = self.writer.submit_ahead(player, ahead, f, then);
        async move { answer.await.map_err(|_| StoreError::Canceled)? }
    }

    /// The same as [`Store::write`] for callers off the async threads (it blocks until the
    /// answer comes).
    pub fn write_blocking<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnMut(&mut DbConn) -> StoreResult<T> + Send + 'static,
    {
        self.writer.submit(None, f, |value| value).blocking_recv().map_err(|_| StoreError::Canceled)?
    }

    /// `Ok` when the database takes a write within `timeout` (readiness); else why not.
    pub async fn probe(&self, timeout: Duration) -> Result<(), ProbeFailed> {
        // Behind the writes queued before it: that wait counts.
        match actix_web::rt::time::timeout(timeout, self.write(llm_config::probe_write)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return match e.failure() {
                    Failure::Overloaded => Err(ProbeFailed::NotAnswering),
                    Failure::Unavailable | Failure::Internal => Err(ProbeFailed::RefusesWrites(e)),
                }
            }
            Err(_) => return Err(ProbeFailed::NotAnswering),
        }
        if self.backend != Backend::Sqlite {
            return Ok(());
        }
        let path = std::path::PathBuf::from(&self.manager.url);
        match actix_web::rt::task::spawn_blocking(move || space::check(&path)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ProbeFailed::NoSpace(e)),
            Err(_) => Err(ProbeFailed::NotAnswering),
        }
    }
}

/// The transaction manager of both backends.
pub(crate) type Tm = <DbConn as Connection>::TransactionManager;

/// Begins a write transaction, or a savepoint inside one already open. The outermost on
/// SQLite is `BEGIN IMMEDIATE`: it takes the write lock up front.
fn begin_write(conn: &mut DbConn) -> StoreResult<()> {
    let outermost = Tm::transaction_manager_status_mut(conn).transaction_depth()?.is_none();
    match conn {
        DbConn::Sqlite(c) if outermost => AnsiTransactionManager::begin_transaction_sql(c, "BEGIN IMMEDIATE")?,
        _ => Tm::begin_transaction(conn)?,
    }
    Ok(())
}

/// A write that is the whole of its caller's request (it passes a failure on and writes nothing
/// after one): inside a transaction already (the writer's batch) `f` runs as it is, no
/// savepoint, and a failure fails the request, which its batch rolls back (it runs again with a
/// savepoint per request); on a connection with no transaction it is one of its own
/// ([`write_tx`]). A caller that goes on after a failure needs [`write_tx`]'s savepoint.
pub fn write_whole<T>(conn: &mut DbConn, f: impl FnOnce(&mut DbConn) -> StoreResult<T>) -> StoreResult<T> {
    if Tm::transaction_manager_status_mut(conn).transaction_depth()?.is_some() {
        return f(conn);
    }
    write_tx(conn, f)
}

/// A write transaction: all of `f` or none of it. Inside another (the writer's batch) it is
/// a savepoint. Alone on SQLite it is `BEGIN IMMEDIATE`, so a transaction that reads before it
/// writes takes the write lock up front and waits on busy_timeout instead of failing with
/// SQLITE_BUSY when it upgrades.
pub fn write_tx<T>(conn: &mut DbConn, f: impl FnOnce(&mut DbConn) -> StoreResult<T>) -> StoreResult<T> {
    let mark = behind::mark();
    begin_write(conn)?;
    notify::begun();
    match f(conn) {
        Ok(value) => match Tm::commit_transaction(conn) {
            Ok(()) => {
                notify::ended(true);
                Ok(value)
            }
            Err(e) => {
                notify::ended(false);
                memo::forget();
                behind::truncate(mark);
                Err(e.into())
            }
        },
        Err(e) => {
            notify::ended(false);
            memo::forget();
            behind::truncate(mark);
            let _ = Tm::rollback_transaction(conn);
            Err(e)
        }
    }
}
