//! Builds and runs the application: store, actors, HTTP server, and the graceful stop.
//! The binary and the tests start it the same way, through [`start`].

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix_http::HttpService;
use actix_service::{fn_factory, fn_service, map_config, IntoServiceFactory, ServiceFactory};
use actix_web::dev::AppConfig;
use actix_web::middleware::from_fn;
use actix_web::{web, App};

use crate::backplane::{self, Sinks};
use crate::connections::{per_address, Limits};
use crate::content::job::ContentJob;
use crate::content::remote::ContentSink;
use crate::content::ContentService;
use crate::core::clock::SharedClock;
use crate::core::config::{Config, Secret};
use crate::core::metrics::Metrics;
use crate::core::process::ProcessId;
use crate::core::shutdown::Stop;
use crate::deps::Deps;
use crate::domain::content::{ContentStatus, FallbackReason};
use crate::domain::upstream::UpstreamFailure;
use crate::hub::{CloseAll, Hub};
use crate::jobs::{Drain, JobWorker, ReleaseJobs};
use crate::limits::service::UsageLimits;
use crate::llm::circuit::{CircuitBreaker, CircuitSettings};
use crate::llm::remote::CircuitsSink;
use crate::llm::upstreams::Upstreams;
use crate::llm::Llm;
use crate::lobby::mood_job::MoodJob;
use crate::lobby::remote::LobbySink;
use crate::lobby::{Chat, Presence};
use crate::metric_history::MetricHistory;
use crate::moderation::Moderation;
use crate::players::remote::PlayersSink;
use crate::players::Players;
use crate::runs::job::RunJob;
use crate::runs::live::LiveRuns;
use crate::runs::remote::RunsSink;
use crate::runs::RunService;
use crate::state::AppState;
use crate::store::llm_config::LlmConfigRow;
use crate::store::{billing, jobs, llm_config, Backend, Store, StoreError};

