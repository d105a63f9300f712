//! The bottom layer: settings, injected time, the metrics registry, the shutdown signal and
//! how the process holds memory.
//! Knows no feature and imports nothing else of lorewire.

pub mod clock;
pub mod config;
pub mod identity;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod moderation;
pub mod process;
pub mod provider;
pub mod rate_limit;
pub mod secret;
pub mod shutdown;
pub mod usage;
