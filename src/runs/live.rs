//! Runs as this process sees them right now: the frames of the current attempt (so a late
//! subscriber gets the text so far, exactly as the deltas were sent) and the cancel signal of
//! its upstream stream. (Who waits on a run is counted in the database, over every process.)
//!
//! Frames carry a version that grows over the whole run; a subscriber drops any frame whose
//! version it has already seen, so a catch-up and the live frames never double up. Never
//! touches the database; a short mutex, never held across an await.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytestring::ByteString;
use tokio::sync::watch;

use crate::ws::protocol::ServerFrame;

/// How long the frames of a finished run stay for late subscribers (then the database answers).
const KEEP_FINISHED: Duration = Duration::from_secs(60);

struct LiveRun {
    frames: Vec<(i64, ByteString)>,
    next_version: i64,
    cancel: watch::Sender<bool>,
    finished_at: Option<Instant>,
}

impl LiveRun {
    fn new() -> Self {
        LiveRun { frames: Vec::new(), next_version: 1, cancel: watch::channel(false).0, finished_at: None }
    }
}

#[derive(Default)]
pub struct LiveRuns {
    runs: Mutex<HashMap<String, LiveRun>>,
}

impl LiveRuns {
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, run_id: &str, f: impl FnOnce(&mut LiveRun) -> T) -> T {
        let mut runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        // Forget finished runs once nobody can still be catching up on them.
        if runs.len() > 64 {
            runs.retain(|_, r| r.finished_at.is_none_or(|t| t.elapsed() < KEEP_FINISHED));
        }
        f(runs.entry(run_id.to_owned()).or_insert_with(LiveRun::new))
    }

    /// Tells the run's stream (now or when it starts) to stop.
    pub fn cancel(&self, run_id: &str) {
        self.with(run_id, |r| r.cancel.send_replace(true));
    }

    pub fn cancel_signal(&self, run_id: &str) -> watch::Receiver<bool> {
        self.with(run_id, |r| r.cancel.subscribe())
    }

    /// A new attempt: the earlier attempt's frames are no longer the run's text.
    pub fn begin_attempt(&self, run_id: &str) {
        self.with(run_id, |r| {
            r.frames.clear();
            r.finished_at = None;
        });
    }

    /// Records a frame of the run (serialized once) and returns it with its version.
    pub fn push(&self, run_id: &str, frame: &ServerFrame) -> (i64, ByteString) {
        let text = ByteString::from(frame.to_json());
        self.with(run_id, |r| {
            let version = r.next_version;
            r.next_version += 1;
            r.frames.push((version, text.clone()));
            (version, text)
        })
    }

    /// The run ended (its last frame was pushed).
    pub fn finish(&self, run_id: &str) {
        self.with(run_id, |r| r.finished_at = Some(Instant::now()));
    }

    /// The frames so far, when this process has streamed (or is streaming) the run.
    pub fn frames(&self, run_id: &str) -> Option<Vec<(i64, ByteString)>> {
        let runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        runs.get(run_id).filter(|r| !r.frames.is_empty()).map(|r| r.frames.clone())
    }
}
