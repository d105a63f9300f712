//! The lobby: one global room. Owns presence (per user, over all their tabs), the chat rules
//! (validation, per-user rate), and the writing of messages with their durable mood job.
//!
//! Presence goes out as changes gathered over at most `presence_window` (never the whole list
//! to everyone); a session that joins gets the full list once, as its own reply. Never calls
//! the LLM (the LLM actor settles moods) and never holds a DB connection in the actor: the
//! actor only keeps presence in memory; store calls run in [`LobbyService`] on the blocking pool.

pub mod mood;
pub mod mood_job;
pub mod rate_limit;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;

pub use crate::domain::lobby::{
    validate_text, Message, Mood, MoodStatus, PresenceLeave, PresenceUser, MAX_MESSAGE_CHARS,
};

use crate::core::clock::SharedClock;
use crate::core::metrics::Metrics;
use crate::domain::wire::{ServerFrame, Typed};
use crate::hub::{self, Hub, Publish, SessionId, ToSession, Topic};
use crate::jobs::JobsAvailable;
use crate::store::messages::{self, MessageRow};
use crate::store::notify;
use crate::store::{Store, StoreError};
use rate_limit::RateLimiter;

/// `message:new` for everyone in the lobby.
pub fn new_message_publish(message: Message) -> Publish {
    let message_id = message.id;
    let frame: ServerFrame = Typed::MessageNew { message }.into();
    Publish { topic: Topic::Lobby, version: Some(message_id), text: frame.to_bytes() }
}

/// `message:mood_updated` for everyone in the lobby.
pub fn mood_publish(message: &Message) -> Publish {
    let frame: ServerFrame =
        Typed::MessageMoodUpdated { id: message.id, mood: message.mood, mood_status: message.mood_status }.into();
    Publish { topic: Topic::Lobby, version: None, text: frame.to_bytes() }
}

// ---------------------------------------------------------------------------------------------
// The actor: presence.

/// A session of `user_id` enters the lobby. Answers everyone online now (the joining user
/// included); the Lobby subscribes the session to [`Topic::Lobby`] before answering.
#[derive(Message)]
#[rtype(result = "Vec<PresenceUser>")]
pub struct Join {
    pub session: SessionId,
    pub user_id: i64,
    pub nickname: String,
    pub recipient: Recipient<ToSession>,
}

/// A session left (its socket closed).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Leave {
    pub session: SessionId,
}

/// The ids of the users online now, on every process (admin).
#[derive(Message)]
#[rtype(result = "HashSet<i64>")]
pub struct OnlineUsers;

/// Presence news from another process (PostgreSQL LISTEN/NOTIFY).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Remote(pub notify::Event);

/// This process's listener is (again) hearing the other processes.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ListenerReady;

/// How often a process says it is alive, and how long the others wait before they drop the
/// users of a process that went silent (it crashed).
const ALIVE_EVERY: Duration = Duration::from_secs(5);
const REMOTE_EXPIRES: Duration = Duration::from_secs(16);
/// Users per presence notification, so one stays under PostgreSQL's 8000-byte payload limit.
const USERS_PER_NOTIFICATION: usize = 40;

struct RemoteProcess {
    users: HashMap<i64, String>,
    heard: Instant,
}

struct Member {
    nickname: String,
    sessions: usize,
}

/// A session that joined since the last flush, and what its snapshot said about the users
/// whose change was still being gathered then (everyone else matched the last broadcast).
struct Fresh {
    recipient: Recipient<ToSession>,
    seen: Vec<(i64, bool)>,
}

