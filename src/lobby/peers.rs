//! Presence shared with the other processes, as bookkeeping the [`super::presence::Presence`] actor holds:
//! who each other process said is online there and when it was last heard, and what this
//! process has still to tell them (its players' changes, chunked under the backplane's event
//! size, in order, one batch in flight at a time). Answers which users a piece of news touched;
//! never publishes to sessions, never sends on the backplane itself (the presence actor sends the
//! batches it takes), and does nothing when the backplane is not shared.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backplane::Backplane;
use crate::core::process::ProcessId;
use crate::domain::events::Event;

/// Users per presence event, so one stays under the backplane's event size limit.
const USERS_PER_NOTIFICATION: usize = 40;

/// Who another process said is online there, and when it was last heard from.
struct RemoteProcess {
    players: HashMap<i64, String>,
    heard: Instant,
}

pub(super) struct Peers {
    origin: ProcessId,
    backplane: Arc<dyn Backplane>,
    /// Online on other processes, by process.
    remote: HashMap<String, RemoteProcess>,
    /// Local users whose online state changed since the last announcement (Some = online).
    to_announce: HashMap<i64, Option<String>>,
    /// Events waiting to be sent, one batch in flight at a time so they keep their order.
    outgoing: Vec<Event>,
    sending: bool,
    /// The backplane has heard the other processes before (hearing them now is a reconnect).
    heard_before: bool,
}

impl Peers {
    pub(super) fn new(origin: ProcessId, backplane: Arc<dyn Backplane>) -> Self {
        Peers {
            origin,
            backplane,
            remote: HashMap::new(),
            to_announce: HashMap::new(),
            outgoing: Vec::new(),
            sending: false,
            heard_before: false,
        }
    }

    pub(super) fn backplane(&self) -> &Arc<dyn Backplane> {
        &self.backplane
    }

    /// How often to say this process is alive; `None` when nobody else listens.
    pub(super) fn heartbeat_every(&self) -> Option<Duration> {
        self.backplane.shared().then(|| self.backplane.liveness().every)
    }

    /// The nickname another process says `user_id` is online with.
    pub(super) fn nickname(&self, user_id: i64) -> Option<&String> {
        self.remote.values().find_map(|p| p.players.get(&user_id))
    }

