//! The write side of PostgreSQL's change notifications: an [`Event`] announced with `pg_notify`
//! inside the transaction that makes the change, so the other processes hear it exactly when it
//! commits (the listening side is `backplane::postgres`). On SQLite (one process) every call here
//! does nothing. Never listens, never dispatches, never knows who hears.

use diesel::sql_types::Text;
use diesel::RunQueryDsl;

use super::{DbConn, StoreResult};
pub use crate::domain::events::Event;

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
