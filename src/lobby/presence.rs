//! Presence: who is in the lobby, per user over all their tabs, on this process and (through
//! the backplane) on the others. The [`Presence`] actor keeps it in memory only: it never touches
//! the database and never calls the LLM.
//!
//! Presence goes out as changes gathered over at most `presence_window` (never the whole list to
//! everyone). Everyone online on every process is kept in one ordered map by `user_id`, updated
//! once per window, so a join costs O(log n) in the number online: a joining session gets the
//! lowest `presence_list_max` users of it (built once per window for all who joined in it) and
//! pages through the rest with `presence:list`. Above `presence_list_max` the updates carry only
//! the count, at most once a second; when the count comes back to it, everyone in the lobby gets
//! the whole (short) list again once, as a `presence:state`.
//!
//! When the backplane is shared, this process announces its own players' changes, says it is
//! alive every few seconds, and drops the players of a process that went silent (it died); the
//! bookkeeping of that is `lobby::peers`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytestring::ByteString;
use tokio::sync::oneshot;

use super::peers::Peers;
use crate::backplane::Backplane;
use crate::core::metrics::Metrics;
use crate::core::process::ProcessId;
use crate::domain::events::Event;
use crate::domain::lobby::{PresenceLeave, PresenceUser};
use crate::domain::wire::{ServerFrame, Typed};
use crate::hub::{self, Hub, Publish, SessionId, Topic};

/// A session of `user_id` enters the lobby. The presence actor subscribes the session to
/// [`Topic::Lobby`] at once and answers with its [`PendingState`].
#[derive(Message)]
#[rtype(result = "PendingState")]
pub struct Join {
    pub session: SessionId,
    pub user_id: i64,
    pub nickname: String,
}

/// The `presence:state` of a joining session, as of the end of the window its join falls in
/// (so it lists the joining user); the frames of the lobby in between are to be held back.
pub struct PendingState(oneshot::Receiver<ByteString>);

impl PendingState {
    /// The frame to send; `None` if the lobby stopped first.
    pub async fn ready(self) -> Option<ByteString> {
        self.0.await.ok()
    }
}

/// The next page of everyone online: at most `presence_list_max` users with a `user_id` above
/// `after_user_id`, ascending.
#[derive(Message)]
#[rtype(result = "PresencePage")]
pub struct Page {
    pub after_user_id: i64,
}

/// One page of everyone online; `next_after_user_id` is the last listed id when more follow.
#[derive(Debug)]
pub struct PresencePage {
    pub online: Vec<PresenceUser>,
    pub next_after_user_id: Option<i64>,
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
pub struct OnlinePlayers;

/// Presence news from another process (heard on the backplane).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Remote(pub Event);

/// This process's backplane is (again) hearing the other processes.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ListenerReady;

/// After the backplane hears the others again, how long their answers to this process's hello
/// are given before every session gets the whole list again.
const RESYNC_AFTER: Duration = Duration::from_millis(500);
/// Above the list maximum, the count goes out at most this often.
const COUNT_EVERY: Duration = Duration::from_secs(1);

struct Member {
    nickname: String,
    sessions: usize,
}

pub struct Presence {
    hub: Addr<Hub>,
    metrics: Arc<Metrics>,
    window: Duration,
    list_max: usize,
    /// What the other processes say is online there, and what this one has to tell them.
    peers: Peers,
    sessions: HashMap<SessionId, i64>,
    /// Online on this process: user -> nickname and open sessions.
    online: HashMap<i64, Member>,
    /// Everyone online on every process as of the last flush, by user_id: what states, pages,
    /// counts and updates say.
    view: BTreeMap<i64, String>,
    /// The `presence:state` of `view`, built once until `view` changes.
    state_frame: Option<ByteString>,
    /// Users changed since the last flush.
    dirty: HashSet<i64>,
    /// Joins waiting for the flush of their window, to be answered its `presence:state`.
    waiting: Vec<oneshot::Sender<ByteString>>,
    flush_scheduled: bool,
    /// The lobby's sessions hold the whole list and are told every change (the count was at or
    /// below the list maximum at every flush since the last full state).
    listing: bool,
    /// The last `online_count` sent to the lobby, and when a count-only frame last went out.
    told_count: usize,
    count_sent_at: Option<Instant>,
    count_scheduled: bool,
}

impl Presence {
    pub fn new(
        hub: Addr<Hub>,
        metrics: Arc<Metrics>,
        window: Duration,
        list_max: usize,
        origin: ProcessId,
        backplane: Arc<dyn Backplane>,
    ) -> Self {
        Presence {
            hub,
            metrics,
            window,
            list_max: list_max.max(1),
            peers: Peers::new(origin, backplane),
            sessions: HashMap::new(),
            online: HashMap::new(),
            view: BTreeMap::new(),
            state_frame: None,
            dirty: HashSet::new(),
            waiting: Vec::new(),
            flush_scheduled: false,
            listing: true,
            told_count: 0,
            count_sent_at: None,
            count_scheduled: false,
        }
    }

