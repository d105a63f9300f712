//! Durable jobs: the worker that claims them ([`worker`]), the ways new jobs reach it ([`intake`])
//! and the contract of a handler, one per job kind (content, mood, run), which lives in its
//! feature and is registered at start.
//!
//! The worker owns claiming, leases, backoff, the attempt cap and the hand-back; a handler owns
//! what its job does, commits its result together with the job's removal, and knows how to
//! give its target a final state when no attempt is left. Never knows what a content item, a
//! mood or a run is.

pub mod handler;
pub mod intake;
pub mod worker;

pub use crate::domain::jobs::{JobKind, JobStatus};
pub use handler::{nothing_to_do, Adopter, Claim, JobHandler, JobResult, Loaded, Loader, Outcome};
pub use intake::{Claimed, Claimer, Intake, JobsAvailable, Reservation};
pub use worker::{backoff, claim, Drain, JobWorker, ReleaseJobs};