pub struct Lobby {
    hub: Addr<Hub>,
    metrics: Arc<Metrics>,
    window: Duration,
    topic: Arc<Topic>,
    origin: Arc<str>,
    /// Set on PostgreSQL: presence is shared with the other processes through it.
    store: Option<Store>,
    sessions: HashMap<SessionId, i64>,
    /// Online on this process: user -> nickname and open sessions.
    online: HashMap<i64, Member>,
    /// Online on other processes, by process.
    remote: HashMap<String, RemoteProcess>,
    /// Local users whose online state changed since the last announcement (Some = online).
    to_announce: HashMap<i64, Option<String>>,
    /// Notifications waiting to be sent, one batch in flight at a time so they keep their order.
    outgoing: Vec<String>,
    sending: bool,
    /// Online as last broadcast.
    broadcast: HashMap<i64, String>,
    /// Users changed since the last broadcast.
    dirty: HashSet<i64>,
    fresh: Vec<Fresh>,
    flush_scheduled: bool,
}

impl Lobby {
    pub fn new(
        hub: Addr<Hub>,
        metrics: Arc<Metrics>,
        window: Duration,
        origin: Arc<str>,
        store: Option<Store>,
    ) -> Self {
        Lobby {
            hub,
            metrics,
            window,
            topic: Arc::new(Topic::Lobby),
            origin,
            store,
            sessions: HashMap::new(),
            online: HashMap::new(),
            remote: HashMap::new(),
            to_announce: HashMap::new(),
            outgoing: Vec::new(),
            sending: false,
            broadcast: HashMap::new(),
            dirty: HashSet::new(),
            fresh: Vec::new(),
            flush_scheduled: false,
        }
    }

    /// The nickname of `user_id` if they are online on any process.
    fn effective(&self, user_id: i64) -> Option<&String> {
        self.online
            .get(&user_id)
            .map(|m| &m.nickname)
            .or_else(|| self.remote.values().find_map(|p| p.users.get(&user_id)))
    }

    fn everyone(&self) -> Vec<PresenceUser> {
        let mut all: HashMap<i64, &String> = HashMap::new();
        for process in self.remote.values() {
            all.extend(process.users.iter().map(|(id, n)| (*id, n)));
        }
        all.extend(self.online.iter().map(|(id, m)| (*id, &m.nickname)));
        let mut list: Vec<PresenceUser> =
            all.into_iter().map(|(user_id, nickname)| PresenceUser { user_id, nickname: nickname.clone() }).collect();
        list.sort_by_key(|u| u.user_id);
        list
    }

    /// A local user came online or went offline here: tell the other processes at the next flush.
    fn local_changed(&mut self, user_id: i64, ctx: &mut Context<Self>) {
        if self.store.is_some() {
            let state = self.online.get(&user_id).map(|m| m.nickname.clone());
            self.to_announce.insert(user_id, state);
        }
        self.changed(user_id, ctx);
    }

    /// Queues presence notifications of `online` / `offline` users, chunked under the payload limit.
    fn queue_presence(&mut self, online: Vec<(i64, String)>, offline: Vec<i64>) {
        for chunk in online.chunks(USERS_PER_NOTIFICATION) {
            self.queue(&notify::Event::Presence {
                origin: self.origin.to_string(),
                online: chunk.to_vec(),
                offline: Vec::new(),
            });
        }
        for chunk in offline.chunks(USERS_PER_NOTIFICATION * 4) {
            self.queue(&notify::Event::Presence {
                origin: self.origin.to_string(),
                online: Vec::new(),
                offline: chunk.to_vec(),
            });
        }
    }

    fn queue(&mut self, event: &notify::Event) {
        if self.store.is_some() {
            self.outgoing.push(serde_json::to_string(event).expect("events serialize"));
        }
    }

    /// Sends the queued notifications in order, one batch at a time.
    fn send_notifications(&mut self, ctx: &mut Context<Self>) {
        let Some(store) = self.store.clone() else { return };
        if self.sending || self.outgoing.is_empty() {
            return;
        }
        self.sending = true;
        let batch = std::mem::take(&mut self.outgoing);
        ctx.spawn(async move { store.run(move |conn| notify::announce(conn, &batch)).await }.into_actor(self).map(
            |result, act, ctx| {
                act.sending = false;
                if let Err(e) = result {
                    tracing::warn!(error = %e, "could not announce presence to the other processes");
                }
                act.send_notifications(ctx);
            },
        ));
    }

