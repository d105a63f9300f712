//! The cross-process bus, behind one trait: what one lorewire process tells the others
//! ([`Event`]s: content, lobby, presence, run frames, blocked players) and how the events of the
//! others reach this process's services, through the [`Sink`]s they register.
//!
//! [`local`] is the bus of a process that is alone (SQLite): nothing to send, nothing to hear.
//! [`postgres`] carries the events over `LISTEN/NOTIFY`; [`redis`] over Redis pub/sub. Each sink hears its own events in the
//! order they were sent, on a task of its own, so a slow sink (one reading the database) never
//! delays the others. Never knows what a chat message or a run is beyond the [`Event`] enum; never
//! publishes to sessions itself (the sinks do, through the Hub).

pub mod local;
pub mod postgres;
pub mod redis;

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::LocalBoxFuture;

use std::sync::atomic::{AtomicBool, Ordering};

use crate::core::logging::Throttle;
use crate::core::metrics::Metrics;
use crate::core::process::ProcessId;
use futures_util::FutureExt;
use tokio::sync::mpsc;

pub use crate::domain::events::Event;

/// Why events could not be sent to the other processes.
#[derive(Debug, thiserror::Error)]
#[error("the backplane could not send: {0}")]
pub struct BackplaneError(pub String);

/// The bus between the processes of one deployment.
pub trait Backplane: Send + Sync + 'static {
    /// `local`, `postgres`: for logs and the admin summary.
    fn name(&self) -> &'static str;
    /// Whether other processes may exist (presence and run frames are worth announcing).
    fn shared(&self) -> bool;
    /// Sends `events` to every other process, in order. What this process did is already
    /// published to its own sessions; the events are only for the others.
    fn publish(&self, events: Vec<Event>) -> LocalBoxFuture<'static, Result<(), BackplaneError>>;
    /// Starts hearing the other processes: each event goes to the sink of its [`Family`].
    fn listen(&self, sinks: Sinks);
    /// Whether the events of the other processes are being heard now.
    fn is_up(&self) -> bool;
    /// How often a process says it is alive, and how long the others wait before they drop the
    /// players of a process that went silent (it died).
    fn liveness(&self) -> Liveness {
        Liveness { every: Duration::from_secs(5), expires: Duration::from_secs(16) }
    }
    /// Admits one event of the window `key` (e.g. `chat:17`, `new_players:203.0.113.9`)
    /// under a rate of `count` per `per` kept for every process together (a sliding window),
    /// `Err` with the wait when the window is full; `None` when this backplane keeps no shared
    /// windows or cannot answer now: the caller counts alone.
    fn admit(&self, key: String, count: u32, per: Duration) -> LocalBoxFuture<'static, Option<Result<(), Duration>>> {
        self.admit_as(key, crate::domain::players::new_token(), count, per)
    }
    /// [`Backplane::admit`], the event named `member` (so it can be [`Backplane::forget`]ten).
    fn admit_as(
        &self,
        _key: String,
        _member: String,
        _count: u32,
        _per: Duration,
    ) -> LocalBoxFuture<'static, Option<Result<(), Duration>>> {
        async { None }.boxed_local()
    }
    /// Takes the event `member` out of the window `key` again (it turned out not to count).
    fn forget(&self, _key: String, _member: String) {}
    /// Stops hearing (blocking; call off the async threads).
    fn stop(&self);
}

/// A process's heartbeat on the backplane (see [`Backplane::liveness`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    pub every: Duration,
    pub expires: Duration,
}

/// Which service an event is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    Content,
    Lobby,
    Runs,
    Players,
    Circuits,
}

impl Family {
    /// The family of `event`; `None` for a [`Event::Resync`], which is for every family.
    pub fn of(event: &Event) -> Option<Family> {
        match event {
            Event::Content { .. } => Some(Family::Content),
            Event::Message { .. } | Event::Presence { .. } | Event::Hello { .. } | Event::Alive { .. } => {
                Some(Family::Lobby)
            }
            Event::RunEnded { .. } | Event::RunFrames { .. } | Event::RunCancel { .. } => Some(Family::Runs),
            Event::PlayerBlocked { .. } => Some(Family::Players),
            Event::Circuit { .. } => Some(Family::Circuits),
            Event::Resync { .. } => None,
        }
    }

