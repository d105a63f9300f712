//! Runs as other processes stream and end them, heard on the backplane: their frames are mirrored
//! into [`LiveRuns`] and pushed to the run's sessions here, in order; a run's end is read back (it
//! is committed); a cancel reaches the stream of this process. Frames lost on the way (a gap in
//! the versions, an empty `run_frames` from a relay that dropped some, events lost to a
//! reconnect) stop the mirroring of the attempt: its end is then sent from storage, whole
//! (`run:started`, the text, the end), as for an attempt heard from its middle. Never writes.

use std::sync::Arc;

use actix::Addr;
use bytestring::ByteString;
use futures_util::future::LocalBoxFuture;
use futures_util::FutureExt;

use super::live::LiveRuns;
use super::service::{end_frame, finish, publish, stored_frames};
use crate::backplane::{Event, Family, Sink};
use crate::domain::events::RemoteFrame;
use crate::domain::topic::Topic;
use crate::hub::{DropTopic, Hub, Publish};
use crate::store::runs as rows;
use crate::store::Store;

pub struct RunsSink {
    pub store: Store,
    pub hub: Addr<Hub>,
    pub live: Arc<LiveRuns>,
}

impl Sink for RunsSink {
    fn family(&self) -> Family {
        Family::Runs
    }

    fn deliver(&self, event: Event) -> LocalBoxFuture<'static, ()> {
        match event {
            Event::RunFrames { run_id, frames, .. } => {
                let topic = Topic::run(&run_id);
                for (version, text) in mirror(&self.live, &run_id, frames) {
                    self.hub.do_send(Publish { topic: topic.clone(), version: Some(version), text });
                }
            }
            Event::RunCancel { run_id, .. } => {
                tracing::info!(run = %run_id, "another process asks to stop the run");
                self.live.cancel(&run_id);
            }
            Event::RunEnded { run_id, .. } => {
                let (store, hub, live) = (self.store.clone(), self.hub.clone(), self.live.clone());
                return async move { run_ended(&store, &hub, &live, run_id).await }.boxed_local();
            }
            _ => {}
        }
        async {}.boxed_local()
    }

    /// Frames sent meanwhile were lost: the runs mirrored here have their end sent whole.
    fn reconnected(&self) -> LocalBoxFuture<'static, ()> {
        let forgotten = self.live.forget_mirrored();
        if forgotten > 0 {
            tracing::info!(runs = forgotten, "runs streamed elsewhere will have their end sent whole");
        }
        async {}.boxed_local()
    }
}

/// Mirrors the frames of a run streamed by another process into `live`; answers those to send
/// to the run's sessions here. No frames: the streaming process could not send some of them
/// (its relay's queue was full), so the attempt is mirrored no more.
pub fn mirror(live: &LiveRuns, run_id: &str, frames: Vec<RemoteFrame>) -> Vec<(i64, ByteString)> {
    if frames.is_empty() {
        tracing::info!(run = %run_id, "frames of a run streamed elsewhere were lost; its end is sent whole");
        live.forget_mirrored_attempt(run_id);
    }
    let mut accepted = Vec::with_capacity(frames.len());
    for f in frames {
        let text = ByteString::from(f.frame);
        // A frame heard without its attempt's start, or after a gap, would leave subscribers one.
        if live.push_remote(run_id, f.version, text.clone(), f.starts_attempt) {
            accepted.push((f.version, text));
        }
    }
    accepted
}

/// Sends a run's end to its sessions here: only the end when this process heard the attempt's
/// frames live, else the stored result whole.
async fn run_ended(store: &Store, hub: &Addr<Hub>, live: &LiveRuns, run_id: String) {
    let id = run_id.clone();
    let row = match store.run(move |conn| rows::find(conn, &id)).await {
        Ok(Some(row)) => row,
        Ok(None) => return,
        Err(e) => {
            tracing::error!(run = %run_id, error = %e, "could not read an ended run");
            return;
        }
    };
    if live.frames(&run_id).is_some() {
        publish(live, hub, &run_id, end_frame(&row));
        finish(live, hub, &run_id);
        return;
    }
    let topic = Topic::run(&run_id);
    for (_, text) in stored_frames(&row, false) {
        hub.do_send(Publish { topic: topic.clone(), version: None, text });
    }
    hub.do_send(DropTopic { topic });
    live.ended();
}