    /// Everyone online on the other processes.
    pub(super) fn user_ids(&self) -> impl Iterator<Item = i64> + '_ {
        self.remote.values().flat_map(|p| p.players.keys().copied())
    }

    /// A local user came online (`Some(nickname)`) or went offline here.
    pub(super) fn local_changed(&mut self, user_id: i64, state: Option<String>) {
        if self.backplane.shared() {
            self.to_announce.insert(user_id, state);
        }
    }

    /// Queues the local changes noted since the last call.
    pub(super) fn announce_changes(&mut self) {
        let (mut online, mut offline) = (Vec::new(), Vec::new());
        for (user_id, state) in self.to_announce.drain() {
            match state {
                Some(nickname) => online.push((user_id, nickname)),
                None => offline.push(user_id),
            }
        }
        self.queue_presence(online, offline);
    }

    /// Queues presence notifications of `online` / `offline` users, chunked under the payload limit.
    pub(super) fn queue_presence(&mut self, online: Vec<(i64, String)>, offline: Vec<i64>) {
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

    /// The next batch to send, unless one is in flight (then [`Peers::sent`] comes first).
    pub(super) fn take_batch(&mut self) -> Option<Vec<Event>> {
        if self.sending || self.outgoing.is_empty() {
            return None;
        }
        self.sending = true;
        Some(std::mem::take(&mut self.outgoing))
    }

    /// The batch in flight has been sent (or failed).
    pub(super) fn sent(&mut self) {
        self.sending = false;
    }

    /// Queues this process's "alive", forgets the processes that went silent (they died) and
    /// answers their users.
    pub(super) fn heartbeat(&mut self) -> Vec<i64> {
        self.queue(Event::Alive { origin: self.origin.to_string() });
        let (now, expires) = (Instant::now(), self.backplane.liveness().expires);
        let gone: Vec<String> = self
            .remote
            .iter()
            .filter(|(_, p)| now.saturating_duration_since(p.heard) > expires)
            .map(|(origin, _)| origin.clone())
            .collect();
        let mut users = Vec::new();
        for origin in gone {
            tracing::warn!(process = %origin, "no word from a lobby process; dropping its players");
            users.extend(self.remote.remove(&origin).into_iter().flat_map(|p| p.players.into_keys()));
        }
        users
    }

    /// News from another process; answers the users it touched. A process that (re)joined
    /// (`Hello`) is told `ours`, who is online here, which is read only then.
    pub(super) fn heard(&mut self, event: Event, ours: impl FnOnce() -> Vec<(i64, String)>) -> Vec<i64> {
        let origin = event.origin().to_owned();
        if *origin == *self.origin {
            return Vec::new();
        }
        let process = self
            .remote
            .entry(origin)
            .or_insert_with(|| RemoteProcess { players: HashMap::new(), heard: Instant::now() });
        process.heard = Instant::now();
        match event {
            Event::Presence { online, offline, .. } => {
                let mut touched = Vec::with_capacity(online.len() + offline.len());
                for (user_id, nickname) in online {
                    process.players.insert(user_id, nickname);
                    touched.push(user_id);
                }
                for user_id in offline {
                    process.players.remove(&user_id);
                    touched.push(user_id);
                }
                touched
            }
            Event::Hello { .. } => {
                self.queue_presence(ours(), Vec::new());
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    /// The backplane hears the other processes (again): queues this process's hello. On a
    /// reconnect what the others said meanwhile is lost and they may have dropped this
    /// process's players: theirs are forgotten and answered (to be asked again), and `ours`
    /// are told again.
    pub(super) fn listening(&mut self, ours: impl FnOnce() -> Vec<(i64, String)>) -> Option<Vec<i64>> {
        let theirs = self.heard_before.then(|| {
            let theirs = self.remote.drain().flat_map(|(_, p)| p.players.into_keys()).collect();
            self.queue_presence(ours(), Vec::new());
            theirs
        });
        self.heard_before = true;
        self.queue(Event::Hello { origin: self.origin.to_string() });
        theirs
    }
}

#[cfg(test)]
mod tests {
    use futures_util::future::LocalBoxFuture;
    use futures_util::FutureExt;

    use super::*;
    use crate::backplane::local::LocalBackplane;
    use crate::backplane::{BackplaneError, Liveness, Sinks};

    /// A backplane other processes share, whose processes go silent at once.
    struct Shared;

    impl Backplane for Shared {
        fn name(&self) -> &'static str {
            "shared"
        }
        fn shared(&self) -> bool {
            true
        }
        fn publish(&self, _: Vec<Event>) -> LocalBoxFuture<'static, Result<(), BackplaneError>> {
            async { Ok(()) }.boxed_local()
        }
        fn listen(&self, _: Sinks) {}
        fn is_up(&self) -> bool {
            true
        }
        fn liveness(&self) -> Liveness {
            Liveness { every: Duration::from_secs(5), expires: Duration::ZERO }
        }
        fn stop(&self) {}
    }

    fn peers() -> Peers {
        Peers::new("p1".into(), Arc::new(Shared))
    }

    fn presence(origin: &str, online: &[(i64, &str)], offline: &[i64]) -> Event {
        Event::Presence {
            origin: origin.into(),
            online: online.iter().map(|(id, n)| (*id, (*n).to_owned())).collect(),
            offline: offline.to_vec(),
        }
    }

    #[test]
    fn nothing_is_told_when_no_other_process_listens() {
        let mut peers = Peers::new("p1".into(), Arc::new(LocalBackplane));
        assert_eq!(peers.heartbeat_every(), None);
        peers.local_changed(1, Some("ada".into()));
        peers.announce_changes();
        peers.heartbeat();
        assert_eq!(peers.listening(Vec::new), None);
        assert_eq!(peers.take_batch(), None);
    }

    #[test]
    fn local_changes_go_out_chunked_with_the_last_state_of_each_user() {
        let mut peers = peers();
        for id in 1..=45 {
            peers.local_changed(id, Some(format!("u{id}")));
        }
        // Online then offline before the announcement: only the offline is told.
        peers.local_changed(46, Some("u46".into()));
        peers.local_changed(46, None);
        peers.announce_changes();
        let batch = peers.take_batch().expect("a batch");
        let sizes: Vec<(usize, usize)> = batch
            .iter()
            .map(|e| match e {
                Event::Presence { online, offline, .. } => (online.len(), offline.len()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(sizes, [(40, 0), (5, 0), (0, 1)]);
        let mut told: Vec<i64> = batch
            .iter()
            .flat_map(|e| match e {
                Event::Presence { online, .. } => online.iter().map(|(id, _)| *id).collect(),
                _ => Vec::new(),
            })
            .collect();
        told.sort_unstable();
        assert_eq!(told, (1..=45).collect::<Vec<_>>());
        assert_eq!(peers.take_batch(), None, "nothing new");
    }

    #[test]
    fn one_batch_is_in_flight_at_a_time_and_the_next_keeps_the_order() {
        let mut peers = peers();
        peers.queue_presence(vec![(1, "a".into())], Vec::new());
        let first = peers.take_batch().expect("a batch");
        peers.queue_presence(Vec::new(), vec![1]);
        peers.queue_presence(vec![(2, "b".into())], Vec::new());
        assert_eq!(peers.take_batch(), None, "the first is still in flight");
        peers.sent();
        let second = peers.take_batch().expect("the next batch");
        assert_eq!(first, [presence("p1", &[(1, "a")], &[])]);
        assert_eq!(second, [presence("p1", &[], &[1]), presence("p1", &[(2, "b")], &[])]);
    }

    #[test]
    fn news_from_another_process_is_kept_and_its_users_answered_but_our_own_is_not() {
        let mut peers = peers();
        let ours = || vec![(1, "ada".to_owned())];
        assert_eq!(peers.heard(presence("p2", &[(7, "g"), (8, "h")], &[]), ours), [7, 8]);
        assert_eq!(peers.nickname(7).map(String::as_str), Some("g"));
        assert_eq!(peers.heard(presence("p2", &[], &[7]), ours), [7]);
        assert_eq!(peers.nickname(7), None);
        assert_eq!(peers.user_ids().collect::<Vec<_>>(), [8]);
        assert!(peers.heard(presence("p1", &[(9, "me")], &[]), ours).is_empty());
        assert_eq!(peers.nickname(9), None);
        assert_eq!(peers.take_batch(), None, "nothing to answer");
        // A process that (re)joins is told who is online here.
        assert!(peers.heard(Event::Hello { origin: "p3".into() }, ours).is_empty());
        assert_eq!(peers.take_batch().unwrap(), [presence("p1", &[(1, "ada")], &[])]);
    }

    #[test]
    fn a_silent_process_is_dropped_with_its_users_at_the_heartbeat() {
        let mut peers = peers();
        peers.heard(presence("p2", &[(7, "g")], &[]), Vec::new);
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(peers.heartbeat(), [7]);
        assert_eq!(peers.nickname(7), None);
        assert_eq!(peers.take_batch().unwrap(), [Event::Alive { origin: "p1".into() }]);
        peers.sent();
        assert!(peers.heartbeat().is_empty(), "dropped once");
    }

    #[test]
    fn a_reconnect_forgets_what_the_others_said_and_tells_ours_again() {
        let mut peers = peers();
        let ours = || vec![(1, "ada".to_owned())];
        assert_eq!(peers.listening(ours), None, "the first time there is nothing to forget");
        assert_eq!(peers.take_batch().unwrap(), [Event::Hello { origin: "p1".into() }]);
        peers.sent();
        peers.heard(presence("p2", &[(7, "g")], &[]), ours);
        assert_eq!(peers.listening(ours), Some(vec![7]));
        assert_eq!(peers.nickname(7), None);
        assert_eq!(
            peers.take_batch().unwrap(),
            [presence("p1", &[(1, "ada")], &[]), Event::Hello { origin: "p1".into() }]
        );
    }
}
