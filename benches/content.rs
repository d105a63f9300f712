//! Content pipeline throughput and latency, on SQLite, with an upstream that answers at once.
//!
//! `cargo bench --bench content` prints, at 1 and 32 concurrent WebSocket clients, content
//! generations per second and p50/p99 from `content:request` to the pushed `ready` frame.

#[allow(dead_code, unused_imports)]
#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{spawn_with, Db, Setup, TestApp};
use serde_json::json;

async fn client(app: &TestApp, first_id: u64, count: u64) -> Vec<Duration> {
    let (mut ws, _) = app.player("Bench").await;
    let mut latencies = Vec::with_capacity(count as usize);
    for subject_id in first_id..first_id + count {
        let started = Instant::now();
        ws.send(json!({"type": "content:request", "kind": "quest", "subject_id": subject_id,
                       "context": {"character_name": "Ada", "quest_name": "The Ashen Well"}}))
            .await;
        loop {
            let frame = ws.recv().await;
            if frame["type"] == "content:update" && frame["content"]["subject_id"] == subject_id {
                assert_eq!(frame["content"]["status"], "ready", "{frame}");
                break;
            }
        }
        latencies.push(started.elapsed());
    }
    latencies
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn main() {
    actix_web::rt::System::new().block_on(async {
        let app = spawn_with(Setup::new(Db::Sqlite), |c| {
            c.llm_concurrency = 64;
            c.job_poll = Duration::from_secs(1);
        })
        .await;
        let mut next_id = 1;
        for (clients, per_client) in [(1u64, 400u64), (32, 50)] {
            // Warm-up: connections, prepared statements, page cache.
            client(&app, 1_000_000 + next_id, 20).await;
            next_id += 20;
            let started = Instant::now();
            let runs = (0..clients).map(|c| client(&app, next_id + c * per_client, per_client));
            let mut latencies: Vec<Duration> = futures_util::future::join_all(runs).await.concat();
            let elapsed = started.elapsed();
            next_id += clients * per_client;
            latencies.sort();
            println!(
                "content pipeline, SQLite, {clients:>2} client(s): {n} generations in {secs:.2}s = {rate:.0}/s, \
                 request -> ready p50 {p50:.2} ms, p99 {p99:.2} ms",
                n = latencies.len(),
                secs = elapsed.as_secs_f64(),
                rate = latencies.len() as f64 / elapsed.as_secs_f64(),
                p50 = percentile(&latencies, 0.50),
                p99 = percentile(&latencies, 0.99),
            );
        }
        assert_eq!(app.fake.request_count() as u64, next_id - 1, "one upstream call per item");
    });
}