    /// Its sink's queue, as the `queue` label of `lorewire_backplane_dropped_total`.
    pub fn queue_label(self) -> &'static str {
        match self {
            Family::Content => "sink_content",
            Family::Lobby => "sink_lobby",
            Family::Runs => "sink_runs",
            Family::Players => "sink_players",
            Family::Circuits => "sink_circuits",
        }
    }
}

/// What a service registers to hear the other processes. Runs on the actix system's thread;
/// the events of one sink are handed over one at a time, in the order they were sent.
pub trait Sink: 'static {
    fn family(&self) -> Family;
    /// One event of another process; the next waits until this future ends.
    fn deliver(&self, event: Event) -> LocalBoxFuture<'static, ()>;
    /// Events of the others were lost (the backplane was not hearing them, or this sink's queue
    /// was full): the sink brings what it shows back in line with the store and the others.
    /// The next event waits until this future ends.
    fn reconnected(&self) -> LocalBoxFuture<'static, ()> {
        async {}.boxed_local()
    }
}

/// Events waiting for one sink, at most this many: far more than a sink is ever behind while it
/// keeps up (it takes an event in well under a millisecond, or one read of the store); a sink
/// this far behind is better resynced once than fed a backlog of seconds.
pub const SINK_QUEUE: usize = 4096;
/// At most one log line per sink this often about dropped events (the metric counts them all).
const DROP_LOG_EVERY: Duration = Duration::from_secs(10);

enum Delivery {
    Event(Event),
    Reconnected,
}

/// One sink's queue, as the listener sees it.
struct Queue {
    family: Family,
    tx: mpsc::Sender<Delivery>,
    /// Something was dropped at the full queue: the sink resyncs once the queue has room.
    lost: Arc<AtomicBool>,
    dropped: prometheus::IntCounter,
    log: Throttle,
}

/// The registered sinks, as the backplane's listener sees them: one ordered queue per family,
/// each drained by a task on the thread that registered the sinks. A queue holds at most
/// [`SINK_QUEUE`] events; an event heard while its sink's queue is full is dropped (counted in
/// `lorewire_backplane_dropped_total`) and the sink is told [`Sink::reconnected`] once its queue
/// is down to half, exactly as after a reconnect of the backplane.
#[derive(Clone, Default)]
pub struct Sinks {
    queues: Vec<Arc<Queue>>,
}

impl Sinks {
    /// Registers `sinks` (one per family) and starts their tasks on the current actix arbiter.
    pub fn start(sinks: Vec<Rc<dyn Sink>>, metrics: &Metrics) -> Sinks {
        Sinks::with_capacity(sinks, metrics, SINK_QUEUE)
    }

    /// [`Sinks::start`] with queues of `capacity` events.
    pub fn with_capacity(sinks: Vec<Rc<dyn Sink>>, metrics: &Metrics, capacity: usize) -> Sinks {
        let mut queues = Vec::with_capacity(sinks.len());
        for sink in sinks {
            let (tx, mut rx) = mpsc::channel::<Delivery>(capacity.max(1));
            let lost = Arc::new(AtomicBool::new(false));
            let family = sink.family();
            queues.push(Arc::new(Queue {
                family,
                tx,
                lost: lost.clone(),
                dropped: metrics.backplane_dropped.with_label_values(&[family.queue_label()]),
                log: Throttle::new(DROP_LOG_EVERY),
            }));
            actix::spawn(async move {
                while let Some(delivery) = rx.recv().await {
                    match delivery {
                        Delivery::Event(event) => sink.deliver(event).await,
                        Delivery::Reconnected => sink.reconnected().await,
                    }
                    // Dropped while full: resync once the backlog is down to half (a resync
                    // reads what is true now; the older events still queued only repeat it).
                    if lost.load(Ordering::Acquire) && rx.len() <= capacity / 2 && lost.swap(false, Ordering::AcqRel) {
                        tracing::info!(family = ?family, "a sink that dropped events resyncs");
                        sink.reconnected().await;
                    }
                }
            });
        }
        Sinks { queues }
    }

