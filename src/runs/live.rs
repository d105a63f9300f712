//! Runs as this process sees them right now: the frames of the current attempt (so a late
//! subscriber gets the text so far, exactly as the deltas were sent) and the cancel signal of
//! its upstream stream. (Who waits on a run is counted in the database, over every process.)
//!
//! Frames carry a version that grows over the whole run; a subscriber drops any frame whose
//! version it has already seen, so a catch-up and the live frames never double up. Frames of a
//! run streamed by another process (PostgreSQL) are mirrored here with that process's versions.
//! Never touches the database; a short mutex, never held across an await.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytestring::ByteString;
use tokio::sync::watch;

use crate::domain::wire::ServerFrame;

/// How long a run nobody streams here stays after its last change (a finished run's frames
/// for late subscribers, a cancel for a stream about to start); then the database answers.
const KEEP_IDLE: Duration = Duration::from_secs(60);
/// Forgotten runs are looked for at most this often.
const PRUNE_EVERY: Duration = Duration::from_secs(1);

struct LiveRun {
    frames: Vec<(i64, ByteString)>,
    next_version: i64,
    cancel: watch::Sender<bool>,
    /// Last change; an entry without a stream watching its cancel signal is dropped after
    /// `keep` of quiet.
    touched: Instant,
}

impl LiveRun {
    fn new() -> Self {
        LiveRun { frames: Vec::new(), next_version: 1, cancel: watch::channel(false).0, touched: Instant::now() }
    }

    /// A stream of this process holds the cancel signal: the run is in use here.
    fn streaming(&self) -> bool {
        self.cancel.receiver_count() > 0
    }
}

struct Runs {
    map: HashMap<String, LiveRun>,
    pruned_at: Instant,
}

pub struct LiveRuns {
    runs: Mutex<Runs>,
    keep: Duration,
    /// Counts the runs whose end was heard here (committed), for those waiting on one.
    ends: watch::Sender<u64>,
}

impl Default for LiveRuns {
    fn default() -> Self {
        Self::with_keep(KEEP_IDLE)
    }
}

