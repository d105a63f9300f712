//! lorewire: a realtime game backend whose core is an LLM content pipeline.
//!
//! Layers, bottom first: `core`, `domain`, `store`, `hub`, `backplane`, `llm`, `jobs` and
//! `metric_history`, the features (`content`, `lobby`, `runs`, `players`, `insights`), the edges (`ws`, `http`, `state`), then `app`.
//! A file imports only from layers below its own, and no files import each other in a circle
//! (`tests/integration/layers.rs` checks both). README.md describes what clients see;
//! [`app::start`] builds the whole thing.

pub mod api_error;
pub mod app;
pub mod backplane;
pub mod connections;
pub mod content;
pub mod core;
pub mod deps;
pub mod domain;
pub mod http;
pub mod hub;
pub mod insights;
pub mod jobs;
pub mod limits;
pub mod llm;
pub mod lobby;
pub mod metric_history;
pub mod moderation;
pub mod players;
pub mod runs;
pub mod state;
pub mod store;
pub mod ws;