/// Why the process could not start (nothing is served).
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Moderation(#[from] crate::moderation::ModerationSetupError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Backplane(#[from] backplane::SetupError),
    #[error(transparent)]
    Identity(#[from] crate::core::identity::IdentitySetupError),
}

crate::stoppable!(Hub, CircuitBreaker);

/// A running lorewire.
pub struct Running {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    /// `true` when the admin token was generated at start (nobody configured one).
    pub admin_token_generated: bool,
    server: actix_web::dev::ServerHandle,
    task: ServerTask,
}

/// Connects and migrates the database (on the blocking pool).
pub async fn open_store(database_url: &str, writers: usize) -> Result<Store, StoreError> {
    let url = database_url.to_owned();
    actix_web::rt::task::spawn_blocking(move || {
        let store = Store::connect_with(&url, writers)?;
        let ran = store.migrate()?;
        if ran > 0 {
            tracing::info!(migrations = ran, "database migrated");
        }
        Ok(store)
    })
    .await
    .map_err(|_| StoreError::Canceled)?
}

/// Starts everything and serves on `config.bind` (port 0 picks a free port): the store,
/// recovered from the last stop; the metrics; the shared dependencies; the features and the
/// job worker; the HTTP server.
pub async fn start(config: Config, clock: SharedClock) -> Result<Running, StartupError> {
    config.identity.check()?;
    let config = Arc::new(config);
    let store = open_store(&config.database_url, config.db_writers).await?;
    let llm_row = recover(&store, &config, &clock).await?;
    let metrics = metrics_for(&store, &config);
    let hub = Hub::new(metrics.clone()).start();
    let deps = Deps { process: ProcessId::new_random(), store, clock, hub, metrics, config };
    let features = Features::build(&deps, &llm_row)?;
    let admin_token_generated = deps.config.admin_token.is_none();
    let limits = Limits::new(deps.config.max_connections_per_address, deps.config.body_timeout, deps.metrics.clone());
    let state = Arc::new(features.into_state(deps, limits.clone()));
    let (addr, server, task) = serve(state.clone(), limits)?;
    tracing::info!(%addr, backend = ?state.store.backend(), backplane = state.backplane.name(), "lorewire is serving");
    Ok(Running { addr, state, admin_token_generated, server, task })
}

/// Seeds the LLM settings, takes back the jobs the last stop left running and reconciles the
/// budget reservations; answers the settings.
async fn recover(store: &Store, config: &Arc<Config>, clock: &SharedClock) -> Result<LlmConfigRow, StoreError> {
    let now = clock.now_naive();
    let seed = config.clone();
    let backend = store.backend();
    let (llm_row, reclaimed, callable) = store
        .write(move |conn| {
            let row = llm_config::seed(
                conn,
                seed.llm_provider,
                &seed.llm_model,
                &seed.llm_base_url,
                seed.llm_api_key.as_ref().map(Secret::expose),
                now,
            )?;
            crate::store::usage::seed_limits(conn, &crate::limits::seed_row(&seed.usage, now))?;
            // SQLite belongs to this one process: whatever was running died with the last one.
            let reclaimed = match backend {
                Backend::Sqlite => jobs::reclaim_all(conn, now)?,
                Backend::Postgres => {
                    let lease = chrono::Duration::from_std(seed.job_lease).unwrap_or(chrono::Duration::seconds(15));
                    jobs::reclaim_stale(conn, now - lease, now)?
                }
            };
            // Reservations follow the runs that hold them; a crash leaves none orphaned.
            let budgets = billing::reconcile(conn, now)?;
            if budgets > 0 {
                tracing::warn!(budgets, "budget reservations reconciled with unfinished runs");
            }
            let callable = crate::llm::route::callable(&crate::store::upstreams::all(conn)?);
            Ok((row, reclaimed, callable))
        })
        .await?;
    if reclaimed > 0 {
        tracing::warn!(jobs = reclaimed, "resuming jobs interrupted by a previous stop");
    }
    // Said only when no upstream at all can make a call.
    if let Some(notice) = crate::llm::credentials::no_config_notice(&llm_row).filter(|_| callable == 0) {
        tracing::warn!("{notice}");
    }
    Ok(llm_row)
}

/// The process's metrics, with the series that exist from the start and the store's counters.
fn metrics_for(store: &Store, config: &Config) -> Arc<Metrics> {
    let metrics = Arc::new(Metrics::new());
    seed_series(&metrics, &config.llm_model);
    let writer = store.writer_counters();
    for counter in [&writer.writes, &writer.batches, &writer.failed_batches] {
        metrics.register(counter.clone());
    }
    crate::core::memory::trim_after_sessions_close(metrics.sessions_open.clone());
    metrics
}

/// The actors and services behind the edges.
struct Features {
    metric_history: Addr<MetricHistory>,
    circuit: Addr<CircuitBreaker>,
    upstreams: Upstreams,
    jobs: Addr<JobWorker>,
    content: ContentService,
    runs: RunService,
    chat: Chat,
    players: Players,
    moderation: Moderation,
    backplane: Arc<dyn backplane::Backplane>,
    /// The per-player start rate, whose stored value the admin's limits refresh.
    start_rate: Arc<crate::limits::rate::StartRate>,
}

impl Features {
    /// The circuit breaker, the job worker with every feature's handler, the services, and
    /// the backplane that brings the other processes' changes to each feature's sink.
    fn build(deps: &Deps, llm_row: &LlmConfigRow) -> Result<Features, StartupError> {
        let Deps { store, clock, hub, metrics, config, process } = deps;
        let metric_history =
            MetricHistory::new(metrics.clone(), store.clone(), clock.clone(), config.metrics_sample).start();
        let settings = CircuitSettings {
            failures: config.circuit_failures,
            window: config.circuit_window,
            reset: config.circuit_reset,
        };
        let circuit =
            CircuitBreaker::restore(settings, &llm_row.circuit(), clock.clone(), store.clone(), metrics.clone())
                .announcing(process.clone())
                .start();
        let live = Arc::new(LiveRuns::new());
        let redis = config.redis_url.as_deref().map(|url| (url, config.redis_prefix.as_str()));
        let backplane = backplane::for_deployment(store, &config.database_url, redis, process.clone(), metrics)?;
        let moderation = Moderation::new(
            &config.moderation,
            store.clone(),
            clock.clone(),
            metrics.clone(),
            hub.clone(),
            process.clone(),
        )?;
        // One job worker; each job kind's handler lives in its feature.
        let upstreams = Upstreams::new(
            settings,
            clock.clone(),
            store.clone(),
            metrics.clone(),
            process.clone(),
            llm_row.id,
            circuit.clone(),
        );
        let llm = Llm::new(
            store.clone(),
            upstreams.clone(),
            clock.clone(),
            metrics.clone(),
            config.llm_timeout,
            config.llm_hops,
        );
        let mut run_job = RunJob::new(deps, upstreams.clone(), llm.client().clone(), live.clone(), moderation.clone());
        if backplane.shared() {
            run_job = run_job.with_relay(crate::runs::relay::Relay::new(process.clone(), backplane.clone(), metrics));
        }
        let (jobs, intake) = JobWorker::new(store.clone(), clock.clone(), metrics.clone(), config, process.clone())
            .register(ContentJob::new(deps, llm.clone(), moderation.clone()))
            .register(MoodJob::new(deps, llm))
            .register(run_job)
            .start_with_intake();
        let start_rate = Arc::new(crate::limits::rate::StartRate::new(backplane.clone(), metrics.clone()));
        let content = ContentService::new(deps, intake).with_start_rate(start_rate.clone());
        let runs = RunService::new(deps, jobs.clone().recipient(), live.clone()).with_start_rate(start_rate.clone());
        let presence = Presence::new(
            hub.clone(),
            metrics.clone(),
            config.presence_window,
            config.presence_list_max,
            process.clone(),
            backplane.clone(),
        )
        .start();
        let chat = Chat::new(deps, jobs.clone().recipient(), presence, backplane.clone(), moderation.clone());
        // What the other processes announce reaches each service through its sink.
        backplane.listen(Sinks::start(
            vec![
                Rc::new(ContentSink { store: store.clone(), hub: hub.clone() }),
                Rc::new(LobbySink { store: store.clone(), hub: hub.clone(), presence: chat.presence().clone() }),
                Rc::new(RunsSink { store: store.clone(), hub: hub.clone(), live }),
                Rc::new(PlayersSink { store: store.clone(), hub: hub.clone() }),
                Rc::new(CircuitsSink { store: store.clone(), upstreams: upstreams.clone() }),
            ],
            metrics,
        ));
        let players =
            Players::start(store.clone(), clock.clone(), metrics.clone(), backplane.clone(), &config.identity)
                .with_moderation(moderation.clone());
        Ok(Features {
            metric_history,
            circuit,
            upstreams,
            jobs,
            content,
            runs,
            chat,
            players,
            moderation,
            backplane,
            start_rate,
        })
    }

    /// What the edges reach: the features and the shared dependencies.
    fn into_state(self, deps: Deps, limits: Arc<Limits>) -> AppState {
        let Deps { store, clock, hub, metrics, config, process } = deps;
        let admin_token =
            config.admin_token.clone().unwrap_or_else(|| Secret::new(crate::domain::players::new_token()));
        let usage =
            UsageLimits::new(store.clone(), clock.clone(), config.clone(), hub.clone(), metrics.clone(), process)
                .with_start_rate(self.start_rate.clone());
        AppState {
            usage,
            config,
            store,
            clock,
            metrics,
            hub,
            circuit: self.circuit,
            upstreams: self.upstreams,
            jobs: self.jobs,
            metric_history: self.metric_history,
            content: self.content,
            runs: self.runs,
            chat: self.chat,
            players: self.players,
            moderation: self.moderation,
            insights: Default::default(),
            admin_token,
            backplane: self.backplane,
            limits,
            shutting_down: AtomicBool::new(false),
            next_session: AtomicU64::new(1),
        }
    }
}

type ServerTask = actix_web::rt::task::JoinHandle<std::io::Result<()>>;

/// The HTTP server on `config.bind`, behind the per-address connection limit; WebSocket
/// upgrades go through the same app.
fn serve(
    state: Arc<AppState>,
    limits: Arc<Limits>,
) -> Result<(SocketAddr, actix_web::dev::ServerHandle, ServerTask), StartupError> {
    let config = state.config.clone();
    let backend = state.store.backend();
    let data = web::Data::from(state);
    let limits_data = web::Data::from(limits.clone());
    let app = move || {
        App::new()
            .app_data(data.clone())
            .app_data(limits_data.clone())
            // Innermost first: the token is checked before any extractor reads the request.
            .wrap(from_fn(crate::http::auth::authorize_first))
            .wrap(from_fn(crate::connections::body_deadline))
            .wrap_fn(crate::http::request_log::echo_request_id)
            .wrap(crate::http::request_log::logger())
            .route("/ws", web::get().to(crate::ws::upgrade))
            .configure(crate::http::routes)
    };
    let listener = listen(config.bind).map_err(|source| StartupError::Bind { addr: config.bind, source })?;
    let addr = listener.local_addr().map_err(|source| StartupError::Bind { addr: config.bind, source })?;
    let max_connections = crate::store::pool_size(backend);
    let builder = actix_server::Server::build();
    // Idle keep-alive connections close as soon as a graceful stop begins (as in actix-web's
    // own server).
    let stopping = builder.graceful_shutdown_signal();
    let mut server = builder
        .disable_signals()
        // Every blocking task is a store call waiting for one of the pool's connections: more
        // threads than connections only wait (and each keeps its stack and heap arena).
        .worker_max_blocking_threads(max_connections)
        .shutdown_timeout(config.shutdown.as_secs().max(1));
    if config.workers > 0 {
        server = server.workers(config.workers);
    }
    let server = server
        .listen("lorewire", listener, move || {
            let (upgrades, stopping) = (app.clone(), stopping.clone());
            let http = HttpService::build()
                .graceful_shutdown_signal(move || {
                    let stopping = stopping.clone();
                    async move { stopping.notified().await }
                })
                .keep_alive(Duration::from_secs(5))
                .client_request_timeout(Duration::from_secs(5))
                .client_disconnect_timeout(Duration::from_secs(1))
                // Pushed frames are small and follow each other closely: never let Nagle hold one back.
                .tcp_nodelay(true)
                .local_addr(addr)
                // An upgrade goes through the app too; a WebSocket it accepts keeps the socket.
                .upgrade(fn_factory(move || {
                    let app = upgrades();
                    async move {
                        let app = Rc::new(app.into_factory().new_service(AppConfig::default()).await?);
                        Ok::<_, ()>(fn_service(move |(req, framed)| {
                            crate::ws::transport::serve(app.clone(), req, framed)
                        }))
                    }
                }))
                .finish(map_config(app(), |_| AppConfig::default()))
                .tcp();
            per_address(limits.clone(), http)
        })
        .map_err(|source| StartupError::Bind { addr: config.bind, source })?
        .run();
    let handle = server.handle();
    let task = actix_web::rt::spawn(server);
    Ok((addr, handle, task))
}

/// A listening socket on `addr` that a restarted server can take over at once
/// (`SO_REUSEADDR`, as actix-web's own server sets it).
fn listen(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Series that exist (at 0) from the start, so that dashboards and alert rules over `/metrics`
/// find them before the first item, call or charge.
fn seed_series(metrics: &Metrics, model: &str) {
    metrics.content_finished.with_label_values(&[ContentStatus::Ready.as_str(), ""]);
    for reason in FallbackReason::NAMED {
        metrics.content_finished.with_label_values(&[ContentStatus::Fallback.as_str(), &reason.to_string()]);
    }
    metrics.upstream_calls.with_label_values(&["ok"]);
    let failures = [
        UpstreamFailure::RateLimited,
        UpstreamFailure::NetworkError,
        UpstreamFailure::Timeout,
        UpstreamFailure::InvalidResponse,
    ];
    for failure in failures {
        metrics.upstream_calls.with_label_values(&[&failure.to_string()]);
    }
    metrics.run_cost_micros.with_label_values(&[model]);
}

impl Running {
    /// Graceful stop: `/ready` turns 503 and new work is refused, every socket gets 1001,
    /// in-flight jobs finish (or go back to the queue) within `LOREWIRE_SHUTDOWN_SECS`.
    pub async fn shutdown(self) {
        let deadline = tokio::time::Instant::now() + self.state.config.shutdown;
        self.state.shutting_down.store(true, Ordering::Relaxed);
        let sockets = self.state.hub.send(CloseAll { code: 1001, reason: "server shutting down" }).await.unwrap_or(0);
        tracing::info!(sockets, "shutting down");
        loop {
            let in_flight = self.state.jobs.send(Drain).await.unwrap_or(0);
            if in_flight == 0 || tokio::time::Instant::now() + Duration::from_millis(300) >= deadline {
                if in_flight > 0 {
                    tracing::warn!(jobs = in_flight, "re-queueing unfinished jobs");
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        match self.state.jobs.send(ReleaseJobs).await {
            Ok(Ok(n)) if n > 0 => tracing::info!(jobs = n, "jobs handed back to the queue"),
            Ok(Err(e)) => tracing::error!(error = %e, "could not hand jobs back; their lease will run out"),
            _ => {}
        }
        self.server.stop(true).await;
        let _ = self.task.await;
        let backplane = self.state.backplane.clone();
        let _ = actix_web::rt::task::spawn_blocking(move || backplane.stop()).await;
        self.state.jobs.do_send(Stop);
        self.state.upstreams.stop_all();
        self.state.hub.do_send(Stop);
        self.state.metric_history.do_send(Stop);
        self.state.chat.presence().do_send(Stop);
    }

    /// Serves until the server stops by itself.
    pub async fn wait(self) -> std::io::Result<()> {
        self.task.await.unwrap_or(Ok(()))
    }
}