    /// Says this process is alive and drops the users of processes that went silent.
    fn heartbeat(&mut self, ctx: &mut Context<Self>) {
        self.queue(&notify::Event::Alive { origin: self.origin.to_string() });
        self.send_notifications(ctx);
        let now = Instant::now();
        let gone: Vec<String> = self
            .remote
            .iter()
            .filter(|(_, p)| now.saturating_duration_since(p.heard) > REMOTE_EXPIRES)
            .map(|(o, _)| o.clone())
            .collect();
        for origin in gone {
            tracing::warn!(process = %origin, "no word from a lobby process; dropping its players");
            if let Some(process) = self.remote.remove(&origin) {
                for user_id in process.users.into_keys() {
                    self.changed(user_id, ctx);
                }
            }
        }
        self.gauges();
    }

    fn changed(&mut self, user_id: i64, ctx: &mut Context<Self>) {
        self.dirty.insert(user_id);
        if !self.flush_scheduled {
            self.flush_scheduled = true;
            ctx.run_later(self.window, |act, ctx| act.flush(ctx));
        }
    }

    fn gauges(&self) {
        self.metrics.lobby_sessions.set(self.sessions.len() as i64);
        self.metrics.online_users.set(self.online.len() as i64);
    }

    /// Broadcasts what changed since the last broadcast (a user who left and came back in
    /// between appears in neither list), then corrects the sessions that joined meanwhile
    /// where their snapshot and that broadcast disagree.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        self.flush_scheduled = false;
        if !self.to_announce.is_empty() {
            let mut online = Vec::new();
            let mut offline = Vec::new();
            for (user_id, state) in self.to_announce.drain() {
                match state {
                    Some(nickname) => online.push((user_id, nickname)),
                    None => offline.push(user_id),
                }
            }
            self.queue_presence(online, offline);
            self.send_notifications(ctx);
        }
        let mut joins = Vec::new();
        let mut leaves = Vec::new();
        for user_id in std::mem::take(&mut self.dirty) {
            match (self.effective(user_id).cloned(), self.broadcast.get(&user_id)) {
                (Some(nickname), seen) if seen != Some(&nickname) => {
                    joins.push(PresenceUser { user_id, nickname: nickname.clone() });
                    self.broadcast.insert(user_id, nickname);
                }
                (None, Some(_)) => {
                    leaves.push(PresenceLeave { user_id });
                    self.broadcast.remove(&user_id);
                }
                _ => {}
            }
        }
        joins.sort_by_key(|j| j.user_id);
        leaves.sort_by_key(|l| l.user_id);
        let in_update: HashSet<i64> = joins.iter().map(|j| j.user_id).chain(leaves.iter().map(|l| l.user_id)).collect();
        for fresh in std::mem::take(&mut self.fresh) {
            let mut fix_joins = Vec::new();
            let mut fix_leaves = Vec::new();
            for (user_id, was_online) in fresh.seen {
                let now_online = self.effective(user_id);
                if in_update.contains(&user_id) || now_online.is_some() == was_online {
                    continue;
                }
                match now_online {
                    Some(nickname) => fix_joins.push(PresenceUser { user_id, nickname: nickname.clone() }),
                    None => fix_leaves.push(PresenceLeave { user_id }),
                }
            }
            if fix_joins.is_empty() && fix_leaves.is_empty() {
                continue;
            }
            let frame: ServerFrame = Typed::PresenceUpdate { joins: fix_joins, leaves: fix_leaves }.into();
            let frame = ToSession::Frame { topic: self.topic.clone(), version: None, text: frame.to_bytes() };
            hub::deliver(&fresh.recipient, frame, &self.metrics);
        }
        if joins.is_empty() && leaves.is_empty() {
            return;
        }
        tracing::debug!(joins = joins.len(), leaves = leaves.len(), "presence update");
        self.metrics.presence_updates.inc();
        let frame: ServerFrame = Typed::PresenceUpdate { joins, leaves }.into();
        self.hub.do_send(Publish { topic: Topic::Lobby, version: None, text: frame.to_bytes() });
    }
}

