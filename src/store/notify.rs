//! The write side of change notifications: an [`Event`] announced inside the transaction that
//! makes the change, so the other processes hear it exactly when it commits.
//!
//! With PostgreSQL's own notifications it goes out with `pg_notify` in that transaction (the
//! listening side is `backplane::postgres`). When the store was given an after-commit hook (a
//! backplane of another kind, e.g. Redis), it is kept aside instead and handed to the hook once
//! the transaction has committed, in order; a transaction that rolls back announces nothing. On
//! SQLite without a hook (one process) every call here does nothing. Never listens, never
//! dispatches, never knows who hears.

use std::cell::RefCell;

use diesel::sql_types::{Array, Text};
use diesel::RunQueryDsl;

use super::{DbConn, StoreResult};
pub use crate::domain::events::Event;

pub const CHANNEL: &str = "lorewire_events";

diesel::define_sql_function! {
    /// `pg_notify(channel, payload)`.
    fn pg_notify(channel: Text, payload: Text) -> Text;
}

diesel::define_sql_function! {
    /// `unnest(array)`: one row per element, in order.
    fn unnest(elements: Array<Text>) -> Text;
}

/// Sends already-serialized events, in order, each as its own notification: one statement.
pub fn announce(conn: &mut DbConn, payloads: &[String]) -> StoreResult<()> {
    let DbConn::Pg(pg) = conn else { return Ok(()) };
    match payloads {
        [] => {}
        [payload] => _ = diesel::select(pg_notify(CHANNEL, payload)).execute(pg)?,
        payloads => _ = diesel::select(pg_notify(CHANNEL, unnest(payloads))).execute(pg)?,
    }
    Ok(())
}

/// The events the outermost open transaction collected so far, serialized, in order (the
/// writer's batch on PostgreSQL sends them just before its commit, in the statement that
/// writes what it kept aside: [`super::behind::flush`]).
pub(super) fn collected() -> Vec<String> {
    COLLECTOR.with_borrow(|collector| {
        let open = collector.as_ref().and_then(|c| c.open.first());
        open.map(|events| events.iter().map(Event::to_json).collect()).unwrap_or_default()
    })
}

/// Announces `event`; call inside the transaction that makes the change it tells of
/// ([`super::write_tx`]).
pub fn send(conn: &mut DbConn, event: &Event) -> StoreResult<()> {
    if kept_aside(event) {
        return Ok(());
    }
    let DbConn::Pg(pg) = conn else { return Ok(()) };
    let payload = event.to_json();
    diesel::select(pg_notify(CHANNEL, payload)).execute(pg)?;
    Ok(())
}

/// Events of the current [`super::Store::run`] on this thread, when its store has an
/// after-commit hook: those of committed transactions, and one open list per transaction.
struct Collector {
    committed: Vec<Event>,
    open: Vec<Vec<Event>>,
}

thread_local! {
    static COLLECTOR: RefCell<Option<Collector>> = const { RefCell::new(None) };
}

/// Keeps `event` aside for after the commit, when this thread collects; `false` otherwise.
fn kept_aside(event: &Event) -> bool {
    COLLECTOR.with_borrow_mut(|collector| match collector {
        Some(Collector { open, committed }) => {
            match open.last_mut() {
                Some(list) => list.push(event.clone()),
                // Outside any transaction the change is already committed.
                None => committed.push(event.clone()),
            }
            true
        }
        None => false,
    })
}

/// Collecting on this thread, until dropped (also when the work panics: the thread is a pool's
/// and may next run for a store without a hook).
pub(super) struct Collecting(());

/// Starts collecting on this thread (the store has an after-commit hook).
pub(super) fn collect() -> Collecting {
    COLLECTOR.set(Some(Collector { committed: Vec::new(), open: Vec::new() }));
    Collecting(())
}

impl Collecting {
    /// Stops collecting; the events of every transaction that committed, in order.
    pub(super) fn collected(self) -> Vec<Event> {
        COLLECTOR.take().map(|c| c.committed).unwrap_or_default()
    }
}

impl Drop for Collecting {
    fn drop(&mut self) {
        COLLECTOR.set(None);
    }
}

/// A transaction begins.
pub(super) fn begun() {
    COLLECTOR.with_borrow_mut(|collector| {
        if let Some(c) = collector {
            c.open.push(Vec::new());
        }
    });
}

/// Drops the lists of transactions beyond the `open` outermost ones (rolled back without
/// saying so: a write that panicked inside them).
pub(super) fn unwind_to(open: usize) {
    COLLECTOR.with_borrow_mut(|collector| {
        if let Some(c) = collector {
            c.open.truncate(open);
        }
    });
}

/// The transaction that began last ended: committed (its events count; a nested one's go to
/// the transaction around it) or rolled back (they are dropped).
pub(super) fn ended(committed: bool) {
    COLLECTOR.with_borrow_mut(|collector| {
        let Some(c) = collector else { return };
        let Some(events) = c.open.pop() else { return };
        if !committed {
            return;
        }
        match c.open.last_mut() {
            Some(outer) => outer.extend(events),
            None => c.committed.extend(events),
        }
    });
}
