//! What every edge handler and session shares: the configuration, the store, the actors and
//! the services, and whether the process is shutting down. Holds no business rule; built once,
//! in `app::start`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use actix::Addr;

use crate::backplane::Backplane;
use crate::connections::Limits;
use crate::content::ContentService;
use crate::core::clock::SharedClock;
use crate::core::config::{Config, Secret};
use crate::core::metrics::Metrics;
use crate::hub::Hub;
use crate::jobs::JobWorker;
use crate::limits::service::UsageLimits;
use crate::llm::circuit::CircuitBreaker;
use crate::llm::upstreams::Upstreams;
use crate::lobby::Chat;
use crate::metric_history::MetricHistory;
use crate::moderation::Moderation;
use crate::players::Players;
use crate::runs::RunService;
use crate::store::Store;

/// Shared by every handler and session.
pub struct AppState {
    pub config: Arc<Config>,
    pub store: Store,
    pub clock: SharedClock,
    pub metrics: Arc<Metrics>,
    pub hub: Addr<Hub>,
    /// The first upstream's circuit (`/admin/api/llm`).
    pub circuit: Addr<CircuitBreaker>,
    /// Every upstream's circuit and counters (PROTOCOL §7).
    pub upstreams: Upstreams,
    pub jobs: Addr<JobWorker>,
    /// The dashboard's last hour of metrics.
    pub metric_history: Addr<MetricHistory>,
    pub content: ContentService,
    pub runs: RunService,
    pub chat: Chat,
    /// Who players are: anonymous starts, the studio's JWTs, REST tokens.
    pub players: Players,
    /// Checks what players and the LLM write; the record of flags.
    pub moderation: Moderation,
    /// The usage limits as the admin reads and changes them (PROTOCOL §5).
    pub usage: UsageLimits,
    /// The admin's figures (the retention already counted).
    pub insights: crate::insights::Insights,
    pub admin_token: Secret,
    /// The bus to the other processes of this deployment.
    pub backplane: Arc<dyn Backplane>,
    /// The per-client limits of the edges (connections per address, body and session:start deadlines).
    pub limits: Arc<Limits>,
    pub(crate) shutting_down: AtomicBool,
    pub(crate) next_session: AtomicU64,
}

impl AppState {
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }
    pub fn next_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }
}
