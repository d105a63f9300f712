//! Prometheus metrics, one registry per running app (no global state, so tests can run
//! several apps in one process), and [`Totals`]: the dashboard's numbers read from them at one
//! instant. Only counts; never reads the database or decides anything.

use prometheus::core::Collector;
use prometheus::proto::LabelPair;
use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

/// Upper bounds (seconds) of the upstream call latency histogram.
pub const UPSTREAM_SECONDS_BUCKETS: [f64; 14] =
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

pub struct Metrics {
    registry: Registry,
    pub sessions_open: IntGauge,
    pub frames_in: IntCounter,
    pub frames_out: IntCounter,
    pub slow_consumers: IntCounter,
    /// Upstream calls by outcome: ok, api_error_<status>, rate_limited, network_error, timeout, invalid_response.
    pub upstream_calls: IntCounterVec,
    /// Upstream calls by upstream (its id) and outcome.
    pub upstream_calls_by_upstream: IntCounterVec,
    /// Seconds from sending an upstream call to its whole answer (a streamed run: the stream's end).
    pub upstream_seconds: Histogram,
    /// 0 closed, 1 open, 2 half-open.
    pub circuit_state: IntGauge,
    /// Content items finished, by status and reason.
    pub content_finished: IntCounterVec,
    /// Structured answers accepted after a repair, by what was asked (quest, event, npc, mood)
    /// and how (salvaged, reasked).
    pub answers_repaired: IntCounterVec,
    pub jobs_claimed: IntCounter,
    /// This process's job slots in use (`LOREWIRE_LLM_CONCURRENCY` at most): reserved for a new
    /// job or running one.
    pub job_slots_busy: IntGauge,
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
    pub players_online: IntGauge,
    pub lobby_messages: IntCounter,
    pub lobby_rate_limited: IntCounter,
    /// Texts checked by moderation, and those flagged, by surface (chat, content, run, nickname).
    pub moderation_checked: IntCounterVec,
    pub moderation_flagged: IntCounterVec,
    /// Checks the moderation endpoint did not answer (timeout, error, too many at once): the
    /// word list alone decided.
    pub moderation_unchecked: IntCounter,
    pub presence_updates: IntCounter,
    pub moods_finished: IntCounterVec,
    /// Durable jobs queued or running, read from the store at each scrape.
    pub queue_depth: IntGauge,
    /// 1 while this process hears the other processes over its backplane (always 1 alone).
    pub backplane_up: IntGauge,
    /// Connections refused or closed by a per-client limit, by reason: `per_address` (too many
    /// open from one address), `session_start` (no session:start in time), `body_timeout`.
    pub connections_refused: IntCounterVec,
    /// content:request / content:subscribe refused at the per-session subscription cap.
    pub subscriptions_refused: IntCounter,
    /// JWTs refused (a bad signature, an unknown kid, expired...), at a start, refresh or REST call.
    pub jwt_refused: IntCounter,
    /// New anonymous players refused over LOREWIRE_NEW_PLAYERS_RATE.
    pub new_players_refused: IntCounter,
    /// Events dropped at a full queue between this process and the others, by queue:
    /// `sink_content`, `sink_lobby`, `sink_runs`, `sink_players`, `sink_circuits` (heard, waiting
    /// for their sink),
    /// `relay` (run frames to send), `publisher` (events waiting for Redis). Each loss is resynced.
    pub backplane_dropped: IntCounterVec,
    /// Players blocked, by who blocked them: `admin`, or `moderation` (LOREWIRE_MODERATION_BLOCK_AFTER).
    pub players_blocked: IntCounterVec,
    /// What settlements charged, by usage level (player, project, studio): micro-dollars and
    /// tokens (input, cache reads and writes, output).
    pub usage_spent_micros: IntCounterVec,
    pub usage_spent_tokens: IntCounterVec,
    /// Calls refused by a usage limit, by level and reason (over_limit, unknown_price, start_rate).
    pub usage_refused: IntCounterVec,
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
        let upstream_calls_by_upstream = IntCounterVec::new(
            Opts::new("upstream_calls_by_upstream_total", "Upstream LLM calls by upstream and outcome"),
            &["upstream", "outcome"],
        )
        .expect("metric");
        let upstream_seconds = Histogram::with_opts(
            HistogramOpts::new("upstream_call_seconds", "Upstream LLM calls from request to the whole answer")
                .buckets(UPSTREAM_SECONDS_BUCKETS.to_vec()),
        )
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
        let job_slots_busy =
            IntGauge::new("job_slots_busy", "Job slots in use (reserved or running a job)").expect("metric");
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
        let players_online = IntGauge::new("lobby_online_users", "Distinct users online in the lobby").expect("metric");
        let lobby_messages = IntCounter::new("lobby_messages_total", "Lobby messages stored").expect("metric");
        let moderation_checked = IntCounterVec::new(
            Opts::new("moderation_checked_total", "Texts checked by moderation, by surface"),
            &["surface"],
        )
        .expect("metric");
        let moderation_flagged = IntCounterVec::new(
            Opts::new("moderation_flagged_total", "Texts flagged by moderation, by surface"),
            &["surface"],
        )
        .expect("metric");
        for surface in ["chat", "content", "run", "nickname"] {
            moderation_checked.with_label_values(&[surface]);
            moderation_flagged.with_label_values(&[surface]);
        }
        let moderation_unchecked = IntCounter::new(
            "moderation_unchecked_total",
            "Checks the moderation endpoint did not answer; the word list alone decided",
        )
        .expect("metric");
        let lobby_rate_limited =
            IntCounter::new("lobby_rate_limited_total", "Lobby messages refused by the rate limit").expect("metric");
        let presence_updates =
            IntCounter::new("presence_updates_total", "presence:update frames broadcast").expect("metric");
        let moods_finished =
            IntCounterVec::new(Opts::new("moods_finished_total", "Message moods settled by status"), &["status"])
                .expect("metric");
        let queue_depth = IntGauge::new("queue_depth", "Durable jobs queued or running").expect("metric");
        let backplane_up =
            IntGauge::new("backplane_up", "1 while the other processes are heard over the backplane").expect("metric");
        let connections_refused = IntCounterVec::new(
            Opts::new("connections_refused_total", "Connections refused or closed by a per-client limit, by reason"),
            &["reason"],
        )
        .expect("metric");
        for reason in ["per_address", "session_start", "body_timeout"] {
            connections_refused.with_label_values(&[reason]);
        }
        let subscriptions_refused =
            IntCounter::new("subscriptions_refused_total", "Content subscriptions refused at the per-session cap")
                .expect("metric");
        let jwt_refused =
            IntCounter::new("jwt_refused_total", "JWTs refused at a start, a refresh or a REST call").expect("metric");
        let new_players_refused =
            IntCounter::new("new_players_refused_total", "New anonymous players refused over the per-address rate")
                .expect("metric");
        let backplane_dropped = IntCounterVec::new(
            Opts::new("backplane_dropped_total", "Events dropped at a full queue between processes, by queue"),
            &["queue"],
        )
        .expect("metric");
        // Every queue is listed from the start, at 0 (rates and alerts need no first drop).
        for queue in ["sink_content", "sink_lobby", "sink_runs", "sink_players", "sink_circuits", "relay", "publisher"]
        {
            backplane_dropped.with_label_values(&[queue]);
        }
        let players_blocked =
            IntCounterVec::new(Opts::new("players_blocked_total", "Players blocked, by who blocked them"), &["by"])
                .expect("metric");
        for by in ["admin", "moderation"] {
            players_blocked.with_label_values(&[by]);
        }
        let usage_spent_micros = IntCounterVec::new(
            Opts::new("usage_spent_micros_total", "Micro-dollars charged by usage settlements, by level"),
            &["level"],
        )
        .expect("metric");
        let usage_spent_tokens = IntCounterVec::new(
            Opts::new("usage_spent_tokens_total", "Tokens charged by usage settlements, by level"),
            &["level"],
        )
        .expect("metric");
        let usage_refused = IntCounterVec::new(
            Opts::new("usage_refused_total", "Calls refused by a usage limit, by level and reason"),
            &["level", "reason"],
        )
        .expect("metric");
        // Every level and reason from the start, at 0.
        for level in ["player", "project", "studio"] {
            usage_spent_micros.with_label_values(&[level]);
            usage_spent_tokens.with_label_values(&[level]);
            for reason in ["over_limit", "unknown_price", "start_rate"] {
                usage_refused.with_label_values(&[level, reason]);
            }
        }
        for m in [
            Box::new(sessions_open.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(frames_in.clone()),
            Box::new(frames_out.clone()),
            Box::new(slow_consumers.clone()),
            Box::new(upstream_calls.clone()),
            Box::new(upstream_calls_by_upstream.clone()),
            Box::new(upstream_seconds.clone()),
            Box::new(circuit_state.clone()),
            Box::new(content_finished.clone()),
            Box::new(answers_repaired.clone()),
            Box::new(jobs_claimed.clone()),
            Box::new(job_slots_busy.clone()),
            Box::new(push_latency.clone()),
            Box::new(runs_queued.clone()),
            Box::new(runs_refused.clone()),
            Box::new(runs_finished.clone()),
            Box::new(run_cost_micros.clone()),
            Box::new(run_first_delta.clone()),
            Box::new(lobby_sessions.clone()),
            Box::new(players_online.clone()),
            Box::new(lobby_messages.clone()),
            Box::new(lobby_rate_limited.clone()),
            Box::new(presence_updates.clone()),
            Box::new(moods_finished.clone()),
            Box::new(queue_depth.clone()),
            Box::new(backplane_up.clone()),
            Box::new(connections_refused.clone()),
            Box::new(subscriptions_refused.clone()),
            Box::new(jwt_refused.clone()),
            Box::new(new_players_refused.clone()),
            Box::new(backplane_dropped.clone()),
            Box::new(moderation_checked.clone()),
            Box::new(moderation_flagged.clone()),
            Box::new(moderation_unchecked.clone()),
            Box::new(players_blocked.clone()),
            Box::new(usage_spent_micros.clone()),
            Box::new(usage_spent_tokens.clone()),
            Box::new(usage_refused.clone()),
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
            upstream_calls_by_upstream,
            upstream_seconds,
            circuit_state,
            content_finished,
            answers_repaired,
            jobs_claimed,
            job_slots_busy,
            push_latency,
            runs_queued,
            runs_refused,
            runs_finished,
            run_cost_micros,
            run_first_delta,
            lobby_sessions,
            players_online,
            lobby_messages,
            lobby_rate_limited,
            presence_updates,
            moods_finished,
            queue_depth,
            backplane_up,
            connections_refused,
            subscriptions_refused,
            jwt_refused,
            new_players_refused,
            backplane_dropped,
            moderation_checked,
            moderation_flagged,
            moderation_unchecked,
            players_blocked,
            usage_spent_micros,
            usage_spent_tokens,
            usage_refused,
        }
    }