    /// Hands an event of another process to its sink (from any thread); a
    /// [`Event::Resync`] tells every sink to resync.
    pub fn deliver(&self, event: Event) {
        let Some(family) = Family::of(&event) else {
            tracing::info!(process = event.origin(), "another process dropped events it meant to send; resyncing");
            self.reconnected();
            return;
        };
        let Some(queue) = self.queues.iter().find(|q| q.family == family) else { return };
        match queue.tx.try_send(Delivery::Event(event)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                queue.lost.store(true, Ordering::Release);
                queue.dropped.inc();
                if let Some(skipped) = queue.log.pass() {
                    tracing::warn!(family = ?family, dropped_since_last_line = skipped + 1,
                        "events of other processes dropped: their sink's queue is full; it resyncs once it has room");
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Tells every sink the other processes are heard again (from any thread).
    pub fn reconnected(&self) {
        for queue in &self.queues {
            if let Err(mpsc::error::TrySendError::Full(_)) = queue.tx.try_send(Delivery::Reconnected) {
                // The sink resyncs once its queue has room, all the same.
                queue.lost.store(true, Ordering::Release);
            }
        }
    }
}

/// Why the backplane the settings ask for cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(
        "LOREWIRE_REDIS_URL is set, but DATABASE_URL is SQLite: SQLite serves one process, which needs no \
         backplane. Unset LOREWIRE_REDIS_URL, or use PostgreSQL to run several processes"
    )]
    RedisWithSqlite,
    #[error(transparent)]
    BadRedisUrl(#[from] redis::BadRedisUrl),
}

/// The backplane a deployment uses: none for SQLite (one process); for processes sharing a
/// PostgreSQL database, Redis when `redis_url` is set, else PostgreSQL's own notifications.
/// With Redis, the store hands it the changes of committed transactions.
pub fn for_deployment(
    store: &crate::store::Store,
    database_url: &str,
    redis: Option<(&str, &str)>,
    origin: ProcessId,
    metrics: &Metrics,
) -> Result<Arc<dyn Backplane>, SetupError> {
    match (store.backend(), redis) {
        (crate::store::Backend::Sqlite, Some(_)) => Err(SetupError::RedisWithSqlite),
        (crate::store::Backend::Sqlite, None) => Ok(Arc::new(local::LocalBackplane)),
        (crate::store::Backend::Postgres, Some((url, prefix))) => {
            let backplane = redis::RedisBackplane::new(url, prefix, origin, metrics)?;
            store.announce_after_commit(backplane.after_commit());
            Ok(Arc::new(backplane))
        }
        (crate::store::Backend::Postgres, None) => {
            Ok(Arc::new(postgres::PgBackplane::new(database_url.to_owned(), origin, store.clone())))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::time::Duration;

    use futures_util::FutureExt;

    use super::*;

    /// Records what it hears; its first delivery is slow, to show the other sink does not wait.
    struct Recorder {
        family: Family,
        heard: Rc<RefCell<Vec<String>>>,
    }

    impl Sink for Recorder {
        fn family(&self) -> Family {
            self.family
        }
        fn deliver(&self, event: Event) -> LocalBoxFuture<'static, ()> {
            let heard = self.heard.clone();
            let family = self.family;
            async move {
                let first = heard.borrow().iter().all(|h| !h.starts_with(&format!("{family:?}")));
                if first && family == Family::Content {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let what = match &event {
                    Event::Content { subject_id, .. } => format!("{family:?} content {subject_id}"),
                    Event::RunCancel { run_id, .. } => format!("{family:?} cancel {run_id}"),
                    other => format!("{family:?} {other:?}"),
                };
                heard.borrow_mut().push(what);
            }
            .boxed_local()
        }
        fn reconnected(&self) -> LocalBoxFuture<'static, ()> {
            self.heard.borrow_mut().push(format!("{:?} reconnected", self.family));
            async {}.boxed_local()
        }
    }

    #[actix_rt::test]
    async fn each_sink_hears_its_family_in_order_without_waiting_for_the_others() {
        let heard = Rc::new(RefCell::new(Vec::new()));
        let sinks = Sinks::start(
            vec![
                Rc::new(Recorder { family: Family::Content, heard: heard.clone() }),
                Rc::new(Recorder { family: Family::Runs, heard: heard.clone() }),
            ],
            &Metrics::new(),
        );
        let content =
            |id: i64| Event::Content { origin: "o".into(), kind: "quest".into(), subject_id: id, version: 1, owner: 0 };
        // Delivered from another thread, as the PostgreSQL listener does.
        let from_listener = sinks.clone();
        std::thread::spawn(move || {
            from_listener.deliver(content(1));
            from_listener.deliver(content(2));
            from_listener.deliver(Event::RunCancel { origin: "o".into(), run_id: "r".into() });
            // No lobby sink is registered: its events are dropped, not queued forever.
            from_listener.deliver(Event::Alive { origin: "o".into() });
        })
        .join()
        .unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        sinks.reconnected();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let heard = heard.borrow().clone();
        assert_eq!(heard[0], "Runs cancel r", "the slow content sink held nobody back: {heard:?}");
        assert_eq!(&heard[1..3], ["Content content 1", "Content content 2"], "{heard:?}");
        assert_eq!(heard.len(), 5, "{heard:?}");
        assert!(heard[3..].iter().all(|h| h.ends_with("reconnected")), "{heard:?}");
        assert_eq!(Family::of(&Event::Hello { origin: "o".into() }), Some(Family::Lobby));
    }

    /// Holds its first event until `go` is notified, then records what it hears.
    struct Held {
        go: Rc<tokio::sync::Notify>,
        heard: Rc<RefCell<Vec<String>>>,
    }

    impl Sink for Held {
        fn family(&self) -> Family {
            Family::Content
        }
        fn deliver(&self, event: Event) -> LocalBoxFuture<'static, ()> {
            let (go, heard) = (self.go.clone(), self.heard.clone());
            async move {
                let Event::Content { subject_id, .. } = event else { panic!("{event:?}") };
                if subject_id == 1 {
                    go.notified().await;
                }
                heard.borrow_mut().push(subject_id.to_string());
            }
            .boxed_local()
        }
        fn reconnected(&self) -> LocalBoxFuture<'static, ()> {
            self.heard.borrow_mut().push("resync".into());
            async {}.boxed_local()
        }
    }

