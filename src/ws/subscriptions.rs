//! The order in which one subscriber sees the frames of a topic, written once for every
//! topic and both edges that stream them (WebSocket sessions and the run's SSE endpoint).
//!
//! A subscription is made before its snapshot (a content item, a run's catch-up, the lobby
//! history) is read, so no change can fall between the two; frames that arrive meanwhile are
//! held back until the snapshot has been sent, then released in order, and the subscription
//! goes live. What the snapshot already holds is never sent again ([`Seen`]): versions up to
//! the snapshot's, everything after a run rebuilt from storage, held messages the history has.
//!
//! Never sends, subscribes or parses anything: the caller does the I/O, this file only says
//! which frames go out, and in which order.

use std::collections::{HashMap, HashSet};

use bytestring::ByteString;

use crate::domain::topic::Topic;

/// A serialized frame of a topic with its version; `None` for frames without one (a run's
/// frames rebuilt from storage, lobby presence and mood frames).
pub type Frame = (Option<i64>, ByteString);

/// What a subscriber already holds from its snapshot (and the live frames since).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// Every version up to this one (content versions, a run's frame versions). A frame
    /// without a version is not ordered by them and passes.
    Upto(i64),
    /// A run rebuilt from storage: it has ended, nothing may follow.
    Ended,
    /// These lobby messages (the history), checked against the frames held while it was read;
    /// once live every lobby frame passes (a session keeps no history ids). Lobby versions are
    /// message ids, which are not an order across processes: frames are neither sorted nor
    /// dropped as older by them.
    Messages(HashSet<i64>),
}

impl Seen {
    /// What a run's catch-up holds: its frames up to the last version, or the run's end when
    /// any frame was rebuilt from storage.
    pub fn catch_up(frames: &[Frame]) -> Seen {
        frames.iter().fold(Seen::Upto(0), |seen, (version, _)| match (seen, version) {
            (Seen::Upto(upto), Some(v)) => Seen::Upto(upto.max(*v)),
            _ => Seen::Ended,
        })
    }

    /// Whether a frame is new to the subscriber; a new version is recorded as seen.
    fn admit(&mut self, version: Option<i64>) -> bool {
        match (self, version) {
            (Seen::Upto(upto), Some(v)) if v <= *upto => false,
            (Seen::Upto(upto), Some(v)) => {
                *upto = v;
                true
            }
            (Seen::Upto(_), None) => true,
            (Seen::Ended, _) => false,
            (Seen::Messages(ids), Some(id)) => !ids.contains(&id),
            (Seen::Messages(_), None) => true,
        }
    }

    /// A second snapshot of a topic already live: whatever either holds counts as seen.
    fn merge(&mut self, other: Seen) {
        match (&mut *self, other) {
            (Seen::Upto(upto), Seen::Upto(other)) => *upto = (*upto).max(other),
            (Seen::Messages(ids), Seen::Messages(other)) => ids.extend(other),
            (Seen::Ended, _) => {}
            (_, other) => *self = other,
        }
    }

    /// Versions order the frames: held frames are sent by version (frames without one last,
    /// as they came: a run's stored end follows its live frames).
    fn orders(&self) -> bool {
        !matches!(self, Seen::Messages(_))
    }
}

/// One subscriber's view of one topic.
#[derive(Debug)]
pub struct Subscription {
    state: State,
}

#[derive(Debug)]
enum State {
    /// The snapshot is on its way: frames wait here, as they arrived.
    Holding(Vec<Frame>),
    Live(Seen),
}

impl Subscription {
    /// A subscription whose snapshot is on its way.
    pub fn holding() -> Self {
        Subscription { state: State::Holding(Vec::new()) }
    }

    pub fn is_holding(&self) -> bool {
        matches!(self.state, State::Holding(_))
    }

    /// A new snapshot is on its way: hold frames back again until it is sent.
    pub fn hold(&mut self) {
        if !self.is_holding() {
            self.state = State::Holding(Vec::new());
        }
    }

