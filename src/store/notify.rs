//! The write side of PostgreSQL's change notifications: an [`Event`] announced with `pg_notify`
//! inside the transaction that makes the change, so the other processes hear it exactly when it
//! commits (the listening side is `backplane::postgres`). On SQLite (one process) every call here
//! does nothing. Never listens, never dispatches, never knows who hears.

use diesel::sql_types::Text;
use diesel::RunQueryDsl;

use super::content::ContentRow;
use super::{DbConn, StoreResult};
pub use crate::domain::events::{Event, MessageChange, RemoteFrame};

pub const CHANNEL: &str = "lorewire_events";

diesel::define_sql_function! {
    /// `pg_notify(channel, payload)`.
    fn pg_notify(channel: Text, payload: Text) -> Text;
}

/// Sends already-serialized events, in order, each as its own notification.
pub fn announce(conn: &mut DbConn, payloads: &[String]) -> StoreResult<()> {
    let DbConn::Pg(pg) = conn else { return Ok(()) };
    for payload in payloads {
        diesel::select(pg_notify(CHANNEL, payload)).execute(pg)?;
    }
    Ok(())
}

/// Announces `event`; call inside the transaction that makes the change it tells of.
pub fn send(conn: &mut DbConn, event: &Event) -> StoreResult<()> {
    let DbConn::Pg(pg) = conn else { return Ok(()) };
    let payload = serde_json::to_string(event).expect("events serialize");
    diesel::select(pg_notify(CHANNEL, payload)).execute(pg)?;
    Ok(())
}

/// Announces a lobby message change; call inside the transaction that made it.
pub fn message_changed(conn: &mut DbConn, origin: &str, change: MessageChange, id: i64) -> StoreResult<()> {
    send(conn, &Event::Message { origin: origin.to_owned(), change, id })
}

/// Announces a content change; call inside the transaction that made it.
pub fn content_changed(conn: &mut DbConn, origin: &str, row: &ContentRow) -> StoreResult<()> {
    let event = Event::Content {
        origin: origin.to_owned(),
        kind: row.kind.clone(),
        subject_id: row.subject_id,
        version: row.version,
    };
    send(conn, &event)
}

/// Announces a run's end; call inside the transaction that commits it.
pub fn run_ended(conn: &mut DbConn, origin: &str, run_id: &str) -> StoreResult<()> {
    send(conn, &Event::RunEnded { origin: origin.to_owned(), run_id: run_id.to_owned() })
}

/// Asks the process streaming a run to stop it; call inside the transaction that finds the
/// run claimed by a worker (this process's own stream is told directly).
pub fn run_cancel(conn: &mut DbConn, origin: &str, run_id: &str) -> StoreResult<()> {
    send(conn, &Event::RunCancel { origin: origin.to_owned(), run_id: run_id.to_owned() })
}
