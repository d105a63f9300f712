//! Sends the frames of the runs this process streams (`run:started`, `run:delta`) to the other
//! processes over the backplane, so their subscribers follow the run live.
//!
//! Frames are gathered for a short window and sent as few events as fit the backplane's size
//! limit, by one sender task, so they are sent (and heard) in the order they were made. The run's
//! end is announced by its settlement; [`Relay::flush`] first. Holds no lock across an await.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytestring::ByteString;
use tokio::sync::{mpsc, oneshot};

use crate::backplane::Backplane;
use crate::core::logging::Throttle;
use crate::core::metrics::Metrics;
use crate::core::process::ProcessId;
use crate::domain::events::{Event, RemoteFrame, MAX_EVENT_BYTES};

/// How long frames are gathered before they are sent.
const GATHER: Duration = Duration::from_millis(25);
/// Longest `run:delta` text: its frame fits one event even when every byte needs escaping
/// twice (`\u0001` in the frame, `\\u0001` in the event).
pub const MAX_DELTA_BYTES: usize = 900;
/// Frames waiting to be sent, at most: a few seconds of every run this process can stream at
/// once (64 upstream calls, each a few dozen deltas a second) while the backplane is slow.
/// Past it a run's frames are dropped until its attempt ends, and the others are told to send
/// that attempt's end whole from storage, as when they heard it from its middle.
pub const RELAY_QUEUE: usize = 8192;
/// At most one log line this often about dropped frames (the metric counts them all).
const DROP_LOG_EVERY: Duration = Duration::from_secs(10);

enum Outgoing {
    Frame(String, RemoteFrame),
    /// Frames of the run's current attempt were dropped: the others stop mirroring it.
    Lost(String),
    /// Answered once every frame queued before it has been sent.
    Flush(oneshot::Sender<()>),
}

pub struct Relay {
    queue: mpsc::Sender<Outgoing>,
    /// Runs whose current attempt lost a frame at the full queue: the rest of the attempt is
    /// dropped too, and the others are told at the next [`Relay::flush`].
    lost: Mutex<HashSet<String>>,
    dropped: prometheus::IntCounter,
    log: Throttle,
}

impl Relay {
    /// Starts the relay's sender task on the current actix arbiter.
    pub fn new(origin: ProcessId, backplane: Arc<dyn Backplane>, metrics: &Metrics) -> Arc<Self> {
        Self::with_capacity(origin, backplane, metrics, RELAY_QUEUE)
    }

    /// [`Relay::new`] with a queue of `capacity` frames.
    pub fn with_capacity(
        origin: ProcessId,
        backplane: Arc<dyn Backplane>,
        metrics: &Metrics,
        capacity: usize,
    ) -> Arc<Self> {
        let (queue, rx) = mpsc::channel(capacity.max(1));
        actix::spawn(send_in_order(origin, backplane, rx));
        Arc::new(Relay {
            queue,
            lost: Mutex::new(HashSet::new()),
            dropped: metrics.backplane_dropped.with_label_values(&["relay"]),
            log: Throttle::new(DROP_LOG_EVERY),
        })
    }

    /// Queues a frame of a run streamed here; it is sent within the gather window. At a full
    /// queue the frame is dropped, with the rest of its attempt (see [`RELAY_QUEUE`]).
    pub fn forward(self: &Arc<Self>, run_id: &str, version: i64, frame: &ByteString, starts_attempt: bool) {
        let mut lost = self.lost.lock().unwrap_or_else(|e| e.into_inner());
        // A new attempt starts over on every process.
        if starts_attempt {
            lost.remove(run_id);
        }
        if lost.contains(run_id) {
            self.dropped.inc();
            return;
        }
        let remote = RemoteFrame { version, starts_attempt, frame: frame.to_string() };
        if let Err(mpsc::error::TrySendError::Full(_)) = self.queue.try_send(Outgoing::Frame(run_id.to_owned(), remote))
        {
            lost.insert(run_id.to_owned());
            self.dropped.inc();
            if let Some(skipped) = self.log.pass() {
                tracing::warn!(run = %run_id, dropped_since_last_line = skipped + 1,
                    "run frames dropped: the queue to the other processes is full; they send the attempt's end whole");
            }
        }
    }