    /// The nickname of `user_id` if they are online on any process.
    fn effective(&self, user_id: i64) -> Option<&String> {
        self.online.get(&user_id).map(|m| &m.nickname).or_else(|| self.peers.nickname(user_id))
    }

    /// `presence:state` of the lowest `list_max` users of the view.
    fn state(&mut self) -> ByteString {
        let (view, list_max) = (&self.view, self.list_max);
        self.state_frame
            .get_or_insert_with(|| {
                let online = view
                    .iter()
                    .take(list_max)
                    .map(|(id, nickname)| PresenceUser { user_id: *id, nickname: nickname.clone() })
                    .collect();
                let frame: ServerFrame =
                    Typed::PresenceState { online, online_count: view.len(), complete: view.len() <= list_max }.into();
                frame.to_bytes()
            })
            .clone()
    }

    fn page(&self, after_user_id: i64) -> PresencePage {
        let mut online: Vec<PresenceUser> = self
            .view
            .range((Bound::Excluded(after_user_id), Bound::Unbounded))
            .take(self.list_max + 1)
            .map(|(id, nickname)| PresenceUser { user_id: *id, nickname: nickname.clone() })
            .collect();
        let more = online.len() > self.list_max;
        online.truncate(self.list_max);
        let next_after_user_id = if more { online.last().map(|u| u.user_id) } else { None };
        PresencePage { online, next_after_user_id }
    }

    /// A local user came online or went offline here: tell the other processes at the next flush.
    fn local_changed(&mut self, user_id: i64, ctx: &mut Context<Self>) {
        self.peers.local_changed(user_id, self.online.get(&user_id).map(|m| m.nickname.clone()));
        self.changed(user_id, ctx);
    }

    /// Sends what is queued for the other processes in order, one batch at a time.
    fn send_notifications(&mut self, ctx: &mut Context<Self>) {
        let Some(batch) = self.peers.take_batch() else { return };
        ctx.spawn(self.peers.backplane().publish(batch).into_actor(self).map(|result, act, ctx| {
            act.peers.sent();
            if let Err(e) = result {
                tracing::warn!(error = %e, "could not announce presence to the other processes");
            }
            act.send_notifications(ctx);
        }));
    }

    /// Says this process is alive and drops the users of processes that went silent.
    fn heartbeat(&mut self, ctx: &mut Context<Self>) {
        for user_id in self.peers.heartbeat() {
            self.changed(user_id, ctx);
        }
        self.send_notifications(ctx);
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
        self.metrics.players_online.set(self.online.len() as i64);
    }

    fn publish(&mut self, frame: Typed) {
        self.metrics.presence_updates.inc();
        let frame: ServerFrame = frame.into();
        self.hub.do_send(Publish { topic: Topic::Lobby, version: None, text: frame.to_bytes() });
    }

    /// Brings the view up to date with what changed in the window and tells the lobby: every
    /// change while it is listing (a user who left and came back in between appears in neither
    /// list), else the count; then answers the joins of the window.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        self.flush_scheduled = false;
        self.peers.announce_changes();
        self.send_notifications(ctx);
        let mut joins = Vec::new();
        let mut leaves = Vec::new();
        for user_id in std::mem::take(&mut self.dirty) {
            match (self.effective(user_id).cloned(), self.view.get(&user_id)) {
                (Some(nickname), seen) if seen != Some(&nickname) => {
                    joins.push(PresenceUser { user_id, nickname: nickname.clone() });
                    self.view.insert(user_id, nickname);
                }
                (None, Some(_)) => {
                    leaves.push(PresenceLeave { user_id });
                    self.view.remove(&user_id);
                }
                _ => {}
            }
        }
        if !(joins.is_empty() && leaves.is_empty()) {
            self.state_frame = None;
        }
        if self.view.len() > self.list_max {
            self.listing = false;
        }
        if self.listing {
            if !(joins.is_empty() && leaves.is_empty()) {
                joins.sort_by_key(|j| j.user_id);
                leaves.sort_by_key(|l| l.user_id);
                tracing::debug!(joins = joins.len(), leaves = leaves.len(), "presence update");
                self.told_count = self.view.len();
                self.publish(Typed::PresenceUpdate { joins, leaves, online_count: self.told_count });
            }
        } else {
            self.count_news(ctx);
        }
        if !self.waiting.is_empty() {
            let state = self.handed_state();
            for answer in self.waiting.drain(..) {
                let _ = answer.send(state.clone());
            }
        }
    }

