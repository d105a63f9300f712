//! Change notifications between lorewire processes sharing one PostgreSQL database.
//!
//! A change is announced with `pg_notify` inside the transaction that makes it, so it is
//! delivered exactly when it commits. Each process listens on one dedicated connection of its
//! own and forwards what other processes announced into its local Hub (its own changes are
//! already published locally). The listener polls libpq every few milliseconds on a thread of
//! its own; it never touches the async workers. SQLite has one process: nothing to announce.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use bytestring::ByteString;
use diesel::pg::PgConnection;
use diesel::sql_types::Text;
use diesel::{Connection, RunQueryDsl};

use super::content::{self as rows, ContentRow};
use super::{DbConn, Store, StoreResult};
use crate::content::ContentKind;
pub use crate::domain::events::{Event, MessageChange, RemoteFrame};
use crate::hub::Hub;
use crate::runs::live::LiveRuns;

pub const CHANNEL: &str = "lorewire_events";
/// How often the listener asks libpq for new notifications.
const POLL: Duration = Duration::from_millis(10);
const RECONNECT: Duration = Duration::from_secs(1);

diesel::define_sql_function! {
    /// `pg_notify(channel, payload)`.
    fn pg_notify(channel: Text, payload: Text) -> Text;
}

/// Largest payload PostgreSQL accepts for one notification is 8000 bytes; stay well below.
pub const MAX_PAYLOAD_BYTES: usize = 7000;

/// Sends already-serialized events, in order, each as its own notification.
pub fn announce(conn: &mut DbConn, payloads: &[String]) -> StoreResult<()> {
    let DbConn::Pg(pg) = conn else { return Ok(()) };
    for payload in payloads {
        diesel::select(pg_notify(CHANNEL, payload)).execute(pg)?;
    }
    Ok(())
}

/// Announces a lobby message change; call inside the transaction that made it.
pub fn message_changed(conn: &mut DbConn, origin: &str, change: MessageChange, id: i64) -> StoreResult<()> {
    let DbConn::Pg(pg) = conn else { return Ok(()) };
    let event = Event::Message { origin: origin.to_owned(), change, id };
    let payload = serde_json::to_string(&event).expect("events serialize");
    diesel::select(pg_notify(CHANNEL, payload)).execute(pg)?;
    Ok(())
}

/// Announces a content change; call inside the transaction that made it.
pub fn content_changed(conn: &mut DbConn, origin: &str, row: &ContentRow) -> StoreResult<()> {
    let DbConn::Pg(pg) = conn else { return Ok(()) };
    let event = Event::Content {
        origin: origin.to_owned(),
        kind: row.kind.clone(),
        subject_id: row.subject_id,
        version: row.version,
    };
    let payload = serde_json::to_string(&event).expect("events serialize");
    diesel::select(pg_notify(CHANNEL, payload)).execute(pg)?;
    Ok(())
}

/// Announces a run's end; call inside the transaction that commits it.
pub fn run_ended(conn: &mut DbConn, origin: &str, run_id: &str) -> StoreResult<()> {
    let DbConn::Pg(pg) = conn else { return Ok(()) };
    let event = Event::RunEnded { origin: origin.to_owned(), run_id: run_id.to_owned() };
    let payload = serde_json::to_string(&event).expect("events serialize");
    diesel::select(pg_notify(CHANNEL, payload)).execute(pg)?;
    Ok(())
}

/// Asks the process streaming a run to stop it; call inside the transaction that finds the
/// run claimed by a worker (this process's own stream is told directly).
pub fn run_cancel(conn: &mut DbConn, origin: &str, run_id: &str) -> StoreResult<()> {
    let DbConn::Pg(pg) = conn else { return Ok(()) };
    let event = Event::RunCancel { origin: origin.to_owned(), run_id: run_id.to_owned() };
    let payload = serde_json::to_string(&event).expect("events serialize");
    diesel::select(pg_notify(CHANNEL, payload)).execute(pg)?;
    Ok(())
}

/// Tells the listener thread to stop, and waits for it.
#[derive(Clone, Default)]
pub struct ListenerHandle {
    stop: Arc<AtomicBool>,
    thread: Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl ListenerHandle {
    /// Stops the thread and waits until it has left libpq (at most one poll period or one
    /// query): a process that exits while a thread is inside libpq can crash in TLS teardown.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// Starts the listener of this process (`origin`) on its own thread.
pub fn spawn_listener(
    url: String,
    origin: Arc<str>,
    store: Store,
    hub: Addr<Hub>,
    lobby: Addr<crate::lobby::Lobby>,
    live: Arc<LiveRuns>,
) -> ListenerHandle {
    let handle = ListenerHandle::default();
    let stop = handle.clone();
    let spawned = std::thread::Builder::new().name("lorewire-listen".into()).spawn(move || {
        let mut connected_before = false;
        while !stop.stopped() {
            match listen(&url, &origin, &store, &hub, &lobby, &live, &stop, &mut connected_before) {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "change listener lost its connection; reconnecting");
                    std::thread::sleep(RECONNECT);
                }
            }
        }
    });
    match spawned {
        Ok(thread) => *handle.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(thread),
        Err(e) => tracing::error!(error = %e, "could not start the change listener"),
    }
    handle
}

