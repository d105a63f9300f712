//! The backplane over Redis pub/sub, for processes sharing one PostgreSQL database that would
//! rather keep fan-out off it (`LOREWIRE_REDIS_URL`).
//!
//! Every event goes out on one channel, `{prefix}events`, as the same JSON the other
//! backplanes carry. Changes of rows are handed over by the store once their transaction has
//! committed ([`crate::store::Store::announce_after_commit`]); everything else (presence, run
//! frames) through [`Backplane::publish`]. Both go into one queue that one publisher task drains
//! in order, pipelining what has gathered, so the events of this process reach the others in the
//! order they happened. One subscriber connection hears the others (its own events are
//! dropped); it reconnects on its own with backoff, and each time it is back the sinks are told
//! (events sent meanwhile are lost: Redis holds nothing that cannot be rebuilt).
//!
//! Each process keeps its players in a hash of its own, `{prefix}presence:{origin}`, whose expiry
//! every announcement and heartbeat pushes back 3.5 s: a process that dies leaves none behind,
//! and one that (re)connects reads everyone's at once. The announcements on the channel still
//! carry every change as it happens.
//!
//! The chat rate is one sliding window per user in Redis (a sorted set, read and written by one
//! Lua script), so two tabs on two processes share `LOREWIRE_CHAT_RATE`.
//!
//! Redis down never stops local play: publishing fails fast, the failure is logged once per
//! outage, and the events are dropped; the chat rate falls back to each process's own window.
//! The publisher's queue is bounded ([`PUBLISH_QUEUE`]): what it drops, like what a failed
//! publish drops, is followed by an [`Event::Resync`] that has the others resync as after a
//! reconnect.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::LocalBoxFuture;

use crate::core::process::ProcessId;
use futures_util::{FutureExt, StreamExt};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::{mpsc, watch};

use super::{Backplane, BackplaneError, Event, Liveness, Sinks};
use crate::core::logging::Throttle;
use crate::core::metrics::Metrics;

/// Longest wait for Redis to connect or answer before a publish or a subscription gives up.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);
/// A process's presence key lives this long after its last announcement or heartbeat (see
/// `liveness`: a heartbeat a second, dropped after 3.5 s of silence).
const PRESENCE_TTL_MS: i64 = 3500;
/// Longest a chat message waits on the shared rate window before this process decides alone.
const ADMIT_TIMEOUT: Duration = Duration::from_millis(250);
/// A sliding window in a sorted set (one member per accepted event, scored by Redis's clock in
/// ms): drops what is older than the window, refuses when full (answering the ms until the
/// oldest leaves it), else adds the event; -1 means accepted. KEYS[1] the window; ARGV: window
/// ms, count, a unique member.
const SLIDING_WINDOW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return math.max(1, tonumber(oldest[2]) + window - now)
end
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('PEXPIRE', KEYS[1], window)
return -1
";
/// Backoff of the subscriber's reconnects.
const RECONNECT_FIRST: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

pub struct RedisBackplane {
    client: redis::Client,
    /// Commands (publishes, rate windows): one multiplexed connection that reconnects by itself.
    commands: ConnectionManager,
    /// `{prefix}`, for keys.
    prefix: String,
    /// `{prefix}events`.
    channel: String,
    /// `{prefix}presence:{origin}`: this process's players (user id -> nickname), kept as long
    /// as its heartbeat refreshes the key's expiry.
    presence_key: String,
    origin: ProcessId,
    queue: PublishQueue,
    /// The queue's other end, until the publisher task takes it.
    pending: Mutex<Option<mpsc::Receiver<Vec<Event>>>>,
    up: Arc<AtomicBool>,
    stop: watch::Sender<bool>,
    /// Disconnected once the publisher has sent what was queued at the stop.
    publisher_done: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
}

/// Why the Redis settings cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("LOREWIRE_REDIS_URL is not a Redis URL: {0}")]
pub struct BadRedisUrl(String);

