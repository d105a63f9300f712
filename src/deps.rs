//! What every feature's service and job handler shares, handed down as one value by `app.rs`:
//! this process's name, the store, the clock, the hub, the metrics and the settings. A part
//! that needs more names it beside this (the LLM, the job worker, the live runs).
//!
//! Holds no behaviour and no state of its own; built once at start (and by tests).

use std::sync::Arc;

use actix::Addr;

use crate::core::clock::SharedClock;
use crate::core::config::Config;
use crate::core::metrics::Metrics;
use crate::core::process::ProcessId;
use crate::hub::Hub;
use crate::store::Store;

#[derive(Clone)]
pub struct Deps {
    /// This process among the others on one database (job leases, change announcements).
    pub process: ProcessId,
    pub store: Store,
    pub clock: SharedClock,
    pub hub: Addr<Hub>,
    pub metrics: Arc<Metrics>,
    pub config: Arc<Config>,
}
