//! lorewire: a realtime game backend whose core is an LLM content pipeline.
//!
//! See `PROTOCOL.md` for the external contract; [`app::start`] builds the whole thing.

pub mod app;
pub mod content;
pub mod core;
pub mod domain;
pub mod http;
pub mod hub;
pub mod jobs;
pub mod llm;
pub mod lobby;
pub mod players;
pub mod runs;
pub mod state;
pub mod store;
pub mod ws;