impl RedisBackplane {
    /// Checks the URL; connects only later, in the background (Redis may come up after us).
    pub fn new(url: &str, prefix: &str, origin: ProcessId, metrics: &Metrics) -> Result<Self, BadRedisUrl> {
        let client = redis::Client::open(url).map_err(|e| BadRedisUrl(e.to_string()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(RECONNECT_MAX);
        let commands =
            ConnectionManager::new_lazy_with_config(client.clone(), config).map_err(|e| BadRedisUrl(e.to_string()))?;
        let (queue, pending) = PublishQueue::new(PUBLISH_QUEUE, metrics);
        Ok(RedisBackplane {
            client,
            commands,
            prefix: prefix.to_owned(),
            channel: format!("{prefix}events"),
            presence_key: format!("{prefix}presence:{origin}"),
            origin,
            queue,
            pending: Mutex::new(Some(pending)),
            up: Arc::new(AtomicBool::new(false)),
            stop: watch::channel(false).0,
            publisher_done: Mutex::new(None),
        })
    }

    /// What the store calls with the events of each committed transaction (from its threads).
    pub fn after_commit(&self) -> crate::store::AfterCommit {
        let queue = self.queue.clone();
        Arc::new(move |events| {
            let _ = queue.push(events);
        })
    }

    /// Starts the publisher task (once; on the actix system).
    fn start_publisher(&self) {
        let Some(mut pending) = self.pending.lock().unwrap_or_else(|e| e.into_inner()).take() else { return };
        let manager = self.commands.clone();
        let channel = self.channel.clone();
        let (presence_key, origin) = (self.presence_key.clone(), self.origin.clone());
        let lost = self.queue.lost.clone();
        let mut stop = self.stop.subscribe();
        let (done, finished) = std::sync::mpsc::channel::<()>();
        *self.publisher_done.lock().unwrap_or_else(|e| e.into_inner()) = Some(finished);
        actix::spawn(async move {
            // Dropped when the publisher ends: `stop` waits for it.
            let _done = done;
            let mut manager = manager;
            let mut failing = false;
            loop {
                // What is queued goes out before a stop is heeded; a stop sends what is left.
                let (mut batch, stopping) = tokio::select! {
                    biased;
                    batch = pending.recv() => match batch {
                        Some(batch) => (batch, false),
                        None => return,
                    },
                    _ = stop.changed() => (Vec::new(), true),
                };
                // Whatever else has gathered goes in the same round trip, and after it the
                // news that events were dropped, if they were.
                gather(&mut pending, &mut batch, &lost, &origin);
                if !batch.is_empty() {
                    let mut pipe = redis::pipe();
                    for event in &batch {
                        pipe.publish(&channel, event.to_json()).ignore();
                        keep_presence(&mut pipe, event, &presence_key, &origin);
                    }
                    match pipe.query_async::<()>(&mut manager).await {
                        Ok(()) => {
                            if failing {
                                tracing::info!("Redis takes this process's events again");
                                failing = false;
                            }
                        }
                        Err(e) => {
                            // The others resync once Redis takes events again.
                            lost.store(true, Ordering::Release);
                            if !failing {
                                tracing::warn!(error = %e, events = batch.len(),
                                    "Redis does not take this process's events; they are dropped while it is away");
                                failing = true;
                            }
                        }
                    }
                }
                if stopping {
                    return;
                }
            }
        });
    }
}

/// Batches of events (a transaction's changes, a gather of run frames, a presence change)
/// waiting for the publisher, at most: many seconds of this process's changes while Redis is
/// slow (one round trip takes everything gathered). Past it the events are dropped and the
/// others are sent an [`Event::Resync`] once the queue has room: they resync as after a
/// reconnect, which is all a Redis outage leaves them too.
pub const PUBLISH_QUEUE: usize = 4096;
/// At most one log line this often about dropped events (the metric counts them all).
const DROP_LOG_EVERY: Duration = Duration::from_secs(10);

/// The publisher's queue, as its producers (the store's threads, the services) see it.
#[derive(Clone)]
struct PublishQueue {
    tx: mpsc::Sender<Vec<Event>>,
    /// Events were dropped (at the full queue, or by a failed publish): the next round trip
    /// ends with an [`Event::Resync`].
    lost: Arc<AtomicBool>,
    dropped: prometheus::IntCounter,
    log: Arc<Throttle>,
}

impl PublishQueue {
    fn new(capacity: usize, metrics: &Metrics) -> (Self, mpsc::Receiver<Vec<Event>>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let queue = PublishQueue {
            tx,
            lost: Arc::new(AtomicBool::new(false)),
            dropped: metrics.backplane_dropped.with_label_values(&["publisher"]),
            log: Arc::new(Throttle::new(DROP_LOG_EVERY)),
        };
        (queue, rx)
    }

    /// Queues `events` (from any thread); `Err` once the publisher has stopped.
    fn push(&self, events: Vec<Event>) -> Result<(), ()> {
        if events.is_empty() {
            return Ok(());
        }
        match self.tx.try_send(events) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(events)) => {
                self.lost.store(true, Ordering::Release);
                self.dropped.inc_by(events.len() as u64);
                if let Some(skipped) = self.log.pass() {
                    tracing::warn!(events = events.len(), dropped_since_last_line = skipped + 1,
                        "events for the other processes dropped: the queue to Redis is full; they resync once it has room");
                }
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(()),
        }
    }
}

/// Adds every batch queued now to `batch`; then, when events were dropped since the last
/// round trip, an [`Event::Resync`] of `origin` after them.
fn gather(pending: &mut mpsc::Receiver<Vec<Event>>, batch: &mut Vec<Event>, lost: &AtomicBool, origin: &str) {
    while let Ok(more) = pending.try_recv() {
        batch.extend(more);
    }
    if lost.swap(false, Ordering::AcqRel) {
        batch.push(Event::Resync { origin: origin.to_owned() });
    }
}

/// Mirrors this process's own presence news into its presence key: who comes and goes, and
/// the key's expiry pushed back by every announcement and heartbeat.
fn keep_presence(pipe: &mut redis::Pipeline, event: &Event, key: &str, origin: &str) {
    if event.origin() != origin {
        return;
    }
    match event {
        Event::Presence { online, offline, .. } => {
            for (user_id, nickname) in online {
                pipe.hset(key, user_id, nickname).ignore();
            }
            if !offline.is_empty() {
                pipe.hdel(key, offline).ignore();
            }
        }
        Event::Alive { .. } => {}
        _ => return,
    }
    pipe.pexpire(key, PRESENCE_TTL_MS).ignore();
}

/// The players the other processes keep in Redis, as the presence news they stand for.
async fn stored_presence(commands: &mut ConnectionManager, prefix: &str, own: &str) -> redis::RedisResult<Vec<Event>> {
    let pattern = format!("{prefix}presence:*");
    let mut keys: Vec<String> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(100)
            .query_async(commands)
            .await?;
        keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let mut events = Vec::new();
    for key in keys {
        let Some(origin) = key.strip_prefix(&format!("{prefix}presence:")).map(str::to_owned) else { continue };
        if origin == own {
            continue;
        }
        let users: Vec<(i64, String)> = redis::cmd("HGETALL").arg(&key).query_async(commands).await?;
        if !users.is_empty() {
            events.push(Event::Presence { origin, online: users, offline: Vec::new() });
        }
    }
    Ok(events)
}

impl Backplane for RedisBackplane {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn shared(&self) -> bool {
        true
    }