    /// Waits until every frame queued so far has been sent, and the others know of every run
    /// whose frames were dropped (so they never take a run's end for the end of what they heard).
    pub async fn flush(&self) {
        let lost: Vec<String> = self.lost.lock().unwrap_or_else(|e| e.into_inner()).drain().collect();
        for run_id in lost {
            if self.queue.send(Outgoing::Lost(run_id)).await.is_err() {
                return;
            }
        }
        let (done, sent) = oneshot::channel();
        if self.queue.send(Outgoing::Flush(done)).await.is_ok() {
            let _ = sent.await;
        }
    }
}

/// The sender task: gathers frames for [`GATHER`] (or until a flush asks), sends them, repeats.
async fn send_in_order(origin: ProcessId, backplane: Arc<dyn Backplane>, mut rx: mpsc::Receiver<Outgoing>) {
    while let Some(first) = rx.recv().await {
        let mut batch = Vec::new();
        let mut flushes = Vec::new();
        let gathering = match first {
            Outgoing::Frame(run_id, frame) => {
                batch.push((run_id, Some(frame)));
                true
            }
            Outgoing::Lost(run_id) => {
                batch.push((run_id, None));
                true
            }
            Outgoing::Flush(done) => {
                flushes.push(done);
                false
            }
        };
        if gathering {
            let gather = tokio::time::sleep(GATHER);
            tokio::pin!(gather);
            loop {
                tokio::select! {
                    _ = &mut gather => break,
                    next = rx.recv() => match next {
                        Some(Outgoing::Frame(run_id, frame)) => batch.push((run_id, Some(frame))),
                        Some(Outgoing::Lost(run_id)) => batch.push((run_id, None)),
                        Some(Outgoing::Flush(done)) => { flushes.push(done); break }
                        None => break,
                    },
                }
            }
        }
        if !batch.is_empty() {
            if let Err(e) = backplane.publish(pack(&origin, batch)).await {
                tracing::warn!(error = %e, "run frames could not be sent to the other processes");
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

/// The frames as `run_frames` events of at most [`MAX_EVENT_BYTES`] serialized, each run's in
/// order; a lost mark (`None`) as a `run_frames` without frames, in its place among the run's.
fn pack(origin: &str, batch: Vec<(String, Option<RemoteFrame>)>) -> Vec<Event> {
    let mut by_run: Vec<(String, Vec<Option<RemoteFrame>>)> = Vec::new();
    for (run_id, frame) in batch {
        match by_run.iter_mut().find(|(r, _)| *r == run_id) {
            Some((_, frames)) => frames.push(frame),
            None => by_run.push((run_id, vec![frame])),
        }
    }
    let mut payloads = Vec::new();
    for (run_id, frames) in by_run {
        let event =
            |frames: Vec<RemoteFrame>| Event::RunFrames { origin: origin.to_owned(), run_id: run_id.clone(), frames };
        let empty = event(Vec::new()).to_json().len();
        let (mut group, mut size) = (Vec::new(), empty);
        for frame in frames {
            let Some(frame) = frame else {
                if !group.is_empty() {
                    payloads.push(event(std::mem::take(&mut group)));
                    size = empty;
                }
                payloads.push(event(Vec::new()));
                continue;
            };
            // One more frame: its JSON and a comma.
            let len = serde_json::to_string(&frame).expect("frames serialize").len() + 1;
            if !group.is_empty() && size + len > MAX_EVENT_BYTES {
                payloads.push(event(std::mem::take(&mut group)));
                size = empty;
            }
            if empty + len > MAX_EVENT_BYTES {
                tracing::error!(run = %run_id, bytes = len, "run frame too large to send to other processes; dropped");
                continue;
            }
            group.push(frame);
            size += len;
        }
        if !group.is_empty() {
            payloads.push(event(group));
        }
    }
    payloads
}

/// A delta's text cut into pieces of at most `max` bytes (on character boundaries).
pub fn pieces(text: &str, max: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while rest.len() > max {
        let mut cut = max;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let (head, tail) = rest.split_at(cut);
        out.push(head);
        rest = tail;
    }
    if !rest.is_empty() || out.is_empty() {
        out.push(rest);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::wire::{ServerFrame, Typed};

    fn delta(seq: u64, text: &str) -> RemoteFrame {
        let frame: ServerFrame = Typed::RunDelta { run_id: "run_x".into(), seq, text: text.into() }.into();
        RemoteFrame { version: seq as i64 + 2, starts_attempt: false, frame: frame.to_json() }
    }

    #[test]
    fn the_largest_delta_fits_one_notification_even_when_every_byte_is_escaped() {
        let worst: String = "\u{1}".repeat(MAX_DELTA_BYTES);
        let events =
            pack("12345-abcdefgh", vec![("run_0123456789abcdefghij".into(), Some(delta(1_000_000_000, &worst)))]);
        assert_eq!(events.len(), 1);
        let payload = serde_json::to_string(&events[0]).unwrap();
        assert!(payload.len() <= MAX_EVENT_BYTES, "{}", payload.len());
    }

    #[test]
    fn frames_are_packed_under_the_limit_and_kept_in_order_per_run() {
        let text = "a\"b".repeat(300);
        let mut batch = Vec::new();
        for seq in 0..40 {
            batch.push(("r1".to_owned(), Some(delta(seq, &text))));
            batch.push(("r2".to_owned(), Some(delta(seq, "x"))));
        }
        let payloads: Vec<String> = pack("o", batch).iter().map(|e| serde_json::to_string(e).unwrap()).collect();
        assert!(payloads.len() > 2, "split over several notifications");
        let mut seqs: std::collections::HashMap<String, Vec<i64>> = Default::default();
        for p in &payloads {
            assert!(p.len() <= MAX_EVENT_BYTES);
            let Event::RunFrames { run_id, frames, .. } = serde_json::from_str(p).unwrap() else { panic!("{p}") };
            seqs.entry(run_id).or_default().extend(frames.iter().map(|f| f.version));
        }
        let expected: Vec<i64> = (2..42).collect();
        assert_eq!(seqs["r1"], expected);
        assert_eq!(seqs["r2"], expected);
        // Small frames share one notification.
        assert_eq!(payloads.iter().filter(|p| p.contains("\"run_id\":\"r2\"")).count(), 1);
    }

    /// A backplane whose first publish waits for `go`; records what it is asked to send.
    struct Slow {
        go: Arc<tokio::sync::Notify>,
        first: std::sync::atomic::AtomicBool,
        sent: Arc<Mutex<Vec<Event>>>,
    }

    impl Backplane for Slow {
        fn name(&self) -> &'static str {
            "slow"
        }
        fn shared(&self) -> bool {
            true
        }
        fn publish(
            &self,
            events: Vec<Event>,
        ) -> futures_util::future::LocalBoxFuture<'static, Result<(), crate::backplane::BackplaneError>> {
            use futures_util::FutureExt;
            let first = self.first.swap(false, std::sync::atomic::Ordering::SeqCst);
            let (go, sent) = (self.go.clone(), self.sent.clone());
            async move {
                if first {
                    go.notified().await;
                }
                sent.lock().unwrap().extend(events);
                Ok(())
            }
            .boxed_local()
        }
        fn listen(&self, _sinks: crate::backplane::Sinks) {}
        fn is_up(&self) -> bool {
            true
        }
        fn stop(&self) {}
    }

    fn frame(run_id: &str, version: i64, starts: bool) -> ByteString {
        let frame: ServerFrame = if starts {
            Typed::RunStarted { run_id: run_id.into(), model: "m".into(), attempt: None }.into()
        } else {
            Typed::RunDelta { run_id: run_id.into(), seq: version as u64, text: "x".into() }.into()
        };
        frame.to_bytes()
    }

    #[actix_rt::test]
    async fn an_overflowing_run_is_sent_up_to_its_loss_then_marked_and_the_remote_sends_its_end_whole() {
        let go = Arc::new(tokio::sync::Notify::new());
        let sent = Arc::new(Mutex::new(Vec::new()));
        let backplane = Arc::new(Slow { go: go.clone(), first: true.into(), sent: sent.clone() });
        let metrics = Metrics::new();
        let relay = Relay::with_capacity("p1".into(), backplane, &metrics, 2);
        relay.forward("r", 1, &frame("r", 1, true), true);
        // The sender gathers 1 and is stuck sending it: 2 and 3 fill the queue, 4 is dropped,
        // and with it 5, the rest of the attempt (the gap is never closed).
        tokio::time::sleep(GATHER * 2).await;
        for v in 2..=5 {
            relay.forward("r", v, &frame("r", v, false), false);
        }
        let dropped = metrics.backplane_dropped.with_label_values(&["relay"]);
        assert_eq!(dropped.get(), 2);
        go.notify_one();
        relay.flush().await;
        // The next attempt is sent again from its start.
        relay.forward("r", 6, &frame("r", 6, true), true);
        relay.forward("r", 7, &frame("r", 7, false), false);
        relay.flush().await;
        let sent = sent.lock().unwrap().clone();
        let versions: Vec<Vec<i64>> = sent
            .iter()
            .map(|e| match e {
                Event::RunFrames { frames, .. } => frames.iter().map(|f| f.version).collect(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(versions, [vec![1], vec![2, 3], vec![], vec![6, 7]], "the lost mark after the frames sent");
        assert_eq!(dropped.get(), 2);

        // What another process makes of it: 1..3 go to its sessions, then the attempt is
        // mirrored no more (its end will be sent whole from storage); the next one is again.
        let live = crate::runs::live::LiveRuns::new();
        let mut published = Vec::new();
        let mut mirrored_at_end_of_attempt = Vec::new();
        for event in sent {
            let Event::RunFrames { run_id, frames, .. } = event else { unreachable!() };
            let starts_next = frames.first().is_some_and(|f| f.starts_attempt && f.version == 6);
            if starts_next {
                mirrored_at_end_of_attempt.push(live.frames("r").is_some());
            }
            published.extend(crate::runs::remote::mirror(&live, &run_id, frames).into_iter().map(|(v, _)| v));
        }
        assert_eq!(published, [1, 2, 3, 6, 7]);
        assert_eq!(mirrored_at_end_of_attempt, [false], "the first attempt's end is sent from storage, whole");
        assert_eq!(live.frames("r").unwrap().len(), 2);
    }

    #[test]
    fn a_lost_mark_keeps_its_place_among_its_runs_frames() {
        let batch = vec![
            ("r".to_owned(), Some(delta(0, "a"))),
            ("q".to_owned(), Some(delta(0, "b"))),
            ("r".to_owned(), None),
            ("r".to_owned(), Some(delta(5, "c"))),
        ];
        let shapes: Vec<(String, Vec<i64>)> = pack("o", batch)
            .into_iter()
            .map(|e| match e {
                Event::RunFrames { run_id, frames, .. } => (run_id, frames.iter().map(|f| f.version).collect()),
                other => panic!("{other:?}"),
            })
            .collect();
        let shape = |r: &str, v: &[i64]| (r.to_owned(), v.to_vec());
        assert_eq!(shapes, [shape("r", &[2]), shape("r", &[]), shape("r", &[7]), shape("q", &[2])]);
    }

    #[test]
    fn pieces_cut_on_character_boundaries() {
        assert_eq!(pieces("", 4), vec![""]);
        assert_eq!(pieces("abcd", 4), vec!["abcd"]);
        assert_eq!(pieces("abcdefghi", 4), vec!["abcd", "efgh", "i"]);
        let text = "é".repeat(5);
        let cut = pieces(&text, 3);
        assert!(cut.iter().all(|p| p.len() <= 3 && !p.is_empty()));
        assert_eq!(cut.concat(), text);
    }
}
