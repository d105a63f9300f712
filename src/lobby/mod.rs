//! The lobby: one global room. [`presence`] (who is online, over all their tabs and processes),
//! [`chat`] (message rules, rate, the recent messages sent on join), [`mood`] (the mood prompt), [`remote`] (what other
//! processes change); [`frames`] (the lobby frames as the Hub sends them). Never calls the LLM itself.

pub mod chat;
pub mod frames;
pub mod mood;
pub mod mood_job;
mod peers;
pub mod presence;
pub mod remote;

pub use chat::{Chat, SendRefused};
pub use frames::{mood_publish, new_message_publish};
pub use presence::{Join, Leave, ListenerReady, OnlinePlayers, Page, PendingState, Presence, PresencePage, Remote};

pub use crate::domain::lobby::{
    validate_text, Message, Mood, MoodStatus, PresenceLeave, PresenceUser, MAX_MESSAGE_CHARS,
};
