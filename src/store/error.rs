//! What a storage failure is, and what it means for the request that met it.

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database connection: {0}")]
    Connect(String),
    #[error("database pool: {0}")]
    Pool(#[from] r2d2::Error),
    #[error("database query: {0}")]
    Query(#[from] diesel::result::Error),
    #[error("migrations: {0}")]
    Migration(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("the store's threads are gone")]
    Canceled,
    #[error("a write panicked")]
    Panicked,
    /// A job handler's attempt or give-up panicked (the worker caught it).
    #[error("the job's handler panicked")]
    HandlerPanicked,
    /// `LOREWIRE_QUEUE_LIMIT` jobs are queued already: the request was refused, nothing stored.
    #[error("{0} jobs are queued already")]
    QueueFull(i64),
    /// A usage limit refused the call this write was for: nothing was stored.
    #[error("{0}")]
    OverLimit(crate::domain::limits::Refusal),
    /// The player has this many REST runs queued or running (`LOREWIRE_PLAYER_UNWATCHED_RUNS`):
    /// the run was refused, nothing stored.
    #[error("{0} REST runs of the player are queued or running")]
    TooManyUnwatched(i64),
    /// The player's start rate refused the request: nothing was stored.
    #[error("{0}")]
    RateLimited(crate::domain::limits::Refusal),
    /// A player asked to regenerate a shared item or change its context where only the game
    /// server may (`LOREWIRE_SHARED_CONTENT_WRITERS=server`): refused, nothing stored.
    #[error("{SERVER_ONLY}")]
    ServerOnly,
    /// The transaction this request's write shared with others failed as a whole.
    #[error("the batch of writes failed: {}", .0.message)]
    Batch(BatchFailed),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// What a player refused with [`StoreError::ServerOnly`] is told.
pub const SERVER_ONLY: &str = "only the game server may change shared content";

/// What a client refused with [`StoreError::QueueFull`] is told.
pub const QUEUE_FULL: &str = "too much work is queued; nothing was stored, try again soon";

/// Why the database is not ready.
#[derive(Debug, thiserror::Error)]
pub enum ProbeFailed {
    #[error("the database is not answering")]
    NotAnswering,
    #[error("the database refuses writes: {0}")]
    RefusesWrites(StoreError),
    /// SQLite: the disk the database is on has no room for new pages ([`space`]).
    #[error("the database's disk is full: {0}")]
    NoSpace(std::io::Error),
}

/// What a storage failure means for the request that met it; the edges map it to their own
/// codes (`error:overloaded` / `error:unavailable` on the WebSocket, 429 / 503 / 500 on REST).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Too much at once (every pooled connection busy, the SQLite write lock held too long):
    /// the same request may well succeed in a moment.
    Overloaded,
    /// The database refuses or cannot be reached (disk full, read-only, connection lost):
    /// nothing was stored, and retrying soon will not help until an operator acts.
    Unavailable,
    /// Lorewire's own fault (a corrupt row, a query bug).
    Internal,
}

impl StoreError {
    pub fn failure(&self) -> Failure {
        use diesel::result::{DatabaseErrorKind as Kind, Error as Diesel};
        match self {
            StoreError::Connect(_) | StoreError::Canceled => Failure::Unavailable,
            StoreError::QueueFull(_)
            | StoreError::OverLimit(_)
            | StoreError::RateLimited(_)
            | StoreError::TooManyUnwatched(_) => Failure::Overloaded,
            // r2d2 names the last connection error when the pool could not connect at all.
            StoreError::Pool(e) if e.to_string().contains("waiting for connection: ") => Failure::Unavailable,
            StoreError::Pool(_) => Failure::Overloaded,
            StoreError::Query(Diesel::DatabaseError(kind, info)) => match kind {
                Kind::ClosedConnection | Kind::UnableToSendCommand | Kind::ReadOnlyTransaction => Failure::Unavailable,
                Kind::SerializationFailure => Failure::Overloaded,
                _ => classify_message(info.message()),
            },
            StoreError::Query(Diesel::BrokenTransactionManager) => Failure::Unavailable,
            StoreError::Batch(failed) => failed.failure,
            StoreError::Query(_)
            | StoreError::Migration(_)
            | StoreError::Corrupt(_)
            | StoreError::Panicked
            | StoreError::HandlerPanicked => Failure::Internal,
            // Answered before `failure()` is asked (a refusal, not a fault); were it asked, it
            // is a caller's mistake to report.
            StoreError::ServerOnly => Failure::Internal,
        }
    }
}

/// The failures both backends report only in words (SQLite result codes, PostgreSQL's
/// insufficient-resources and connection classes).
fn classify_message(message: &str) -> Failure {
    let m = message.to_ascii_lowercase();
    const BUSY: [&str; 3] = ["database is locked", "database table is locked", "deadlock detected"];
    const REFUSED: [&str; 9] = [
        "disk is full",
        "disk full",
        "readonly database",
        "read-only",
        "disk i/o error",
        "no space left",
        "could not extend file",
        "server closed the connection",
        "terminating connection",
    ];
    if BUSY.iter().any(|b| m.contains(b)) {
        Failure::Overloaded
    } else if REFUSED.iter().any(|r| m.contains(r)) {
        Failure::Unavailable
    } else {
        Failure::Internal
    }
}

/// `true` when the error is a unique-constraint violation (a concurrent insert won).
pub fn is_unique_violation(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::Query(diesel::result::Error::DatabaseError(diesel::result::DatabaseErrorKind::UniqueViolation, _))
    )
}

/// Why a whole batch failed, handed to every request in it.
#[derive(Debug, Clone)]
pub struct BatchFailed {
    pub failure: Failure,
    pub message: String,
}

impl BatchFailed {
    pub(super) fn of(e: &StoreError) -> Self {
        BatchFailed { failure: e.failure(), message: e.to_string() }
    }
}