    /// The `presence:state` for sessions that join. Above the maximum its count may not be the
    /// one the lobby was last told (a count frame is due): then the lobby holds two counts, and
    /// the next count frame must go out even if the count is back to the one told before.
    fn handed_state(&mut self) -> ByteString {
        if !self.listing && self.view.len() != self.told_count {
            self.told_count = usize::MAX;
        }
        self.state()
    }

    /// Not listing: the count (or, back at the list maximum, the whole list) goes out now, or a
    /// second after the last one.
    fn count_news(&mut self, ctx: &mut Context<Self>) {
        if self.count_scheduled {
            return;
        }
        let wait = self
            .count_sent_at
            .map(|at| (at + COUNT_EVERY).saturating_duration_since(Instant::now()))
            .unwrap_or_default();
        if wait.is_zero() {
            return self.send_count();
        }
        self.count_scheduled = true;
        ctx.run_later(wait, |act, _| {
            act.count_scheduled = false;
            act.send_count();
        });
    }

    fn send_count(&mut self) {
        let count = self.view.len();
        if self.listing || (count > self.list_max && count == self.told_count) {
            return;
        }
        if count <= self.list_max {
            // Back at the list maximum: the lists the sessions hold are stale, so they get the
            // whole list once; every change is listed from here on.
            tracing::debug!(online = count, "presence listed again");
            self.listing = true;
            let text = self.state();
            self.hub.do_send(Publish { topic: Topic::Lobby, version: None, text });
        } else {
            self.publish(Typed::PresenceUpdate { joins: Vec::new(), leaves: Vec::new(), online_count: count });
        }
        self.told_count = count;
        self.count_sent_at = Some(Instant::now());
    }
}

/// Everyone online on this process, for the other processes.
fn ours(online: &HashMap<i64, Member>) -> Vec<(i64, String)> {
    online.iter().map(|(id, m)| (*id, m.nickname.clone())).collect()
}

impl Actor for Presence {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Thousands of sessions may join at once; the mailbox must not refuse them.
        ctx.set_mailbox_capacity(100_000);
        if let Some(every) = self.peers.heartbeat_every() {
            ctx.run_interval(every, |act, ctx| act.heartbeat(ctx));
        }
    }
}

impl Handler<Join> for Presence {
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
        } else if !self.view.contains_key(&msg.user_id) {
            self.changed(msg.user_id, ctx);
        }
        // Sent before any later lobby publish of this actor, so the session misses none of them.
        self.hub.do_send(hub::Subscribe { id: msg.session, topic: Topic::Lobby });
        self.gauges();
        let (answer, answered) = oneshot::channel();
        if self.dirty.is_empty() {
            let _ = answer.send(self.handed_state());
        } else {
            self.waiting.push(answer);
        }
        MessageResult(PendingState(answered))
    }
}

impl Handler<Leave> for Presence {
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

impl Handler<Page> for Presence {
    type Result = MessageResult<Page>;
    fn handle(&mut self, msg: Page, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.page(msg.after_user_id))
    }
}

impl Handler<OnlinePlayers> for Presence {
    type Result = MessageResult<OnlinePlayers>;
    fn handle(&mut self, _: OnlinePlayers, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.online.keys().copied().chain(self.peers.user_ids()).collect())
    }
}

impl Handler<Remote> for Presence {
    type Result = ();

    fn handle(&mut self, Remote(event): Remote, ctx: &mut Context<Self>) {
        let online = &self.online;
        let touched = self.peers.heard(event, || ours(online));
        for user_id in touched {
            self.changed(user_id, ctx);
        }
        self.send_notifications(ctx);
        self.gauges();
    }
}

impl Handler<ListenerReady> for Presence {
    type Result = ();

    fn handle(&mut self, _: ListenerReady, ctx: &mut Context<Self>) {
        let online = &self.online;
        if let Some(theirs) = self.peers.listening(|| ours(online)) {
            // Their answers to the hello land in the same gathering window, so only real
            // changes reach the sessions; every session gets the whole list once they are in.
            for user_id in theirs {
                self.changed(user_id, ctx);
            }
            ctx.run_later(RESYNC_AFTER, |act, _| {
                let state = act.state();
                act.hub.do_send(Publish { topic: Topic::Lobby, version: None, text: state });
            });
        }
        self.send_notifications(ctx);
    }
}

crate::stoppable!(Presence);
