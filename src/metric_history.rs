//! The dashboard's last hour, in memory: the [`MetricHistory`] actor reads the metrics' counters and
//! gauges (and the queue depth from the store) every `interval` (10 s), keeps the last
//! [`SAMPLES`], and answers [`GetMetricHistory`] with them as per-minute rates and levels, parallel
//! arrays shaped for uPlot, ending with the values at the moment of the request.
//!
//! Owns only the samples; never writes the store and knows no feature. Counters are this
//! process's since it started; queue depth and players online are what this process sees.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::core::clock::SharedClock;
use crate::core::metrics::{upstream_quantile, Metrics, Totals};
use crate::store::{jobs, Store};

/// One hour at the default 10 s.
pub const SAMPLES: usize = 360;

/// One reading.
#[derive(Debug, Clone)]
struct Sample {
    at: DateTime<Utc>,
    totals: Totals,
    /// `None` when the store could not be read.
    queue_depth: Option<i64>,
}

/// Samples the metrics on a timer; the first sample is taken as it starts.
pub struct MetricHistory {
    metrics: Arc<Metrics>,
    store: Store,
    clock: SharedClock,
    interval: Duration,
    samples: VecDeque<Sample>,
    /// The sample just before the oldest kept (the oldest's rates are measured from it).
    evicted: Option<Sample>,
    /// A reading is waiting on the store: the next tick is skipped rather than piled up.
    reading: bool,
}

impl MetricHistory {
    pub fn new(metrics: Arc<Metrics>, store: Store, clock: SharedClock, interval: Duration) -> Self {
        MetricHistory {
            metrics,
            store,
            clock,
            interval: interval.max(Duration::from_millis(10)),
            samples: VecDeque::with_capacity(SAMPLES),
            evicted: None,
            reading: false,
        }
    }

    fn sample(&mut self, ctx: &mut Context<Self>) {
        if self.reading {
            return;
        }
        self.reading = true;
        let (at, totals) = (self.clock.now(), self.metrics.totals());
        let store = self.store.clone();
        ctx.spawn(async move { store.run(jobs::depth).await }.into_actor(self).map(move |depth, act, _| {
            act.reading = false;
            let queue_depth = match depth {
                Ok(depth) => {
                    act.metrics.queue_depth.set(depth);
                    Some(depth)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not read the queue depth for the dashboard's history");
                    None
                }
            };
            act.push(Sample { at, totals, queue_depth });
        }));
    }

    fn push(&mut self, sample: Sample) {
        if self.samples.len() == SAMPLES {
            self.evicted = self.samples.pop_front();
        }
        self.samples.push_back(sample);
    }

    fn view(&self, now: Sample) -> MetricHistoryView {
        let interval = self.interval.as_secs_f64();
        let mut view = MetricHistoryView {
            interval_secs: self.interval.as_secs_f64(),
            t: Vec::with_capacity(self.samples.len() + 1),
            series: MetricHistorySeries::default(),
        };
        let zero = Sample { at: now.at, totals: Totals::default(), queue_depth: None };
        // A sample taken this very millisecond already is the point now (`t` stays increasing).
        let now = self
            .samples
            .back()
            .is_none_or(|last| last.at.timestamp_millis() < now.at.timestamp_millis())
            .then_some(now);
        let mut previous = self.evicted.as_ref();
        for sample in self.samples.iter().chain(now.as_ref()) {
            view.push(previous.unwrap_or(&zero), sample, interval);
            previous = Some(sample);
        }
        view
    }
}

impl Actor for MetricHistory {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.sample(ctx);
        ctx.run_interval(self.interval, |act, ctx| act.sample(ctx));
    }
}

crate::stoppable!(MetricHistory);

/// The samples kept, then the values now; `queue_depth` is the one read for this request.
#[derive(Message)]
#[rtype(result = "MetricHistoryView")]
pub struct GetMetricHistory {
    pub queue_depth: Option<i64>,
}

impl Handler<GetMetricHistory> for MetricHistory {
    type Result = MessageResult<GetMetricHistory>;

    fn handle(&mut self, msg: GetMetricHistory, _: &mut Context<Self>) -> Self::Result {
        let now = Sample { at: self.clock.now(), totals: self.metrics.totals(), queue_depth: msg.queue_depth };
        MessageResult(self.view(now))
    }
}

/// `GET /admin/api/metrics/history`: one entry of `t` (unix seconds) per point, and every series
/// as long as `t`. Rates are per minute over the time since the point before (at least one
/// interval); `null` where there is nothing to tell (no upstream call to time, the store not read).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = HistoryView)]
pub struct MetricHistoryView {
    pub interval_secs: f64,
    pub t: Vec<f64>,
    pub series: MetricHistorySeries,
}

