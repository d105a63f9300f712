//! Generation runs (WRITE / REWRITE / DESCRIBE), the feature: its types and money are
//! `domain::runs` and `domain::money` (re-exported here).
//!
//! [`service`] admits runs (dedup, queue limit, budget reservation) and detaches waiters;
//! [`job`] executes one attempt of a claimed run job, streaming; [`live`] keeps the frames
//! of runs streaming in this process for late subscribers; [`relay`] and [`remote`] carry runs
//! between processes. Nothing here holds a database connection across an upstream call.

pub mod admin;
pub mod admit;
mod checked;
pub mod job;
pub mod live;
pub mod prompts;
pub mod relay;
pub mod remote;
pub mod service;

pub use crate::domain::money::{parse_usd, usd, Price, MICROS};
pub use crate::domain::runs::*;
pub use service::RunService;

use crate::hub::Topic;

pub fn topic(run_id: &str) -> Topic {
    Topic::run(run_id)
}
