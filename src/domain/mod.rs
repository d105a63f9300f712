//! Pure types and rules, shared by every layer above: no I/O, no actors, no database.

pub mod answer;
pub mod content;
pub mod context;
pub mod events;
pub mod identity;
pub mod jobs;
pub mod limits;
pub mod lobby;
pub mod moderation;
pub mod money;
pub mod players;
pub mod runs;
pub mod status;
pub mod topic;
pub mod upstream;
pub mod wire;
#[cfg(test)]
mod wire_types;