impl LiveRuns {
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets a run `keep` after its last change once no stream of this process holds it.
    pub fn with_keep(keep: Duration) -> Self {
        let runs = Mutex::new(Runs { map: HashMap::new(), pruned_at: Instant::now() });
        LiveRuns { runs, keep, ends: watch::channel(0).0 }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Runs> {
        let mut runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        if runs.pruned_at.elapsed() >= PRUNE_EVERY.min(self.keep) {
            let keep = self.keep;
            runs.map.retain(|_, r| r.streaming() || r.touched.elapsed() < keep);
            runs.pruned_at = Instant::now();
        }
        runs
    }

    fn with<T>(&self, run_id: &str, f: impl FnOnce(&mut LiveRun) -> T) -> T {
        let mut runs = self.lock();
        let run = runs.map.entry(run_id.to_owned()).or_insert_with(LiveRun::new);
        run.touched = Instant::now();
        f(run)
    }

    /// Forgets the runs nobody streams here that have been quiet for long enough.
    pub fn prune(&self) {
        drop(self.lock());
    }

    /// Runs remembered now.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
        self.with(run_id, |r| r.frames.clear());
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

    /// Mirrors a frame of a run another process streams, with that process's version.
    /// `starts_attempt` for its `run:started`. `false` (not recorded) when the frame does not
    /// follow on from what is here: this process heard the attempt only from its middle, or
    /// a frame before it was lost (the streaming process numbers an attempt's frames without
    /// gaps). After a gap the attempt is no longer mirrored, as if heard from its middle.
    pub fn push_remote(&self, run_id: &str, version: i64, text: ByteString, starts_attempt: bool) -> bool {
        let mut runs = self.lock();
        if !starts_attempt && runs.map.get(run_id).is_none_or(|r| r.frames.is_empty()) {
            return false;
        }
        let run = runs.map.entry(run_id.to_owned()).or_insert_with(LiveRun::new);
        run.touched = Instant::now();
        if starts_attempt {
            run.frames.clear();
        }
        match run.frames.last() {
            Some((v, _)) if *v >= version => return false,
            Some((v, _)) if *v + 1 < version => {
                run.frames.clear();
                return false;
            }
            _ => {}
        }
        run.next_version = run.next_version.max(version + 1);
        run.frames.push((version, text));
        true
    }

    /// Frames of runs other processes stream were lost: the attempts mirrored here are mirrored
    /// no more (their end is sent from storage, whole). Runs streamed here are kept.
    pub fn forget_mirrored(&self) -> usize {
        let mut runs = self.lock();
        let mut forgotten = 0;
        for run in runs.map.values_mut().filter(|r| !r.streaming() && !r.frames.is_empty()) {
            run.frames.clear();
            forgotten += 1;
        }
        forgotten
    }

    /// The run's current attempt, streamed by another process, is mirrored no more (frames of
    /// it were lost); its end is sent from storage, whole.
    pub fn forget_mirrored_attempt(&self, run_id: &str) {
        let mut runs = self.lock();
        if let Some(run) = runs.map.get_mut(run_id).filter(|r| !r.streaming()) {
            run.frames.clear();
        }
    }

    /// The run ended (its last frame was pushed); its frames stay a while for late subscribers.
    pub fn finish(&self, run_id: &str) {
        self.with(run_id, |_| {});
        self.ended();
    }

    /// A run's end was committed (here, or heard from another process).
    pub fn ended(&self) {
        self.ends.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Changes whenever a run's end is heard from now on.
    pub fn ends(&self) -> watch::Receiver<u64> {
        self.ends.subscribe()
    }

    /// The frames so far, when this process has streamed (or is streaming) the run.
    pub fn frames(&self, run_id: &str) -> Option<Vec<(i64, ByteString)>> {
        let runs = self.lock();
        runs.map.get(run_id).filter(|r| !r.frames.is_empty()).map(|r| r.frames.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::wire::Typed;

    fn delta(seq: u64) -> ServerFrame {
        Typed::RunDelta { run_id: "r".into(), seq, text: "x".into() }.into()
    }

    #[test]
    fn every_run_is_forgotten_once_quiet_and_not_streaming() {
        let keep = Duration::from_millis(30);
        let live = LiveRuns::with_keep(keep);
        // A cancel for a run streamed elsewhere, a finished run, and an attempt whose end was
        // dropped (its job taken over): none of them is ever finished here.
        live.cancel("cancelled-only");
        live.push("finished", &delta(0));
        live.finish("finished");
        live.push("dropped", &delta(0));
        // A stream of this process still holds this one.
        let signal = live.cancel_signal("streaming");
        assert_eq!(live.len(), 4);

        std::thread::sleep(keep * 2);
        live.prune();
        assert_eq!(live.len(), 1, "only the streaming run is left");
        assert!(live.frames("finished").is_none());

        drop(signal);
        std::thread::sleep(keep * 2);
        live.prune();
        assert!(live.is_empty());
    }

    #[test]
    fn a_cancel_before_the_stream_starts_is_seen_by_it() {
        let live = LiveRuns::new();
        live.cancel("r");
        assert!(*live.cancel_signal("r").borrow());
    }

    #[test]
    fn mirrored_frames_start_at_an_attempt_and_keep_the_remote_versions() {
        let live = LiveRuns::new();
        let text = |s: &str| ByteString::from(s.to_owned());
        assert!(!live.push_remote("r", 5, text("d"), false), "heard from the middle: not mirrored");
        assert!(live.frames("r").is_none());
        assert!(live.push_remote("r", 6, text("s"), true));
        assert!(live.push_remote("r", 7, text("d"), false));
        assert!(!live.push_remote("r", 7, text("d"), false), "no frame twice");
        assert_eq!(live.frames("r").unwrap().iter().map(|(v, _)| *v).collect::<Vec<_>>(), vec![6, 7]);
        // Frames made here later (the run's end) come after the mirrored ones.
        assert_eq!(live.push("r", &delta(2)).0, 8);
    }

    #[test]
    fn a_mirrored_attempt_with_a_frame_missing_is_mirrored_no_more() {
        let live = LiveRuns::new();
        let text = |s: &str| ByteString::from(s.to_owned());
        assert!(live.push_remote("r", 1, text("s"), true));
        assert!(live.push_remote("r", 2, text("d0"), false));
        assert!(!live.push_remote("r", 4, text("d2"), false), "3 was lost");
        assert!(live.frames("r").is_none(), "the end is sent from storage, whole");
        assert!(!live.push_remote("r", 5, text("d3"), false), "nor the rest of the attempt");
        // The next attempt is mirrored again from its start.
        assert!(live.push_remote("r", 6, text("s2"), true));
        assert!(live.push_remote("r", 7, text("d"), false));
        assert_eq!(live.frames("r").unwrap().len(), 2);
    }

    #[test]
    fn lost_frames_forget_every_mirrored_attempt_but_not_the_runs_streamed_here() {
        let live = LiveRuns::new();
        let text = |s: &str| ByteString::from(s.to_owned());
        assert!(live.push_remote("remote", 1, text("s"), true));
        let _signal = live.cancel_signal("here");
        live.push("here", &delta(0));
        assert_eq!(live.forget_mirrored(), 1);
        assert!(live.frames("remote").is_none());
        assert!(!live.push_remote("remote", 2, text("d"), false));
        assert_eq!(live.frames("here").unwrap().len(), 1);
        live.forget_mirrored_attempt("here");
        assert_eq!(live.frames("here").unwrap().len(), 1, "a run streamed here is never forgotten");
    }
}
