//! The lobby's frames as the Hub sends them to every session in the lobby: serialized once.
//! Never sends anything itself.

use crate::domain::lobby::Message;
use crate::domain::wire::{ServerFrame, Typed};
use crate::hub::{Publish, Topic};

/// `message:new` for everyone in the lobby.
pub fn new_message_publish(message: Message) -> Publish {
    let message_id = message.id;
    let frame: ServerFrame = Typed::MessageNew { message }.into();
    Publish { topic: Topic::Lobby, version: Some(message_id), text: frame.to_bytes() }
}

/// `message:mood_updated` for everyone in the lobby.
pub fn mood_publish(message: &Message) -> Publish {
    let frame: ServerFrame =
        Typed::MessageMoodUpdated { id: message.id, mood: message.mood, mood_status: message.mood_status }.into();
    Publish { topic: Topic::Lobby, version: None, text: frame.to_bytes() }
}
