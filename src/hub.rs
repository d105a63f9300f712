//! The Hub: topic -> subscribed sessions. Takes a frame already serialized once and hands the
//! same bytes to every subscriber; it never parses or builds a frame and knows no feature.
//!
//! Never blocks on a session: frames go out with `try_send`, and a session whose mailbox is
//! full is told to close as a slow consumer instead of slowing everyone else down.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use actix::prelude::*;
use bytestring::ByteString;

use crate::core::metrics::Metrics;
use crate::domain::content::ContentKind;
use crate::domain::players::{BLOCKED_CLOSE_CODE, BLOCKED_CLOSE_REASON};
pub use crate::domain::topic::Topic;

pub type SessionId = u64;

/// Delivered to a session by the Hub.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub enum ToSession {
    /// A serialized frame of `topic`; `version` orders content frames (older ones are dropped).
    Frame { topic: Arc<Topic>, version: Option<i64>, text: ByteString },
    /// Close the socket with this code and reason.
    Close { code: u16, reason: &'static str },
}

/// A session joins the Hub.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Connect {
    pub id: SessionId,
    pub recipient: Recipient<ToSession>,
}

/// A session leaves the Hub (and every topic).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Disconnect {
    pub id: SessionId,
}

/// Subscribe a session to a topic.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Subscribe {
    pub id: SessionId,
    pub topic: Topic,
}

/// Unsubscribe a session from a topic.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Unsubscribe {
    pub id: SessionId,
    pub topic: Topic,
}

/// Send a serialized frame to every subscriber of a topic; `version` orders the frames of one
/// topic (a session drops a frame older than what it has seen).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Publish {
    pub topic: Topic,
    pub version: Option<i64>,
    pub text: ByteString,
}

/// Forget a topic and its subscribers (a run that ended will publish nothing more).
#[derive(Message)]
#[rtype(result = "()")]
pub struct DropTopic {
    pub topic: Topic,
}

/// The content items some session here is subscribed to (to read them again after the
/// backplane lost changes).
#[derive(Message)]
#[rtype(result = "Vec<(ContentKind, u64, i64)>")]
pub struct ContentTopics;

/// The players some session here is subscribed to ([`Topic::Player`]): to close those blocked
/// while the backplane lost changes.
#[derive(Message)]
#[rtype(result = "Vec<i64>")]
pub struct PlayerTopics;

/// Close every session subscribed to a topic (a blocked player's); answers how many there were.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct CloseTopic {
    pub topic: Topic,
    pub code: u16,
    pub reason: &'static str,
}

impl CloseTopic {
    /// Every session of a player just blocked: 4003 "blocked".
    pub fn blocked(user_id: i64) -> CloseTopic {
        CloseTopic { topic: Topic::Player(user_id), code: BLOCKED_CLOSE_CODE, reason: BLOCKED_CLOSE_REASON }
    }
}

/// Close every session (shutdown); answers how many there were.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct CloseAll {
    pub code: u16,
    pub reason: &'static str,
}

pub struct Hub {
    sessions: HashMap<SessionId, Recipient<ToSession>>,
    topics: HashMap<Arc<Topic>, HashSet<SessionId>>,
    by_session: HashMap<SessionId, HashSet<Arc<Topic>>>,
    metrics: Arc<Metrics>,
}

impl Hub {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Hub { sessions: HashMap::new(), topics: HashMap::new(), by_session: HashMap::new(), metrics }
    }

    fn unsubscribe(&mut self, id: SessionId, topic: &Topic) {
        self.leave_topic(id, topic);
        if let Some(topics) = self.by_session.get_mut(&id) {
            topics.remove(topic);
        }
    }

    /// Takes `id` out of `topic`'s members, and the topic out when it has none left.
    fn leave_topic(&mut self, id: SessionId, topic: &Topic) {
        if let Some(members) = self.topics.get_mut(topic) {
            members.remove(&id);
            if members.is_empty() {
                self.topics.remove(topic);
            }
        }
    }
}

impl Actor for Hub {
    type Context = Context<Self>;
}