// One listener, every dependency it forwards into.
#[allow(clippy::too_many_arguments)]
fn listen(
    url: &str,
    origin: &str,
    store: &Store,
    hub: &Addr<Hub>,
    lobby: &Addr<crate::lobby::Lobby>,
    live: &LiveRuns,
    stop: &ListenerHandle,
    connected_before: &mut bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut conn = PgConnection::establish(url)?;
    // LISTEN has no Diesel DSL.
    diesel::sql_query(format!("LISTEN {CHANNEL}")).execute(&mut conn)?;
    if *connected_before {
        tracing::info!("change listener reconnected; changes made meanwhile reach clients when they resubscribe");
    }
    *connected_before = true;
    // Now that this process hears the others, ask them who is online on their side.
    lobby.do_send(crate::lobby::ListenerReady);
    while !stop.stopped() {
        for notification in conn.notifications_iter() {
            let notification = notification?;
            match serde_json::from_str::<Event>(&notification.payload) {
                Ok(event) if event.origin() == origin => {}
                Ok(event @ (Event::Presence { .. } | Event::Hello { .. } | Event::Alive { .. })) => {
                    lobby.do_send(crate::lobby::Remote(event))
                }
                Ok(event) => forward(event, origin, store, hub, live),
                Err(e) => tracing::warn!(error = %e, "unreadable change notification"),
            }
        }
        std::thread::sleep(POLL);
    }
    Ok(())
}

/// Publishes another process's change to this process's subscribers.
fn forward(event: Event, origin: &str, store: &Store, hub: &Addr<Hub>, live: &LiveRuns) {
    match event {
        _ if event.origin() == origin => {}
        Event::Presence { .. } | Event::Hello { .. } | Event::Alive { .. } => {}
        Event::Message { change, id, .. } => {
            let row = match store.run_blocking(|conn| super::messages::find(conn, id)) {
                Ok(Some(row)) => row,
                Ok(None) => return,
                Err(e) => {
                    tracing::error!(error = %e, "could not read a changed message");
                    return;
                }
            };
            let message = row.message();
            hub.do_send(match change {
                MessageChange::New => crate::lobby::new_message_publish(message),
                MessageChange::Mood => crate::lobby::mood_publish(&message),
            });
        }
        Event::RunEnded { run_id, .. } => {
            let row = match store.run_blocking(|conn| crate::store::runs::find(conn, &run_id)) {
                Ok(Some(row)) => row,
                Ok(None) => return,
                Err(e) => {
                    tracing::error!(error = %e, "could not read an ended run");
                    return;
                }
            };
            let topic = crate::runs::topic(&run_id);
            if live.frames(&run_id).is_some() {
                // The attempt's frames were heard live: only its end is new.
                crate::runs::service::publish(live, hub, &run_id, crate::runs::service::end_frame(&row));
                crate::runs::service::finish(live, hub, &run_id);
                return;
            }
            for (_, text) in crate::runs::service::stored_frames(&row, false) {
                hub.do_send(crate::hub::Publish { topic: topic.clone(), version: None, text });
            }
            hub.do_send(crate::hub::DropTopic { topic });
        }
        Event::RunFrames { run_id, frames, .. } => {
            let topic = crate::runs::topic(&run_id);
            for f in frames {
                let text = ByteString::from(f.frame);
                // A frame heard without its attempt's start would leave subscribers a gap.
                if live.push_remote(&run_id, f.version, text.clone(), f.starts_attempt) {
                    hub.do_send(crate::hub::Publish { topic: topic.clone(), version: Some(f.version), text });
                }
            }
        }
        Event::RunCancel { run_id, .. } => {
            tracing::info!(run = %run_id, "another process asks to stop the run");
            live.cancel(&run_id);
        }
        Event::Content { kind, subject_id, .. } => {
            let Some(kind) = ContentKind::parse(&kind) else { return };
            let row = store.run_blocking(|conn| rows::find(conn, kind.as_str(), subject_id));
            let content = match row.map(|r| r.as_ref().map(ContentRow::content)) {
                Ok(Some(Ok(content))) => content,
                Ok(None) => return,
                Ok(Some(Err(e))) | Err(e) => {
                    tracing::error!(error = %e, "could not read a changed item");
                    return;
                }
            };
            hub.do_send(crate::content::update_publish(content));
        }
    }
}
