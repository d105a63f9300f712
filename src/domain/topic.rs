//! What a session can be subscribed to: a key the Hub routes by, nothing more. Pure.

use super::content::{Content, ContentKind};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    /// A content item by kind, subject id and owner (`SHARED_OWNER` for a shared item, else the
    /// player whose own it is: only that player's sessions subscribe to it).
    Content(ContentKind, u64, i64),
    /// A generation run, by its public id.
    Run(String),
    /// The one global lobby: presence changes, new messages, mood updates. Frames carry
    /// `version = Some(message id)` for `message:new` (joining sessions drop what their history
    /// already holds), `None` otherwise.
    Lobby,
    /// Every session of one player, by user id: never sent frames, only closed (a block).
    Player(i64),
}

impl Topic {
    pub fn run(run_id: &str) -> Topic {
        Topic::Run(run_id.to_owned())
    }
}

impl Content {
    /// The topic its subscribers follow.
    pub fn topic(&self) -> Topic {
        Topic::Content(self.kind, self.subject_id, self.owner_id)
    }
}