impl Actor for Lobby {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Thousands of sessions may join at once; the mailbox must not refuse them.
        ctx.set_mailbox_capacity(100_000);
        if self.store.is_some() {
            ctx.run_interval(ALIVE_EVERY, |act, ctx| act.heartbeat(ctx));
        }
    }
}

impl Handler<Join> for Lobby {
    type Result = MessageResult<Join>;

    fn handle(&mut self, msg: Join, ctx: &mut Context<Self>) -> Self::Result {
        if self.sessions.insert(msg.session, msg.user_id).is_some() {
            // Joined twice: the first join stands.
            if let Some(m) = self.online.get_mut(&msg.user_id) {
                m.sessions -= 1;
            }
        }
        let member =
            self.online.entry(msg.user_id).or_insert_with(|| Member { nickname: msg.nickname.clone(), sessions: 0 });
        member.sessions += 1;
        let first_here = member.sessions == 1;
        let renamed = member.nickname != msg.nickname;
        member.nickname = msg.nickname;
        if first_here || renamed {
            self.local_changed(msg.user_id, ctx);
        } else if !self.broadcast.contains_key(&msg.user_id) {
            self.changed(msg.user_id, ctx);
        }
        let seen = self.dirty.iter().map(|u| (*u, self.effective(*u).is_some())).collect();
        self.fresh.push(Fresh { recipient: msg.recipient, seen });
        // Sent before any later lobby publish of this actor, so the session misses none of them.
        self.hub.do_send(hub::Subscribe { id: msg.session, topic: Topic::Lobby });
        self.gauges();
        MessageResult(self.everyone())
    }
}

impl Handler<Leave> for Lobby {
    type Result = ();

    fn handle(&mut self, msg: Leave, ctx: &mut Context<Self>) {
        let Some(user_id) = self.sessions.remove(&msg.session) else { return };
        let gone = match self.online.get_mut(&user_id) {
            Some(member) => {
                member.sessions = member.sessions.saturating_sub(1);
                member.sessions == 0
            }
            None => false,
        };
        if gone {
            self.online.remove(&user_id);
            self.local_changed(user_id, ctx);
        }
        self.gauges();
    }
}

impl Handler<OnlineUsers> for Lobby {
    type Result = MessageResult<OnlineUsers>;
    fn handle(&mut self, _: OnlineUsers, _: &mut Context<Self>) -> Self::Result {
        let mut ids: HashSet<i64> = self.online.keys().copied().collect();
        for process in self.remote.values() {
            ids.extend(process.users.keys().copied());
        }
        MessageResult(ids)
    }
}

impl Handler<Remote> for Lobby {
    type Result = ();

    fn handle(&mut self, Remote(event): Remote, ctx: &mut Context<Self>) {
        let origin = event.origin().to_owned();
        if *origin == *self.origin {
            return;
        }
        let process =
            self.remote.entry(origin).or_insert_with(|| RemoteProcess { users: HashMap::new(), heard: Instant::now() });
        process.heard = Instant::now();
        match event {
            notify::Event::Presence { online, offline, .. } => {
                let mut touched = Vec::with_capacity(online.len() + offline.len());
                for (user_id, nickname) in online {
                    process.users.insert(user_id, nickname);
                    touched.push(user_id);
                }
                for user_id in offline {
                    process.users.remove(&user_id);
                    touched.push(user_id);
                }
                for user_id in touched {
                    self.changed(user_id, ctx);
                }
            }
            notify::Event::Hello { .. } => {
                // A process (re)joined: tell it who is online here.
                let everyone: Vec<(i64, String)> =
                    self.online.iter().map(|(id, m)| (*id, m.nickname.clone())).collect();
                self.queue_presence(everyone, Vec::new());
                self.send_notifications(ctx);
            }
            _ => {}
        }
        self.gauges();
    }
}