    /// Adds metrics counted elsewhere (the store's writer) to this registry.
    pub fn register(&self, metric: impl Collector + 'static) {
        self.registry.register(Box::new(metric)).expect("unique metric");
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding");
        String::from_utf8(out).unwrap_or_default()
    }

    /// The counters and gauges the dashboard charts, as they stand now.
    pub fn totals(&self) -> Totals {
        let mut totals = Totals {
            lobby_messages: self.lobby_messages.get(),
            players_online: self.players_online.get(),
            circuit_state: self.circuit_state.get(),
            upstream_seconds_count: self.upstream_seconds.get_sample_count(),
            ..Totals::default()
        };
        for_each_child(&self.content_finished, |labels, value| match label(labels, "status") {
            Some("ready") => totals.content_ready += value,
            Some("fallback") => totals.content_fallback += value,
            _ => {}
        });
        for_each_child(&self.upstream_calls, |labels, value| match label(labels, "outcome") {
            Some("ok") => totals.upstream_ok += value,
            Some("rate_limited") => totals.upstream_rate_limited += value,
            _ => totals.upstream_failed += value,
        });
        for_each_child(&self.run_cost_micros, |_, value| totals.spend_micros += value);
        for family in self.upstream_seconds.collect() {
            for metric in family.get_metric() {
                totals.upstream_seconds_buckets =
                    metric.get_histogram().get_bucket().iter().map(|b| b.cumulative_count()).collect();
            }
        }
        totals
    }
}