    #[actix_rt::test]
    async fn a_sink_whose_queue_overflowed_resyncs_once_it_has_room_and_the_drops_are_counted() {
        let heard = Rc::new(RefCell::new(Vec::new()));
        let go = Rc::new(tokio::sync::Notify::new());
        let metrics = Metrics::new();
        let sink = Rc::new(Held { go: go.clone(), heard: heard.clone() });
        let sinks = Sinks::with_capacity(vec![sink], &metrics, 2);
        let content =
            |id: i64| Event::Content { origin: "o".into(), kind: "quest".into(), subject_id: id, version: 1, owner: 0 };
        sinks.deliver(content(1));
        // The sink takes 1 and holds it; 2 and 3 fill the queue; 4, 5 and 6 find it full.
        tokio::time::sleep(Duration::from_millis(20)).await;
        for id in 2..=6 {
            sinks.deliver(content(id));
        }
        let dropped = metrics.backplane_dropped.with_label_values(&["sink_content"]);
        assert_eq!(dropped.get(), 3);
        assert!(heard.borrow().is_empty(), "{heard:?}");
        go.notify_one();
        tokio::time::sleep(Duration::from_millis(20)).await;
        // Room again after 2 (the queue down to half): one resync, then what was still queued.
        assert_eq!(*heard.borrow(), ["1", "2", "resync", "3"]);
        sinks.deliver(content(7));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(*heard.borrow(), ["1", "2", "resync", "3", "7"], "one resync per loss");
        // Another process that dropped what it meant to send has every sink resync.
        sinks.deliver(Event::Resync { origin: "o".into() });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(heard.borrow().last().map(String::as_str), Some("resync"));
        assert_eq!(heard.borrow().len(), 6);
        assert_eq!(dropped.get(), 3, "a resync drops nothing");
    }
}