    /// Queues the events for the publisher; at a full queue they are dropped (counted, and the
    /// others resync once the queue has room: see [`PUBLISH_QUEUE`]).
    fn publish(&self, events: Vec<Event>) -> LocalBoxFuture<'static, Result<(), BackplaneError>> {
        let sent = self.queue.push(events);
        async move { sent.map_err(|_| BackplaneError("the Redis publisher has stopped".into())) }.boxed_local()
    }

    fn listen(&self, sinks: Sinks) {
        self.start_publisher();
        let (client, channel, origin, up) =
            (self.client.clone(), self.channel.clone(), self.origin.clone(), self.up.clone());
        let (mut commands, prefix) = (self.commands.clone(), self.prefix.clone());
        let mut stop = self.stop.subscribe();
        actix::spawn(async move {
            let mut wait = RECONNECT_FIRST;
            let mut connected_before = false;
            loop {
                let subscribed = tokio::time::timeout(REDIS_TIMEOUT, async {
                    let mut pubsub = client.get_async_pubsub().await?;
                    pubsub.subscribe(&channel).await?;
                    Ok::<_, redis::RedisError>(pubsub)
                })
                .await;
                match subscribed {
                    Ok(Ok(pubsub)) => {
                        up.store(true, Ordering::Relaxed);
                        wait = RECONNECT_FIRST;
                        if connected_before {
                            tracing::info!("Redis subscriber reconnected; events sent meanwhile were lost");
                        }
                        connected_before = true;
                        // Now that this process hears the others, the sinks may ask them for what they hold,
                        // and the players the others keep in Redis are known at once.
                        sinks.reconnected();
                        match stored_presence(&mut commands, &prefix, &origin).await {
                            Ok(events) => events.into_iter().for_each(|event| sinks.deliver(event)),
                            Err(e) => {
                                tracing::warn!(error = %e, "cannot read the presence kept in Redis; asking the processes")
                            }
                        }
                        let mut messages = pubsub.into_on_message();
                        loop {
                            let message = tokio::select! {
                                message = messages.next() => message,
                                _ = stop.changed() => {
                                    up.store(false, Ordering::Relaxed);
                                    return;
                                }
                            };
                            let Some(message) = message else { break };
                            match serde_json::from_slice::<Event>(message.get_payload_bytes()) {
                                Ok(event) if event.origin() == origin.as_str() => {}
                                Ok(event) => sinks.deliver(event),
                                Err(e) => tracing::warn!(error = %e, "unreadable event on the Redis channel"),
                            }
                        }
                        up.store(false, Ordering::Relaxed);
                        tracing::warn!("Redis subscriber lost its connection; reconnecting");
                    }
                    Ok(Err(e)) => {
                        if connected_before || wait == RECONNECT_FIRST {
                            tracing::warn!(error = %e, "cannot subscribe on Redis; retrying");
                        }
                    }
                    Err(_) => tracing::warn!("Redis did not answer the subscription in time; retrying"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => return,
                }
                wait = (wait * 2).min(RECONNECT_MAX);
            }
        });
    }

    fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// A heartbeat a second costs Redis nothing: the players of a process killed with -9 leave
    /// everyone else's presence within 5 s (3.5 s of silence, checked every second).
    fn liveness(&self) -> Liveness {
        Liveness { every: Duration::from_secs(1), expires: Duration::from_millis(3500) }
    }

    /// One Lua script per admission, so the window is read and written atomically; Redis's own
    /// clock, so the processes' clocks need not agree.
    fn admit_as(
        &self,
        key: String,
        member: String,
        count: u32,
        per: Duration,
    ) -> LocalBoxFuture<'static, Option<Result<(), Duration>>> {
        if !self.is_up() {
            return async { None }.boxed_local();
        }
        let mut commands = self.commands.clone();
        let key = format!("{}rate:{key}", self.prefix);
        async move {
            static SCRIPT: std::sync::LazyLock<redis::Script> =
                std::sync::LazyLock::new(|| redis::Script::new(SLIDING_WINDOW));
            let mut invocation = SCRIPT.key(key);
            invocation.arg(u64::try_from(per.as_millis()).unwrap_or(u64::MAX)).arg(count).arg(member);
            let call = invocation.invoke_async::<i64>(&mut commands);
            match tokio::time::timeout(ADMIT_TIMEOUT, call).await {
                Ok(Ok(wait_ms)) if wait_ms < 0 => Some(Ok(())),
                Ok(Ok(wait_ms)) => Some(Err(Duration::from_millis(wait_ms.unsigned_abs()))),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "Redis cannot keep a shared rate now; this process counts on its own");
                    None
                }
                Err(_) => {
                    tracing::warn!("Redis did not answer a shared rate in time; this process counts on its own");
                    None
                }
            }
        }
        .boxed_local()
    }

    fn forget(&self, key: String, member: String) {
        if !self.is_up() {
            return;
        }
        let mut commands = self.commands.clone();
        let key = format!("{}rate:{key}", self.prefix);
        actix::spawn(async move {
            let mut zrem = redis::cmd("ZREM");
            zrem.arg(&key).arg(&member);
            if let Ok(Err(e)) = tokio::time::timeout(ADMIT_TIMEOUT, zrem.query_async::<i64>(&mut commands)).await {
                tracing::warn!(error = %e, "Redis could not give a counted start back");
            }
        });
    }

    /// Stops hearing, and waits (a little longer than one Redis timeout at most) until the
    /// events queued so far, such as those of jobs that finished during the drain, are sent.
    fn stop(&self) {
        let _ = self.stop.send(true);
        self.up.store(false, Ordering::Relaxed);
        let finished = self.publisher_done.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(finished) = finished {
            let _ = finished.recv_timeout(REDIS_TIMEOUT + Duration::from_millis(500));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_publish_queue_drops_counts_and_has_the_others_resync_after_what_was_queued() {
        let metrics = Metrics::new();
        let (queue, mut pending) = PublishQueue::new(2, &metrics);
        let alive = |o: &str| Event::Alive { origin: o.into() };
        queue.push(vec![alive("a")]).unwrap();
        queue.push(vec![alive("b")]).unwrap();
        // Full: these two are dropped, counted as events.
        queue.push(vec![alive("c"), alive("d")]).unwrap();
        assert_eq!(metrics.backplane_dropped.with_label_values(&["publisher"]).get(), 2);
        let mut batch = Vec::new();
        gather(&mut pending, &mut batch, &queue.lost, "p1");
        assert_eq!(batch, [alive("a"), alive("b"), Event::Resync { origin: "p1".into() }]);
        // Room again: nothing is dropped, and the resync was said once.
        queue.push(vec![alive("e")]).unwrap();
        let mut batch = Vec::new();
        gather(&mut pending, &mut batch, &queue.lost, "p1");
        assert_eq!(batch, [alive("e")]);
        assert_eq!(metrics.backplane_dropped.with_label_values(&["publisher"]).get(), 2);
        drop(pending);
        assert!(queue.push(vec![alive("f")]).is_err(), "the publisher has stopped");
    }
}