    /// A frame from the Hub: the text to send now, or `None` when it is held back or the
    /// subscriber has it already.
    pub fn offer(&mut self, version: Option<i64>, text: ByteString) -> Option<ByteString> {
        match &mut self.state {
            State::Holding(held) => {
                held.push((version, text));
                None
            }
            State::Live(seen) => seen.admit(version).then_some(text),
        }
    }

    /// The snapshot holding `seen` has just been sent: returns the held frames to send after
    /// it, in order, and goes live. Already live (a second snapshot of the same topic), it
    /// only counts what that snapshot holds as seen.
    pub fn release(&mut self, mut seen: Seen) -> Vec<ByteString> {
        match std::mem::replace(&mut self.state, State::Holding(Vec::new())) {
            State::Holding(mut held) => {
                if seen.orders() {
                    held.sort_by_key(|(version, _)| version.unwrap_or(i64::MAX));
                }
                let out = held.into_iter().filter(|(version, _)| seen.admit(*version)).map(|(_, text)| text).collect();
                if let Seen::Messages(ids) = &mut seen {
                    // Kept for the session's life, the ids would cost every idle session memory.
                    *ids = HashSet::new();
                }
                self.state = State::Live(seen);
                out
            }
            State::Live(mut live) => {
                live.merge(seen);
                self.state = State::Live(live);
                Vec::new()
            }
        }
    }
}

/// A session's subscriptions, by topic.
#[derive(Debug, Default)]
pub struct Subscriptions {
    /// Kept apart from the map: nearly every session is in the lobby and nothing else, and an
    /// idle session then needs no map of its own.
    lobby: Option<Subscription>,
    topics: HashMap<Topic, Subscription>,
    /// How many of `topics` are content items (what `LOREWIRE_MAX_SUBSCRIPTIONS` caps).
    contents: usize,
}

impl Subscriptions {
    /// Holds `topic` back until its snapshot is sent; `true` when the subscription is new
    /// (the caller subscribes it at the Hub).
    pub fn hold(&mut self, topic: Topic) -> bool {
        match self.get_mut(&topic) {
            Some(subscription) => {
                subscription.hold();
                false
            }
            None => {
                match topic {
                    Topic::Lobby => self.lobby = Some(Subscription::holding()),
                    topic => {
                        self.contents += usize::from(matches!(topic, Topic::Content(..)));
                        self.topics.insert(topic, Subscription::holding());
                    }
                }
                true
            }
        }
    }

    /// A frame of `topic` from the Hub: the text to send now, if any.
    pub fn offer(&mut self, topic: &Topic, version: Option<i64>, text: ByteString) -> Option<ByteString> {
        self.get_mut(topic)?.offer(version, text)
    }

    /// The snapshot of `topic` holding `seen` has just been sent: the frames to send after it.
    /// A topic unsubscribed meanwhile stays unsubscribed.
    pub fn release(&mut self, topic: &Topic, seen: Seen) -> Vec<ByteString> {
        self.get_mut(topic).map(|s| s.release(seen)).unwrap_or_default()
    }

    /// Forgets `topic`; `true` when it was subscribed (the caller unsubscribes it at the Hub).
    pub fn remove(&mut self, topic: &Topic) -> bool {
        match topic {
            Topic::Lobby => self.lobby.take().is_some(),
            topic => {
                let removed = self.topics.remove(topic).is_some();
                self.contents -= usize::from(removed && matches!(topic, Topic::Content(..)));
                removed
            }
        }
    }

    /// Content items subscribed (held or live).
    pub fn contents(&self) -> usize {
        self.contents
    }

    pub fn contains(&self, topic: &Topic) -> bool {
        self.get(topic).is_some()
    }

    pub fn is_holding(&self, topic: &Topic) -> bool {
        self.get(topic).is_some_and(Subscription::is_holding)
    }

