//! One integration-test binary (short link times); a module per capability.

#[path = "../common/mod.rs"]
#[macro_use]
mod common;

mod abuse;
mod admin;
mod admin_summary;
mod batch_crash;
mod blocking;
mod browser;
mod circuit;
mod circuit_states;
mod circuits_shared;
mod cluster;
mod content;
mod edges;
mod identity;
mod jobs;
mod layers;
mod ledger_behind;
mod llm;
mod llm_faults;
mod lobby;
mod logs;
mod made_ahead;
mod metrics_history;
mod migrations;
mod moderation;
mod monitoring;
mod openapi;
mod pages;
mod presence_window;
mod process;
mod project_limits;
mod queue_limit;
mod redis;
mod repair;
mod reserved_ahead;
mod resync;
mod runs;
mod runs_faults;
mod runs_limits;
mod runs_process;
mod session;
mod shared_content;
mod storage;
mod store_queries;
mod types;
mod upgrade;
mod upstreams;
mod usage_cut;
mod usage_limits;
mod usage_metrics;
mod worker;
mod writer;
