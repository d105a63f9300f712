//! Sends the frames of the runs this process streams (`run:started`, `run:delta`) to the other
//! processes sharing its PostgreSQL database, so their subscribers follow the run live.
//!
//! Frames are gathered for a short window and sent as few notifications as fit the payload
//! limit, one sender at a time so they are committed (and heard) in the order they were made.
//! The run's end is announced by its settlement; flush before it. Never holds a lock across
//! an await except its own send lock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytestring::ByteString;

use crate::store::notify::{self, Event, RemoteFrame, MAX_PAYLOAD_BYTES};
use crate::store::Store;

/// How long frames are gathered before they are sent.
const GATHER: Duration = Duration::from_millis(25);
/// Longest `run:delta` text: its frame fits one notification even when every byte needs
/// escaping twice (`\u0001` in the frame, `\\u0001` in the event).
pub const MAX_DELTA_BYTES: usize = 900;

pub struct Relay {
    origin: Arc<str>,
    store: Store,
    pending: Mutex<Vec<(String, RemoteFrame)>>,
    scheduled: AtomicBool,
    sending: tokio::sync::Mutex<()>,
}

impl Relay {
    pub fn new(origin: Arc<str>, store: Store) -> Arc<Self> {
        Arc::new(Relay {
            origin,
            store,
            pending: Mutex::new(Vec::new()),
            scheduled: AtomicBool::new(false),
            sending: tokio::sync::Mutex::new(()),
        })
    }

    /// Queues a frame of a run streamed here; it is sent within the gather window.
    pub fn forward(self: &Arc<Self>, run_id: &str, version: i64, frame: &ByteString, starts_attempt: bool) {
        let remote = RemoteFrame { version, starts_attempt, frame: frame.to_string() };
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).push((run_id.to_owned(), remote));
        if !self.scheduled.swap(true, Ordering::AcqRel) {
            let relay = self.clone();
            actix_web::rt::spawn(async move {
                actix_web::rt::time::sleep(GATHER).await;
                relay.scheduled.store(false, Ordering::Release);
                relay.flush().await;
            });
        }
    }

    /// Sends every frame queued so far, after those already on their way.
    pub async fn flush(&self) {
        let _sending = self.sending.lock().await;
        let batch = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        if batch.is_empty() {
            return;
        }
        let payloads = pack(&self.origin, batch);
        if let Err(e) = self.store.run(move |conn| notify::announce(conn, &payloads)).await {
            tracing::warn!(error = %e, "run frames could not be sent to the other processes");
        }
    }
}

/// The frames as `run_frames` notifications of at most [`MAX_PAYLOAD_BYTES`], each run's in order.
fn pack(origin: &str, batch: Vec<(String, RemoteFrame)>) -> Vec<String> {
    let mut by_run: Vec<(String, Vec<RemoteFrame>)> = Vec::new();
    for (run_id, frame) in batch {
        match by_run.iter_mut().find(|(r, _)| *r == run_id) {
            Some((_, frames)) => frames.push(frame),
            None => by_run.push((run_id, vec![frame])),
        }
    }
    let mut payloads = Vec::new();
    for (run_id, frames) in by_run {
        let event = |frames: Vec<RemoteFrame>| {
            let event = Event::RunFrames { origin: origin.to_owned(), run_id: run_id.clone(), frames };
            serde_json::to_string(&event).expect("events serialize")
        };
        let empty = event(Vec::new()).len();
        let (mut group, mut size) = (Vec::new(), empty);
        for frame in frames {
            // One more frame: its JSON and a comma.
            let len = serde_json::to_string(&frame).expect("frames serialize").len() + 1;
            if !group.is_empty() && size + len > MAX_PAYLOAD_BYTES {
                payloads.push(event(std::mem::take(&mut group)));
                size = empty;
            }
            if empty + len > MAX_PAYLOAD_BYTES {
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
        let payloads = pack("12345-abcdefgh", vec![("run_0123456789abcdefghij".into(), delta(1_000_000_000, &worst))]);
        assert_eq!(payloads.len(), 1);
        assert!(payloads[0].len() <= MAX_PAYLOAD_BYTES, "{}", payloads[0].len());
    }

    #[test]
    fn frames_are_packed_under_the_limit_and_kept_in_order_per_run() {
        let text = "a\"b".repeat(300);
        let mut batch = Vec::new();
        for seq in 0..40 {
            batch.push(("r1".to_owned(), delta(seq, &text)));
            batch.push(("r2".to_owned(), delta(seq, "x")));
        }
        let payloads = pack("o", batch);
        assert!(payloads.len() > 2, "split over several notifications");
        let mut seqs: std::collections::HashMap<String, Vec<i64>> = Default::default();
        for p in &payloads {
            assert!(p.len() <= MAX_PAYLOAD_BYTES);
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