/// The charts' series, parallel to `t`.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
#[schema(as = HistorySeries)]
pub struct MetricHistorySeries {
    /// Content items finished `ready` / `fallback`, per minute.
    pub content_ready_per_min: Vec<Option<f64>>,
    pub content_fallback_per_min: Vec<Option<f64>>,
    /// Upstream calls answered well, failed (5xx, network, timeout, invalid), refused with 429, per minute.
    pub upstream_ok_per_min: Vec<Option<f64>>,
    pub upstream_failed_per_min: Vec<Option<f64>>,
    pub upstream_rate_limited_per_min: Vec<Option<f64>>,
    /// Median and 95th percentile of the upstream calls' seconds since the point before.
    pub upstream_p50_secs: Vec<Option<f64>>,
    pub upstream_p95_secs: Vec<Option<f64>>,
    /// Durable jobs queued or running.
    pub queue_depth: Vec<Option<f64>>,
    pub players_online: Vec<Option<f64>>,
    pub lobby_messages_per_min: Vec<Option<f64>>,
    /// Generation runs charged, USD per minute.
    pub spend_usd_per_min: Vec<Option<f64>>,
    /// 0 closed, 1 open, 2 half-open (as `lorewire_circuit_state`).
    pub circuit_state: Vec<Option<f64>>,
}

impl MetricHistoryView {
    fn push(&mut self, before: &Sample, at: &Sample, interval: f64) {
        // Measured between the times as `t` shows them (to the millisecond).
        let secs = ((at.at.timestamp_millis() - before.at.timestamp_millis()) as f64 / 1000.0).max(interval);
        let per_min = |field: fn(&Totals) -> u64| {
            Some(field(&at.totals).saturating_sub(field(&before.totals)) as f64 * 60.0 / secs)
        };
        let s = &mut self.series;
        self.t.push(at.at.timestamp_millis() as f64 / 1000.0);
        s.content_ready_per_min.push(per_min(|t| t.content_ready));
        s.content_fallback_per_min.push(per_min(|t| t.content_fallback));
        s.upstream_ok_per_min.push(per_min(|t| t.upstream_ok));
        s.upstream_failed_per_min.push(per_min(|t| t.upstream_failed));
        s.upstream_rate_limited_per_min.push(per_min(|t| t.upstream_rate_limited));
        s.upstream_p50_secs.push(upstream_quantile(&before.totals, &at.totals, 0.5));
        s.upstream_p95_secs.push(upstream_quantile(&before.totals, &at.totals, 0.95));
        s.queue_depth.push(at.queue_depth.map(|d| d as f64));
        s.players_online.push(Some(at.totals.players_online as f64));
        s.lobby_messages_per_min.push(per_min(|t| t.lobby_messages));
        s.spend_usd_per_min.push(per_min(|t| t.spend_micros).map(|micros| micros / 1e6));
        s.circuit_state.push(Some(at.totals.circuit_state as f64));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(secs: i64, ready: u64) -> Sample {
        Sample {
            at: DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap(),
            totals: Totals { content_ready: ready, players_online: 1, ..Totals::default() },
            queue_depth: Some(2),
        }
    }

    fn history(interval: Duration) -> MetricHistory {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&dir.path().join("h.db").to_string_lossy()).unwrap();
        MetricHistory::new(Arc::new(Metrics::new()), store, Arc::new(crate::core::clock::SystemClock), interval)
    }

    #[test]
    fn keeps_the_last_hour_and_measures_the_oldest_from_the_one_before() {
        let mut h = history(Duration::from_secs(10));
        for i in 0..(SAMPLES as i64 + 5) {
            h.push(sample(i * 10, i as u64 * 2));
        }
        let last = SAMPLES as i64 + 4;
        let view = h.view(sample(last * 10 + 4, last as u64 * 2 + 1));
        assert_eq!(view.t.len(), SAMPLES + 1);
        assert_eq!(view.series.content_ready_per_min.len(), SAMPLES + 1);
        assert_eq!(view.t[0], (1_800_000_000 + 50) as f64);
        // 2 items in 10 s: 12 a minute, the oldest kept included.
        assert_eq!(view.series.content_ready_per_min[0], Some(12.0));
        // The point now: 1 item in 4 s, measured over at least one interval.
        assert_eq!(view.series.content_ready_per_min[SAMPLES], Some(6.0));
        assert_eq!(view.series.queue_depth[SAMPLES], Some(2.0));
        // No upstream call: no latency to tell.
        assert_eq!(view.series.upstream_p50_secs[0], None);
    }

    #[test]
    fn a_request_in_the_millisecond_of_a_sample_gets_that_sample_as_the_point_now() {
        let mut h = history(Duration::from_secs(10));
        h.push(sample(0, 0));
        h.push(sample(10, 1));
        let view = h.view(sample(10, 1));
        assert_eq!(view.t.len(), 2);
        assert_eq!(h.view(sample(11, 1)).t.len(), 3);
    }
}