    /// The versions of the frames `topic` holds back now (none when it is live).
    pub fn held_versions(&self, topic: &Topic) -> Vec<i64> {
        match self.get(topic).map(|s| &s.state) {
            Some(State::Holding(held)) => held.iter().filter_map(|(version, _)| *version).collect(),
            _ => Vec::new(),
        }
    }

    fn get(&self, topic: &Topic) -> Option<&Subscription> {
        match topic {
            Topic::Lobby => self.lobby.as_ref(),
            topic => self.topics.get(topic),
        }
    }

    fn get_mut(&mut self, topic: &Topic) -> Option<&mut Subscription> {
        match topic {
            Topic::Lobby => self.lobby.as_mut(),
            topic => self.topics.get_mut(topic),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(version: Option<i64>, text: &str) -> Frame {
        (version, ByteString::from(text.to_owned()))
    }

    fn texts(frames: Vec<ByteString>) -> Vec<String> {
        frames.into_iter().map(|t| t.to_string()).collect()
    }

    /// Offers each frame, returning what is sent at once.
    fn offer_all(sub: &mut Subscription, frames: &[Frame]) -> Vec<String> {
        frames.iter().filter_map(|(v, t)| sub.offer(*v, t.clone())).map(|t| t.to_string()).collect()
    }

    #[test]
    fn held_frames_go_out_after_the_snapshot_sorted_without_what_it_holds() {
        let mut sub = Subscription::holding();
        let sent = offer_all(&mut sub, &[frame(Some(5), "v5"), frame(Some(3), "v3"), frame(Some(4), "v4")]);
        assert!(sent.is_empty(), "held back while the snapshot is on its way");
        assert_eq!(texts(sub.release(Seen::Upto(3))), ["v4", "v5"]);
        assert!(!sub.is_holding());
    }

    #[test]
    fn live_frames_drop_versions_already_seen() {
        let mut sub = Subscription::holding();
        assert_eq!(texts(sub.release(Seen::Upto(2))), Vec::<String>::new());
        let sent = offer_all(
            &mut sub,
            &[frame(Some(2), "v2"), frame(Some(4), "v4"), frame(Some(3), "v3"), frame(Some(5), "v5")],
        );
        assert_eq!(sent, ["v4", "v5"]);
    }

    #[test]
    fn frames_without_a_version_pass_while_ordered_by_versions() {
        let mut sub = Subscription::holding();
        offer_all(&mut sub, &[frame(None, "stored-a"), frame(Some(2), "v2"), frame(None, "stored-b")]);
        // Sorted with the unversioned frames last, in the order they came.
        assert_eq!(texts(sub.release(Seen::Upto(1))), ["v2", "stored-a", "stored-b"]);
        assert_eq!(offer_all(&mut sub, &[frame(None, "stored-c"), frame(Some(2), "v2 again")]), ["stored-c"]);
    }

    #[test]
    fn a_catch_up_holds_its_last_version_or_the_stored_end() {
        assert_eq!(Seen::catch_up(&[]), Seen::Upto(0));
        assert_eq!(Seen::catch_up(&[frame(Some(1), "a"), frame(Some(3), "b")]), Seen::Upto(3));
        assert_eq!(Seen::catch_up(&[frame(None, "started"), frame(None, "done")]), Seen::Ended);
        assert_eq!(Seen::catch_up(&[frame(Some(1), "a"), frame(None, "done")]), Seen::Ended);
    }

    #[test]
    fn nothing_follows_a_run_rebuilt_from_storage() {
        let mut sub = Subscription::holding();
        offer_all(&mut sub, &[frame(Some(7), "live v7"), frame(None, "stored end again")]);
        let catch_up = [frame(None, "started"), frame(None, "delta"), frame(None, "done")];
        assert!(sub.release(Seen::catch_up(&catch_up)).is_empty());
        assert!(offer_all(&mut sub, &[frame(None, "stored end"), frame(Some(8), "v8")]).is_empty());
    }

    #[test]
    fn a_live_catch_up_lets_later_frames_and_a_stored_end_through() {
        let mut sub = Subscription::holding();
        offer_all(&mut sub, &[frame(Some(2), "v2"), frame(Some(3), "v3")]);
        let catch_up = [frame(Some(1), "v1"), frame(Some(2), "v2")];
        assert_eq!(texts(sub.release(Seen::catch_up(&catch_up))), ["v3"]);
        // Another process ended the run: its stored frames follow.
        assert_eq!(offer_all(&mut sub, &[frame(None, "started"), frame(None, "done")]), ["started", "done"]);
    }

    #[test]
    fn the_lobby_drops_messages_its_history_holds_and_keeps_arrival_order() {
        let mut sub = Subscription::holding();
        offer_all(
            &mut sub,
            &[frame(Some(11), "new 11"), frame(None, "presence"), frame(Some(9), "new 9"), frame(Some(12), "new 12")],
        );
        let history = Seen::Messages([9, 11].into_iter().collect());
        assert_eq!(texts(sub.release(history)), ["presence", "new 12"]);
        // Live, every lobby frame passes (ids are no order: a lower id still arrives).
        assert_eq!(offer_all(&mut sub, &[frame(Some(10), "new 10"), frame(None, "mood")]), ["new 10", "mood"]);
        assert!(matches!(&sub.state, State::Live(Seen::Messages(ids)) if ids.capacity() == 0), "no ids kept");
    }

    #[test]
    fn a_second_snapshot_of_a_live_topic_resends_nothing_and_counts_as_seen() {
        let mut sub = Subscription::holding();
        sub.release(Seen::Upto(2));
        assert!(sub.release(Seen::Upto(5)).is_empty());
        assert_eq!(offer_all(&mut sub, &[frame(Some(5), "v5"), frame(Some(6), "v6")]), ["v6"]);
        assert!(sub.release(Seen::Upto(1)).is_empty());
        assert_eq!(offer_all(&mut sub, &[frame(Some(6), "v6"), frame(Some(7), "v7")]), ["v7"]);
        sub.release(Seen::Ended);
        assert!(offer_all(&mut sub, &[frame(Some(8), "v8")]).is_empty());
    }

    #[test]
    fn holding_again_waits_for_the_new_snapshot() {
        let mut sub = Subscription::holding();
        sub.release(Seen::Upto(4));
        sub.hold();
        assert!(offer_all(&mut sub, &[frame(Some(5), "v5")]).is_empty());
        assert_eq!(texts(sub.release(Seen::Upto(4))), ["v5"]);
    }

    #[test]
    fn holding_again_while_holding_keeps_what_is_held() {
        let mut sub = Subscription::holding();
        offer_all(&mut sub, &[frame(Some(3), "v3")]);
        sub.hold();
        offer_all(&mut sub, &[frame(Some(2), "v2")]);
        assert_eq!(texts(sub.release(Seen::Upto(1))), ["v2", "v3"]);
    }

    #[test]
    fn a_version_held_twice_goes_out_once_and_a_stored_end_drops_everything_held() {
        let mut sub = Subscription::holding();
        offer_all(&mut sub, &[frame(Some(2), "v2 first"), frame(Some(1), "v1"), frame(Some(2), "v2 again")]);
        assert_eq!(texts(sub.release(Seen::Upto(0))), ["v1", "v2 first"]);

        let mut ended = Subscription::holding();
        offer_all(&mut ended, &[frame(Some(9), "v9"), frame(None, "done")]);
        assert!(ended.release(Seen::Ended).is_empty());
    }

    #[test]
    fn the_lobby_history_passes_frames_without_an_id_and_ids_it_does_not_hold() {
        let mut seen = Seen::Messages([4].into_iter().collect());
        assert!(seen.admit(None));
        assert!(seen.admit(Some(5)));
        assert!(seen.admit(Some(3)), "ids are no order");
        assert!(!seen.admit(Some(4)));
        assert!(seen.admit(Some(5)), "a lobby id is not recorded as seen");
    }

    #[test]
    fn a_second_lobby_history_of_a_live_lobby_counts_its_messages_as_seen() {
        let mut sub = Subscription::holding();
        sub.release(Seen::Messages([1].into_iter().collect()));
        assert!(sub.release(Seen::Messages([7, 8].into_iter().collect())).is_empty());
        assert_eq!(offer_all(&mut sub, &[frame(Some(7), "new 7"), frame(Some(9), "new 9")]), ["new 9"]);
    }

    #[test]
    fn merging_keeps_an_end_the_highest_version_or_the_newer_kind() {
        let merged = |mut live: Seen, other: Seen| {
            live.merge(other);
            live
        };
        assert_eq!(merged(Seen::Upto(5), Seen::Upto(3)), Seen::Upto(5));
        assert_eq!(merged(Seen::Upto(3), Seen::Upto(5)), Seen::Upto(5));
        assert_eq!(merged(Seen::Ended, Seen::Upto(9)), Seen::Ended);
        assert_eq!(merged(Seen::Upto(9), Seen::Ended), Seen::Ended);
        let ids = |v: &[i64]| Seen::Messages(v.iter().copied().collect());
        assert_eq!(merged(ids(&[1]), ids(&[2])), ids(&[1, 2]));
        assert_eq!(merged(Seen::Upto(2), ids(&[2])), ids(&[2]));
    }

    #[test]
    fn subscriptions_by_topic() {
        let mut subs = Subscriptions::default();
        let run = Topic::Run("r1".into());
        assert!(subs.hold(run.clone()), "new: subscribe at the Hub");
        assert!(!subs.hold(run.clone()), "already subscribed");
        assert!(subs.is_holding(&run));
        assert_eq!(subs.offer(&Topic::Lobby, None, "not subscribed".into()), None);
        assert_eq!(subs.offer(&run, Some(1), "v1".into()), None);
        assert_eq!(texts(subs.release(&run, Seen::Upto(0))), ["v1"]);
        assert_eq!(subs.offer(&run, Some(2), "v2".into()).as_deref(), Some("v2"));
        assert!(subs.contains(&run) && !subs.is_holding(&run));
        assert!(subs.remove(&run));
        assert!(!subs.remove(&run));
        // Released after an unsubscribe: stays unsubscribed.
        assert!(subs.release(&run, Seen::Upto(0)).is_empty());
        assert!(!subs.contains(&run));

        assert!(subs.hold(Topic::Lobby) && subs.is_holding(&Topic::Lobby));
        assert_eq!(subs.offer(&Topic::Lobby, None, "presence".into()), None);
        assert_eq!(texts(subs.release(&Topic::Lobby, Seen::Messages(HashSet::new()))), ["presence"]);
        assert!(subs.contains(&Topic::Lobby) && subs.topics.is_empty());
        assert!(subs.remove(&Topic::Lobby) && !subs.contains(&Topic::Lobby));
    }

    #[test]
    fn only_content_items_count_towards_the_cap_and_each_once() {
        use crate::domain::content::ContentKind;
        let mut subs = Subscriptions::default();
        let quest = Topic::Content(ContentKind::Quest, 1, 0);
        subs.hold(quest.clone());
        subs.hold(quest.clone());
        subs.hold(Topic::Content(ContentKind::Npc, 1, 0));
        subs.hold(Topic::Run("r1".into()));
        subs.hold(Topic::Lobby);
        assert_eq!(subs.contents(), 2);
        assert!(subs.remove(&quest) && !subs.remove(&quest));
        subs.remove(&Topic::Run("r1".into()));
        assert_eq!(subs.contents(), 1);
    }
}
