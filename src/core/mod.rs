//! The bottom layer: settings, injected time, the metrics registry and the shutdown signal.
//! Knows no feature and imports nothing else of lorewire.

pub mod clock;
pub mod config;
pub mod logging;
pub mod metrics;
pub mod provider;
pub mod shutdown;