impl Handler<ContentTopics> for Hub {
    type Result = MessageResult<ContentTopics>;
    fn handle(&mut self, _: ContentTopics, _: &mut Context<Self>) -> Self::Result {
        let items = self.topics.keys().filter_map(|topic| match **topic {
            Topic::Content(kind, subject_id, owner) => Some((kind, subject_id, owner)),
            _ => None,
        });
        MessageResult(items.collect())
    }
}

impl Handler<PlayerTopics> for Hub {
    type Result = MessageResult<PlayerTopics>;
    fn handle(&mut self, _: PlayerTopics, _: &mut Context<Self>) -> Self::Result {
        let players = self.topics.keys().filter_map(|topic| match **topic {
            Topic::Player(user_id) => Some(user_id),
            _ => None,
        });
        MessageResult(players.collect())
    }
}

impl Handler<Connect> for Hub {
    type Result = ();
    fn handle(&mut self, msg: Connect, _: &mut Context<Self>) {
        self.sessions.insert(msg.id, msg.recipient);
    }
}

impl Handler<Disconnect> for Hub {
    type Result = ();
    fn handle(&mut self, msg: Disconnect, _: &mut Context<Self>) {
        self.sessions.remove(&msg.id);
        for topic in self.by_session.remove(&msg.id).unwrap_or_default() {
            self.leave_topic(msg.id, &topic);
        }
    }
}

impl Handler<Subscribe> for Hub {
    type Result = ();
    fn handle(&mut self, msg: Subscribe, _: &mut Context<Self>) {
        if !self.sessions.contains_key(&msg.id) {
            return;
        }
        let topic = match self.topics.get_key_value(&msg.topic) {
            Some((existing, _)) => existing.clone(),
            None => Arc::new(msg.topic),
        };
        self.topics.entry(topic.clone()).or_default().insert(msg.id);
        self.by_session.entry(msg.id).or_default().insert(topic);
    }
}

impl Handler<Unsubscribe> for Hub {
    type Result = ();
    fn handle(&mut self, msg: Unsubscribe, _: &mut Context<Self>) {
        self.unsubscribe(msg.id, &msg.topic);
    }
}

impl Handler<Publish> for Hub {
    type Result = ();
    fn handle(&mut self, msg: Publish, _: &mut Context<Self>) {
        let Some((topic, members)) = self.topics.get_key_value(&msg.topic) else { return };
        let frame = ToSession::Frame { topic: topic.clone(), version: msg.version, text: msg.text };
        for id in members {
            if let Some(recipient) = self.sessions.get(id) {
                deliver(recipient, frame.clone(), &self.metrics);
            }
        }
    }
}

impl Handler<DropTopic> for Hub {
    type Result = ();
    fn handle(&mut self, msg: DropTopic, _: &mut Context<Self>) {
        let Some((topic, members)) = self.topics.remove_entry(&msg.topic) else { return };
        for id in members {
            if let Some(topics) = self.by_session.get_mut(&id) {
                topics.remove(&topic);
            }
        }
    }
}

/// Hands one frame to one session without waiting; a session whose mailbox is full is closed
/// as a slow consumer (and counted), so it can never hold the others back.
pub fn deliver(recipient: &Recipient<ToSession>, frame: ToSession, metrics: &Metrics) {
    if let Err(SendError::Full(_)) = recipient.try_send(frame) {
        metrics.slow_consumers.inc();
        recipient.do_send(ToSession::Close { code: 1008, reason: "slow consumer" });
    }
}

impl Handler<CloseTopic> for Hub {
    type Result = usize;
    fn handle(&mut self, msg: CloseTopic, _: &mut Context<Self>) -> usize {
        let Some(members) = self.topics.get(&msg.topic) else { return 0 };
        for recipient in members.iter().filter_map(|id| self.sessions.get(id)) {
            recipient.do_send(ToSession::Close { code: msg.code, reason: msg.reason });
        }
        members.len()
    }
}

impl Handler<CloseAll> for Hub {
    type Result = usize;
    fn handle(&mut self, msg: CloseAll, _: &mut Context<Self>) -> usize {
        for recipient in self.sessions.values() {
            recipient.do_send(ToSession::Close { code: msg.code, reason: msg.reason });
        }
        self.sessions.len()
    }
}
