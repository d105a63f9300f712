//! The backplane over PostgreSQL's `LISTEN/NOTIFY`, for processes sharing one database.
//!
//! Changes of rows are announced by the store inside the transaction that makes them (so they
//! are heard exactly when they commit); [`PgBackplane::publish`] sends the rest (presence, run
//! frames). Each process listens on one dedicated connection of its own, on a thread of its own
//! that polls libpq every few milliseconds and only parses: it never reads the database and never
//! touches the async workers; the sinks do the rest on their own tasks. Its own events are dropped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use diesel::pg::PgConnection;
use diesel::{Connection, RunQueryDsl};
use futures_util::future::LocalBoxFuture;
use futures_util::FutureExt;

use super::{Backplane, BackplaneError, Event, Sinks};
use crate::core::process::ProcessId;
use crate::store::notify::{self, CHANNEL};
use crate::store::Store;

/// How often the listener asks libpq for new notifications.
const POLL: Duration = Duration::from_millis(10);
const RECONNECT: Duration = Duration::from_secs(1);

pub struct PgBackplane {
    url: String,
    origin: ProcessId,
    store: Store,
    up: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl PgBackplane {
    pub fn new(url: String, origin: ProcessId, store: Store) -> Self {
        PgBackplane {
            url,
            origin,
            store,
            up: Arc::new(AtomicBool::new(false)),
            stop: Arc::new(AtomicBool::new(false)),
            thread: Mutex::new(None),
        }
    }
}

impl Backplane for PgBackplane {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn shared(&self) -> bool {
        true
    }

    fn publish(&self, events: Vec<Event>) -> LocalBoxFuture<'static, Result<(), BackplaneError>> {
        let store = self.store.clone();
        async move {
            if events.is_empty() {
                return Ok(());
            }
            let payloads: Vec<String> = events.iter().map(Event::to_json).collect();
            store.write(move |conn| notify::announce(conn, &payloads)).await.map_err(|e| BackplaneError(e.to_string()))
        }
        .boxed_local()
    }

    fn listen(&self, sinks: Sinks) {
        let (url, origin, up, stop) = (self.url.clone(), self.origin.clone(), self.up.clone(), self.stop.clone());
        let spawned = std::thread::Builder::new().name("lorewire-listen".into()).spawn(move || {
            let mut connected_before = false;
            while !stop.load(Ordering::Relaxed) {
                match listen(&url, &origin, &sinks, &up, &stop, &mut connected_before) {
                    Ok(()) => return,
                    Err(e) => {
                        up.store(false, Ordering::Relaxed);
                        tracing::warn!(error = %e, "change listener lost its connection; reconnecting");
                        std::thread::sleep(RECONNECT);
                    }
                }
            }
        });
        match spawned {
            Ok(thread) => *self.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(thread),
            Err(e) => tracing::error!(error = %e, "could not start the change listener"),
        }
    }

    fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Stops the thread and waits until it has left libpq (at most one poll period or one
    /// query): a process that exits while a thread is inside libpq can crash in TLS teardown.
    fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
        self.up.store(false, Ordering::Relaxed);
    }
}

fn listen(
    url: &str,
    origin: &str,
    sinks: &Sinks,
    up: &AtomicBool,
    stop: &AtomicBool,
    connected_before: &mut bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut conn = PgConnection::establish(url)?;
    // LISTEN has no Diesel DSL.
    diesel::sql_query(format!("LISTEN {CHANNEL}")).execute(&mut conn)?;
    if *connected_before {
        tracing::info!("change listener reconnected; changes made meanwhile reach clients when they resubscribe");
    }
    *connected_before = true;
    up.store(true, Ordering::Relaxed);
    // Now that this process hears the others, the sinks may ask them for what they hold.
    sinks.reconnected();
    while !stop.load(Ordering::Relaxed) {
        for notification in conn.notifications_iter() {
            let notification = notification?;
            match serde_json::from_str::<Event>(&notification.payload) {
                Ok(event) if event.origin() == origin => {}
                Ok(event) => sinks.deliver(event),
                Err(e) => tracing::warn!(error = %e, "unreadable change notification"),
            }
        }
        std::thread::sleep(POLL);
    }
    Ok(())
}