impl Handler<ListenerReady> for Lobby {
    type Result = ();

    fn handle(&mut self, _: ListenerReady, ctx: &mut Context<Self>) {
        self.queue(&notify::Event::Hello { origin: self.origin.to_string() });
        self.send_notifications(ctx);
    }
}

crate::stoppable!(Lobby);

// ---------------------------------------------------------------------------------------------
// The service: what sessions and handlers call.

/// Why a `message:send` was refused.
#[derive(Debug, thiserror::Error)]
pub enum SendRefused {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    RateLimited(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Clone)]
pub struct LobbyService {
    origin: Arc<str>,
    store: Store,
    clock: SharedClock,
    hub: Addr<Hub>,
    llm: Recipient<JobsAvailable>,
    lobby: Addr<Lobby>,
    metrics: Arc<Metrics>,
    history_limit: i64,
    limiter: Arc<Mutex<RateLimiter>>,
}

impl LobbyService {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        origin: Arc<str>,
        store: Store,
        clock: SharedClock,
        hub: Addr<Hub>,
        llm: Recipient<JobsAvailable>,
        lobby: Addr<Lobby>,
        metrics: Arc<Metrics>,
        config: &crate::core::config::Config,
    ) -> Self {
        LobbyService {
            origin,
            store,
            clock,
            hub,
            llm,
            lobby,
            metrics,
            history_limit: i64::from(config.history_limit),
            limiter: Arc::new(Mutex::new(RateLimiter::new(config.chat_rate))),
        }
    }

    pub fn addr(&self) -> &Addr<Lobby> {
        &self.lobby
    }

    /// Enters the lobby: everyone online, then the history read after the subscription is in
    /// place (so every message is in the history or arrives as `message:new`, or both).
    pub async fn join(&self, join: Join) -> Result<(Vec<PresenceUser>, Vec<Message>), StoreError> {
        let online = self.lobby.send(join).await.map_err(|_| StoreError::Canceled)?;
        let limit = self.history_limit;
        let rows = self.store.run(move |conn| messages::recent(conn, limit)).await?;
        Ok((online, rows.iter().map(MessageRow::message).collect()))
    }

    pub fn leave(&self, session: SessionId) {
        self.lobby.do_send(Leave { session });
    }

    /// Validates and rate-limits a message of `user_id` (across all their tabs); the text to store.
    pub fn admit(&self, user_id: i64, raw: &str) -> Result<String, SendRefused> {
        let text = validate_text(raw).map_err(SendRefused::Invalid)?;
        let allowed = self.limiter.lock().unwrap_or_else(|e| e.into_inner()).check(user_id, Instant::now());
        if let Err(wait) = allowed {
            self.metrics.lobby_rate_limited.inc();
            let secs = wait.as_secs_f64().max(0.1);
            return Err(SendRefused::RateLimited(format!("too many messages; try again in {secs:.1} s")));
        }
        Ok(text)
    }

    /// Stores an admitted message with its mood job, then tells everyone and wakes the LLM actor.
    pub async fn post(&self, user_id: i64, nickname: String, text: String) -> Result<Message, StoreError> {
        let now = self.clock.now_naive();
        let origin = self.origin.clone();
        let row = self.store.run(move |conn| messages::insert(conn, &origin, user_id, &nickname, &text, now)).await?;
        let message = row.message();
        self.metrics.lobby_messages.inc();
        tracing::info!(message = message.id, user = user_id, "lobby message");
        self.hub.do_send(new_message_publish(message.clone()));
        self.llm.do_send(JobsAvailable);
        Ok(message)
    }
}