/// Calls `f` with the labels and the value of each child of a counter family.
fn for_each_child(vec: &IntCounterVec, mut f: impl FnMut(&[LabelPair], u64)) {
    for family in vec.collect() {
        for metric in family.get_metric() {
            f(metric.get_label(), metric.get_counter().get_value() as u64);
        }
    }
}

fn label<'a>(labels: &'a [LabelPair], name: &str) -> Option<&'a str> {
    labels.iter().find(|l| l.name() == name).map(|l| l.value())
}

/// The dashboard's numbers at one instant: counters since the process started, gauges now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    pub content_ready: u64,
    pub content_fallback: u64,
    pub upstream_ok: u64,
    pub upstream_failed: u64,
    pub upstream_rate_limited: u64,
    /// Cumulative counts per bucket of [`UPSTREAM_SECONDS_BUCKETS`], and all calls.
    pub upstream_seconds_buckets: Vec<u64>,
    pub upstream_seconds_count: u64,
    pub lobby_messages: u64,
    pub spend_micros: u64,
    pub players_online: i64,
    pub circuit_state: i64,
}

/// The `q` quantile (0..1) of the upstream calls made between two readings, estimated from the
/// histogram buckets as Prometheus' `histogram_quantile` does (linear within a bucket); `None`
/// when no call was made between them.
pub fn upstream_quantile(earlier: &Totals, later: &Totals, q: f64) -> Option<f64> {
    let total = later.upstream_seconds_count.saturating_sub(earlier.upstream_seconds_count);
    if total == 0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let mut lower = 0.0;
    let mut below = 0u64;
    for (i, upper) in UPSTREAM_SECONDS_BUCKETS.iter().enumerate() {
        let at = |t: &Totals| t.upstream_seconds_buckets.get(i).copied().unwrap_or(0);
        let cumulative = at(later).saturating_sub(at(earlier));
        if cumulative as f64 >= rank && cumulative > below {
            let within = (rank - below as f64) / (cumulative - below) as f64;
            return Some(lower + (upper - lower) * within.clamp(0.0, 1.0));
        }
        lower = *upper;
        below = cumulative;
    }
    // Slower than the last bound: that bound is the best the buckets can tell.
    Some(lower)
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_sum_children_by_what_the_charts_group() {
        let m = Metrics::new();
        m.content_finished.with_label_values(&["ready", ""]).inc_by(3);
        m.content_finished.with_label_values(&["fallback", "timeout"]).inc();
        m.content_finished.with_label_values(&["fallback", "no_config"]).inc();
        m.upstream_calls.with_label_values(&["ok"]).inc_by(4);
        m.upstream_calls.with_label_values(&["rate_limited"]).inc();
        m.upstream_calls.with_label_values(&["api_error_500"]).inc();
        m.upstream_calls.with_label_values(&["timeout"]).inc();
        m.run_cost_micros.with_label_values(&["a"]).inc_by(10);
        m.run_cost_micros.with_label_values(&["b"]).inc_by(5);
        m.players_online.set(2);
        let t = m.totals();
        assert_eq!((t.content_ready, t.content_fallback), (3, 2));
        assert_eq!((t.upstream_ok, t.upstream_failed, t.upstream_rate_limited), (4, 2, 1));
        assert_eq!(t.spend_micros, 15);
        assert_eq!(t.players_online, 2);
        assert_eq!(t.upstream_seconds_buckets.len(), UPSTREAM_SECONDS_BUCKETS.len());
    }

    #[test]
    fn quantiles_come_from_the_calls_between_two_readings() {
        let m = Metrics::new();
        // Before: one slow call that must not count.
        m.upstream_seconds.observe(50.0);
        let before = m.totals();
        assert_eq!(upstream_quantile(&before, &m.totals(), 0.5), None);
        // 10 calls: 9 in (0.05, 0.1], 1 in (1, 2.5].
        for _ in 0..9 {
            m.upstream_seconds.observe(0.08);
        }
        m.upstream_seconds.observe(2.0);
        let after = m.totals();
        let p50 = upstream_quantile(&before, &after, 0.5).unwrap();
        assert!(p50 > 0.05 && p50 <= 0.1, "{p50}");
        let p95 = upstream_quantile(&before, &after, 0.95).unwrap();
        assert!(p95 > 1.0 && p95 <= 2.5, "{p95}");
        // Past the last bound: the last bound.
        m.upstream_seconds.observe(500.0);
        let slow = upstream_quantile(&after, &m.totals(), 0.5).unwrap();
        assert_eq!(slow, 120.0);
    }
}
