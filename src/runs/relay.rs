//! Sends the frames of the runs this process streams (`run:started`, `run:delta`) to the other
//! processes over the backplane, so their subscribers follow the run live.
//!
//! Frames are gathered for a short window and sent as few events as fit the backplane's size
//! limit, by one sender task, so they are sent (and heard) in the order they were made. The run's
//! end is announced by its settlement; [`Relay::flush`] first. Holds no lock across an await.

use std::sync::Arc;
use std::time::Duration;

use bytestring::ByteString;
use tokio::sync::{mpsc, oneshot};

use crate::backplane::Backplane;
use crate::core::process::ProcessId;
use crate::domain::events::{Event, RemoteFrame, MAX_EVENT_BYTES};

/// How long frames are gathered before they are sent.
const GATHER: Duration = Duration::from_millis(25);
/// Longest `run:delta` text: its frame fits one event even when every byte needs escaping
/// twice (`\u0001` in the frame, `\\u0001` in the event).
pub const MAX_DELTA_BYTES: usize = 900;

enum Outgoing {
    Frame(String, RemoteFrame),
    /// Answered once every frame queued before it has been sent.
    Flush(oneshot::Sender<()>),
}

pub struct Relay {
    queue: mpsc::UnboundedSender<Outgoing>,
}

impl Relay {
    /// Starts the relay's sender task on the current actix arbiter.
    pub fn new(origin: ProcessId, backplane: Arc<dyn Backplane>) -> Arc<Self> {
        let (queue, rx) = mpsc::unbounded_channel();
        actix::spawn(send_in_order(origin, backplane, rx));
        Arc::new(Relay { queue })
    }

    /// Queues a frame of a run streamed here; it is sent within the gather window.
    pub fn forward(self: &Arc<Self>, run_id: &str, version: i64, frame: &ByteString, starts_attempt: bool) {
        let remote = RemoteFrame { version, starts_attempt, frame: frame.to_string() };
        let _ = self.queue.send(Outgoing::Frame(run_id.to_owned(), remote));
    }

    /// Waits until every frame queued so far has been sent.
    pub async fn flush(&self) {
        let (done, sent) = oneshot::channel();
        if self.queue.send(Outgoing::Flush(done)).is_ok() {
            let _ = sent.await;
        }
    }
}

/// The sender task: gathers frames for [`GATHER`] (or until a flush asks), sends them, repeats.
async fn send_in_order(origin: ProcessId, backplane: Arc<dyn Backplane>, mut rx: mpsc::UnboundedReceiver<Outgoing>) {
    while let Some(first) = rx.recv().await {
        let mut batch = Vec::new();
        let mut flushes = Vec::new();
        match first {
            Outgoing::Frame(run_id, frame) => {
                batch.push((run_id, frame));
                let gather = tokio::time::sleep(GATHER);
                tokio::pin!(gather);
                loop {
                    tokio::select! {
                        _ = &mut gather => break,
                        next = rx.recv() => match next {
                            Some(Outgoing::Frame(run_id, frame)) => batch.push((run_id, frame)),
                            Some(Outgoing::Flush(done)) => { flushes.push(done); break }
                            None => break,
                        },
                    }
                }
            }
            Outgoing::Flush(done) => flushes.push(done),
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

/// The frames as `run_frames` events of at most [`MAX_EVENT_BYTES`] serialized, each run's in order.
fn pack(origin: &str, batch: Vec<(String, RemoteFrame)>) -> Vec<Event> {
    let mut by_run: Vec<(String, Vec<RemoteFrame>)> = Vec::new();
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
        let events = pack("12345-abcdefgh", vec![("run_0123456789abcdefghij".into(), delta(1_000_000_000, &worst))]);
        assert_eq!(events.len(), 1);
        let payload = serde_json::to_string(&events[0]).unwrap();
        assert!(payload.len() <= MAX_EVENT_BYTES, "{}", payload.len());
    }

    #[test]
    fn frames_are_packed_under_the_limit_and_kept_in_order_per_run() {
        let text = "a\"b".repeat(300);
        let mut batch = Vec::new();
        for seq in 0..40 {
            batch.push(("r1".to_owned(), delta(seq, &text)));
            batch.push(("r2".to_owned(), delta(seq, "x")));
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
