//! The one mapping of a storage failure to the WebSocket: too much at once is
//! `error:overloaded` (the same request may succeed in a moment); a database that refuses or
//! cannot be reached, and our own faults, are `error:unavailable` (nothing was stored; retry
//! later); a player's change of shared content that only the game server may make is
//! `error:unauthorized`. The cause is logged here, once, with the session; the client gets a safe message.
//! REST has its own mapping in `api_error.rs`, over the same `StoreError::failure()`.
//!
//! Never sends a frame and never shows a client the cause.

use crate::domain::wire::ErrorCode;
use crate::hub::SessionId;
use crate::store::{Failure, StoreError, QUEUE_FULL, SERVER_ONLY};

/// The error code and safe message for a storage failure met while `what` (said to the
/// client first, e.g. "the message could not be stored"); logs the cause.
pub fn store_error(session: SessionId, what: &str, e: &StoreError) -> (ErrorCode, String) {
    if let StoreError::QueueFull(limit) = e {
        // A flood is refused here many times a second: one debug line each, and the metric.
        tracing::debug!(session, limit, "{what}: the job queue is full");
        return (ErrorCode::Overloaded, format!("{what}: {QUEUE_FULL}"));
    }
    if let StoreError::ServerOnly = e {
        tracing::debug!(session, "{what}: only the game server may change shared content");
        return (ErrorCode::Unauthorized, SERVER_ONLY.to_owned());
    }
    let failure = e.failure();
    match failure {
        Failure::Overloaded => tracing::warn!(session, error = %e, "{what}: database overloaded"),
        Failure::Unavailable => tracing::error!(session, error = %e, "{what}: database unavailable"),
        Failure::Internal => tracing::error!(session, error = %e, "{what}: database error"),
    }
    let (code, why) = match failure {
        Failure::Overloaded => (ErrorCode::Overloaded, "the database is busy, try again"),
        Failure::Unavailable | Failure::Internal => {
            (ErrorCode::Unavailable, "the database cannot take the request right now; nothing was stored, retry later")
        }
    };
    (code, format!("{what}: {why}"))
}

#[cfg(test)]
mod tests {
    use diesel::result::{DatabaseErrorKind, Error as Diesel};

    use super::*;

    fn database(kind: DatabaseErrorKind, message: &str) -> StoreError {
        StoreError::Query(Diesel::DatabaseError(kind, Box::new(message.to_owned())))
    }

    #[test]
    fn overload_is_overloaded_and_the_rest_unavailable() {
        let cases = [
            (database(DatabaseErrorKind::SerializationFailure, "could not serialize access"), ErrorCode::Overloaded),
            (database(DatabaseErrorKind::Unknown, "database is locked"), ErrorCode::Overloaded),
            (database(DatabaseErrorKind::Unknown, "database or disk is full"), ErrorCode::Unavailable),
            (
                database(DatabaseErrorKind::ReadOnlyTransaction, "cannot execute INSERT in a read-only transaction"),
                ErrorCode::Unavailable,
            ),
            (database(DatabaseErrorKind::ClosedConnection, "server closed the connection"), ErrorCode::Unavailable),
            (StoreError::Connect("connection refused".into()), ErrorCode::Unavailable),
            (StoreError::Corrupt("content 7: fields are not JSON".into()), ErrorCode::Unavailable),
            (StoreError::Query(Diesel::NotFound), ErrorCode::Unavailable),
            (StoreError::QueueFull(10), ErrorCode::Overloaded),
            (StoreError::ServerOnly, ErrorCode::Unauthorized),
        ];
        for (e, expected) in cases {
            assert_eq!(store_error(1, "the message could not be stored", &e).0, expected, "{e}");
        }
    }

    #[test]
    fn the_client_is_told_what_failed_never_the_cause() {
        let e = StoreError::Connect("password authentication failed for user \"lorewire\"".into());
        let (code, message) = store_error(7, "the item could not be read", &e);
        assert_eq!(code, ErrorCode::Unavailable);
        assert!(message.starts_with("the item could not be read: the database cannot take the request"), "{message}");
        assert!(!message.contains("password") && !message.contains("lorewire"), "{message}");
        let (_, busy) =
            store_error(7, "could not start the session", &database(DatabaseErrorKind::Unknown, "database is locked"));
        assert_eq!(busy, "could not start the session: the database is busy, try again");
    }
}
