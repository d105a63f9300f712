//! Prometheus metrics, one registry per running app (no global state, so tests can run
//! several apps in one process). Only counts; never reads the database or decides anything.

use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

pub struct Metrics {
    registry: Registry,
    pub sessions_open: IntGauge,
    pub frames_in: IntCounter,
    pub frames_out: IntCounter,
    pub slow_consumers: IntCounter,
    /// Upstream calls by outcome: ok, api_error_<status>, rate_limited, network_error, timeout, invalid_response.
    pub upstream_calls: IntCounterVec,
    /// 0 closed, 1 open, 2 half-open.
    pub circuit_state: IntGauge,
    /// Content items finished, by status and reason.
    pub content_finished: IntCounterVec,
    /// Structured answers accepted after a repair, by what was asked (quest, event, npc, mood)
    /// and how (salvaged, reasked).
    pub answers_repaired: IntCounterVec,
    pub jobs_claimed: IntCounter,
    /// Seconds from the pending row's commit to the pushed ready/fallback.
    pub push_latency: Histogram,
    /// Generation runs admitted (not joins or cache hits).
    pub runs_queued: IntCounter,
    /// Generation runs refused at admission, by reason.
    pub runs_refused: IntCounterVec,
    /// Generation runs ended, by status.
    pub runs_finished: IntCounterVec,
    /// Micro-dollars charged for runs, by model.
    pub run_cost_micros: IntCounterVec,
    /// Seconds from an attempt's start to its first text delta.
    pub run_first_delta: Histogram,
    /// Lobby: sessions in it, distinct users online, messages stored, sends refused by the rate
    /// limit, presence updates broadcast, moods settled by status.
    pub lobby_sessions: IntGauge,
    pub online_users: IntGauge,
    pub lobby_messages: IntCounter,
    pub lobby_rate_limited: IntCounter,
    pub presence_updates: IntCounter,
    pub moods_finished: IntCounterVec,
    /// Durable jobs queued or running, read from the store at each scrape.
    pub queue_depth: IntGauge,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new_custom(Some("lorewire".into()), None).expect("valid prefix");
        let sessions_open = IntGauge::new("sessions_open", "WebSocket sessions open").expect("metric");
        let frames_in = IntCounter::new("frames_in_total", "WebSocket frames received").expect("metric");
        let frames_out = IntCounter::new("frames_out_total", "WebSocket frames sent").expect("metric");
        let slow_consumers =
            IntCounter::new("slow_consumer_disconnects_total", "Sessions closed for not reading").expect("metric");
        let upstream_calls =
            IntCounterVec::new(Opts::new("upstream_calls_total", "Upstream LLM calls by outcome"), &["outcome"])
                .expect("metric");
        let circuit_state =
            IntGauge::new("circuit_state", "Circuit breaker: 0 closed, 1 open, 2 half-open").expect("metric");
        let content_finished = IntCounterVec::new(
            Opts::new("content_finished_total", "Content items finished by status and reason"),
            &["status", "reason"],
        )
        .expect("metric");
        let answers_repaired = IntCounterVec::new(
            Opts::new("answers_repaired_total", "Structured answers accepted after a repair, by what and how"),
            &["what", "how"],
        )
        .expect("metric");
        for what in ["quest", "event", "npc", "mood"] {
            for how in ["salvaged", "reasked"] {
                answers_repaired.with_label_values(&[what, how]);
            }
        }
        let jobs_claimed = IntCounter::new("jobs_claimed_total", "Durable jobs claimed").expect("metric");
        let push_latency = Histogram::with_opts(
            HistogramOpts::new("push_latency_seconds", "From the pending row to the pushed result")
                .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
        )
        .expect("metric");
        let runs_queued = IntCounter::new("runs_queued_total", "Generation runs queued").expect("metric");
        let runs_refused =
            IntCounterVec::new(Opts::new("runs_refused_total", "Generation runs refused by reason"), &["reason"])
                .expect("metric");
        let runs_finished =
            IntCounterVec::new(Opts::new("runs_finished_total", "Generation runs ended by status"), &["status"])
                .expect("metric");
        let run_cost_micros = IntCounterVec::new(
            Opts::new("run_cost_micros_total", "Micro-dollars charged for generation runs by model"),
            &["model"],
        )
        .expect("metric");
        let run_first_delta = Histogram::with_opts(
            HistogramOpts::new("run_first_delta_seconds", "From a run attempt's start to its first delta")
                .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
        )
        .expect("metric");
        let lobby_sessions = IntGauge::new("lobby_sessions", "Sessions in the lobby").expect("metric");
        let online_users = IntGauge::new("lobby_online_users", "Distinct users online in the lobby").expect("metric");
        let lobby_messages = IntCounter::new("lobby_messages_total", "Lobby messages stored").expect("metric");
        let lobby_rate_limited =
            IntCounter::new("lobby_rate_limited_total", "Lobby messages refused by the rate limit").expect("metric");
        let presence_updates =
            IntCounter::new("presence_updates_total", "presence:update frames broadcast").expect("metric");
        let moods_finished =
            IntCounterVec::new(Opts::new("moods_finished_total", "Message moods settled by status"), &["status"])
                .expect("metric");
        let queue_depth = IntGauge::new("queue_depth", "Durable jobs queued or running").expect("metric");
        for m in [
            Box::new(sessions_open.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(frames_in.clone()),
            Box::new(frames_out.clone()),
            Box::new(slow_consumers.clone()),
            Box::new(upstream_calls.clone()),
            Box::new(circuit_state.clone()),
            Box::new(content_finished.clone()),
            Box::new(answers_repaired.clone()),
            Box::new(jobs_claimed.clone()),
            Box::new(push_latency.clone()),
            Box::new(runs_queued.clone()),
            Box::new(runs_refused.clone()),
            Box::new(runs_finished.clone()),
            Box::new(run_cost_micros.clone()),
            Box::new(run_first_delta.clone()),
            Box::new(lobby_sessions.clone()),
            Box::new(online_users.clone()),
            Box::new(lobby_messages.clone()),
            Box::new(lobby_rate_limited.clone()),
            Box::new(presence_updates.clone()),
            Box::new(moods_finished.clone()),
            Box::new(queue_depth.clone()),
        ] {
            registry.register(m).expect("unique metric");
        }
        Metrics {
            registry,
            sessions_open,
            frames_in,
            frames_out,
            slow_consumers,
            upstream_calls,
            circuit_state,
            content_finished,
            answers_repaired,
            jobs_claimed,
            push_latency,
            runs_queued,
            runs_refused,
            runs_finished,
            run_cost_micros,
            run_first_delta,
            lobby_sessions,
            online_users,
            lobby_messages,
            lobby_rate_limited,
            presence_updates,
            moods_finished,
            queue_depth,
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding");
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
