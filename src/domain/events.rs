//! What one lorewire process tells the others: a small event enum, serialized as JSON on
//! whatever backplane carries it. Pure; never sends anything itself.

use serde::{Deserialize, Serialize};

/// Largest serialized event any backplane must carry (PostgreSQL takes at most 8000 bytes per
/// notification; this stays well below).
pub const MAX_EVENT_BYTES: usize = 7000;

/// What one process tells the others.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t")]
pub enum Event {
    /// A content item changed; listeners read it and publish it.
    #[serde(rename = "content")]
    Content {
        origin: String,
        kind: String,
        subject_id: i64,
        version: i64,
        /// The player whose own item it is; 0 (or absent, from an older process) for a shared one.
        #[serde(default)]
        owner: i64,
    },
    /// A lobby message was stored, or its mood settled; listeners read it and publish it.
    #[serde(rename = "message")]
    Message { origin: String, change: MessageChange, id: i64 },
    /// Users who came online (with their nickname) or went offline on the `origin` process.
    #[serde(rename = "presence")]
    Presence { origin: String, online: Vec<(i64, String)>, offline: Vec<i64> },
    /// A process (re)started listening: every other process announces who is online on it.
    #[serde(rename = "hello")]
    Hello { origin: String },
    /// The `origin` process is alive (its presence is dropped when it stops saying so).
    #[serde(rename = "alive")]
    Alive { origin: String },
    /// A generation run ended; listeners send its end to their own subscribers (its stored
    /// result whole, when they did not hear the attempt's frames live).
    #[serde(rename = "run_ended")]
    RunEnded { origin: String, run_id: String },
    /// Frames (`run:started`, `run:delta`) of a run streamed by the `origin` process, in order.
    #[serde(rename = "run_frames")]
    RunFrames { origin: String, run_id: String, frames: Vec<RemoteFrame> },
    /// Nobody waits on a running run any more: the process streaming it stops and ends it.
    #[serde(rename = "run_cancel")]
    RunCancel { origin: String, run_id: String },
    /// The `origin` process dropped events it meant to send (its queue to the backplane was
    /// full): every other process resyncs as after a reconnect of its own.
    #[serde(rename = "resync")]
    Resync { origin: String },
    /// A player was blocked: listeners close its sessions (4003 "blocked").
    #[serde(rename = "player_blocked")]
    PlayerBlocked { origin: String, user_id: i64 },
    /// An upstream's circuit opened or closed (or was reset by the admin) on the `origin`
    /// process: listeners apply it to their own breaker of that upstream.
    #[serde(rename = "circuit")]
    Circuit {
        origin: String,
        upstream: i64,
        /// `closed`, `open` or `half_open`.
        state: String,
        opened_at: Option<chrono::NaiveDateTime>,
        resets_at: Option<chrono::NaiveDateTime>,
    },
}

/// One frame of a run streamed by another process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteFrame {
    /// Its version on the run (the same on every process).
    #[serde(rename = "v")]
    pub version: i64,
    /// It is the `run:started` of an attempt.
    #[serde(rename = "s", default, skip_serializing_if = "std::ops::Not::not")]
    pub starts_attempt: bool,
    /// The frame as sent to clients.
    #[serde(rename = "f")]
    pub frame: String,
}

impl Event {
    /// The event as it travels between processes (NOTIFY payload, Redis message).
    pub fn to_json(&self) -> String {
        // Plain strings, numbers and enums: serializing cannot fail.
        serde_json::to_string(self).expect("events serialize")
    }

    pub fn origin(&self) -> &str {
        match self {
            Event::Content { origin, .. }
            | Event::Message { origin, .. }
            | Event::Presence { origin, .. }
            | Event::Hello { origin }
            | Event::Alive { origin }
            | Event::RunEnded { origin, .. }
            | Event::RunFrames { origin, .. }
            | Event::RunCancel { origin, .. }
            | Event::Resync { origin }
            | Event::PlayerBlocked { origin, .. }
            | Event::Circuit { origin, .. } => origin,
        }
    }
}

/// What happened to a lobby message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageChange {
    New,
    Mood,
}
