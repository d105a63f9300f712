//! Presence: who is in the lobby, per user over all their tabs, on this process and (through
//! the backplane) on the others. The [`Lobby`] actor keeps it in memory only: it never touches
//! the database and never calls the LLM.
//!
//! Presence goes out as changes gathered over at most `presence_window` (never the whole list to
//! everyone); a session that joins gets the full list once, as its own reply. When the backplane
//! is shared, this process announces its own players' changes, says it is alive every few
//! seconds, and drops the players of a process that went silent (it died).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::backplane::Backplane;
use crate::core::metrics::Metrics;
use crate::domain::events::Event;
use crate::domain::lobby::{PresenceLeave, PresenceUser};
use crate::domain::wire::{ServerFrame, Typed};
use crate::hub::{self, Hub, Publish, SessionId, ToSession, Topic};

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

/// Presence news from another process (heard on the backplane).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Remote(pub Event);

/// This process's backplane is (again) hearing the other processes.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ListenerReady;

/// How often a process says it is alive, and how long the others wait before they drop the
/// users of a process that went silent (it crashed).
const ALIVE_EVERY: Duration = Duration::from_secs(5);
const REMOTE_EXPIRES: Duration = Duration::from_secs(16);
/// Users per presence event, so one stays under the backplane's event size limit.
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
    /// Presence is shared with the other processes through it (when it is shared).
    backplane: Arc<dyn Backplane>,
    sessions: HashMap<SessionId, i64>,
    /// Online on this process: user -> nickname and open sessions.
    online: HashMap<i64, Member>,
    /// Online on other processes, by process.
    remote: HashMap<String, RemoteProcess>,
    /// Local users whose online state changed since the last announcement (Some = online).
    to_announce: HashMap<i64, Option<String>>,
    /// Events waiting to be sent, one batch in flight at a time so they keep their order.
    outgoing: Vec<Event>,
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
        backplane: Arc<dyn Backplane>,
    ) -> Self {
        Lobby {
            hub,
            metrics,
            window,
            topic: Arc::new(Topic::Lobby),
            origin,
            backplane,
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
        if self.backplane.shared() {
            let state = self.online.get(&user_id).map(|m| m.nickname.clone());
            self.to_announce.insert(user_id, state);
        }
        self.changed(user_id, ctx);
    }

    /// Queues presence notifications of `online` / `offline` users, chunked under the payload limit.
    fn queue_presence(&mut self, online: Vec<(i64, String)>, offline: Vec<i64>) {
        for chunk in online.chunks(USERS_PER_NOTIFICATION) {
            self.queue(Event::Presence {
                origin: self.origin.to_string(),
                online: chunk.to_vec(),
                offline: Vec::new(),
            });
        }
        for chunk in offline.chunks(USERS_PER_NOTIFICATION * 4) {
            self.queue(Event::Presence {
                origin: self.origin.to_string(),
                online: Vec::new(),
                offline: chunk.to_vec(),
            });
        }
    }

    fn queue(&mut self, event: Event) {
        if self.backplane.shared() {
            self.outgoing.push(event);
        }
    }

    /// Sends the queued notifications in order, one batch at a time.
    fn send_notifications(&mut self, ctx: &mut Context<Self>) {
        if self.sending || self.outgoing.is_empty() {
            return;
        }
        self.sending = true;
        let batch = std::mem::take(&mut self.outgoing);
        ctx.spawn(self.backplane.publish(batch).into_actor(self).map(|result, act, ctx| {
            act.sending = false;
            if let Err(e) = result {
                tracing::warn!(error = %e, "could not announce presence to the other processes");
            }
            act.send_notifications(ctx);
        }));
    }

    /// Says this process is alive and drops the users of processes that went silent.
    fn heartbeat(&mut self, ctx: &mut Context<Self>) {
        self.queue(Event::Alive { origin: self.origin.to_string() });
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
        if self.backplane.shared() {
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
            Event::Presence { online, offline, .. } => {
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
            Event::Hello { .. } => {
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
        self.queue(Event::Hello { origin: self.origin.to_string() });
        self.send_notifications(ctx);
    }
}

crate::stoppable!(Lobby);
