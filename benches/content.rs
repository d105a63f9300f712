//! The content pipeline as a user sees it: the real binary as a child process, the fake
//! upstream (OpenAI Chat Completions, answering at once) an HTTP server of its own in this
//! process, and WebSocket clients here.
//!
//! `cargo bench --bench content` prints, on SQLite and on PostgreSQL, at 1 and 32 concurrent
//! clients (each sending `content:request` and waiting for its `content:update` `ready`
//! before the next): items per second, request -> `ready` p50 / p99 / max, and the server's
//! CPU time (user + system, /proc/PID/stat) and context switches (every thread's, from
//! /proc/PID/task/*/status: each hand-off between threads costs at least one) per item, and
//! how many transactions the store's writer needed for the writes (from `/metrics`); then the
//! same items asked for again (each there already: request -> `content:snapshot`).
//! PostgreSQL is the local one the tests use
//! (`LOREWIRE_TEST_PG_URL`); LOREWIRE_BENCH_ITEMS (per size, default 2,000) changes the count,
//! LOREWIRE_BENCH_BACKENDS (`sqlite,postgres`) the databases, LOREWIRE_BENCH_CLIENTS (`1,32`)
//! the numbers of clients.

#[allow(dead_code, unused_imports)]
#[path = "../tests/common/mod.rs"]
mod common;

#[allow(dead_code)]
#[path = "support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use common::{Db, FakeLlm, TestDb, WsClient};
use serde_json::json;
use support::Server;

/// One client: `count` items one after another; the latency of each (request -> `ready`).
/// With `existing`, the items are there already: the latency is request -> its snapshot.
async fn client(addr: &str, first_id: u64, count: u64, existing: bool) -> Vec<Duration> {
    let answer = if existing { "content:snapshot" } else { "content:update" };
    let mut ws = WsClient::connect(&format!("http://{addr}/ws")).await;
    ws.send(json!({"type": "session:start", "nickname": "Bench"})).await;
    ws.recv_type("session:ack").await;
    let mut latencies = Vec::with_capacity(count as usize);
    for subject_id in first_id..first_id + count {
        let started = Instant::now();
        ws.send(json!({"type": "content:request", "kind": "quest", "subject_id": subject_id,
                       "context": {"character_name": "Ada", "quest_name": "The Ashen Well"}}))
            .await;
        loop {
            let frame = ws.recv().await;
            if frame["type"] == answer && frame["content"]["subject_id"] == subject_id {
                assert_eq!(frame["content"]["status"], "ready", "{frame}");
                break;
            }
        }
        latencies.push(started.elapsed());
    }
    ws.close().await;
    latencies
}

async fn pipeline(db: Db, fake: &FakeLlm, items: u64) {
    let database = TestDb::new(db);
    let server = Server::lorewire(&[
        ("DATABASE_URL", database.url.clone()),
        ("LOREWIRE_LLM_PROVIDER", "openai-chat".into()),
        ("LOREWIRE_LLM_BASE_URL", fake.openai_base_url()),
        ("LOREWIRE_LLM_API_KEY", "sk-bench".into()),
        ("LOREWIRE_LLM_MODEL", "bench-model".into()),
        ("LOREWIRE_LLM_CONCURRENCY", "64".into()),
    ])
    .await;
    let mut next_id = 1;
    for clients in support::env_sizes("LOREWIRE_BENCH_CLIENTS", &[1, 32]).into_iter().map(|c| c as u64) {
        let per_client = (items / clients).max(1);
        // Warm-up: connections, prepared statements, page cache.
        client(&server.addr, 1_000_000 + next_id, 50, false).await;
        next_id += 50;
        let writes_before = writer_counters(&server.addr).await;
        let (cpu_before, switches_before, started) = (server.cpu(), server.context_switches(), Instant::now());
        let runs = (0..clients).map(|c| client(&server.addr, next_id + c * per_client, per_client, false));
        let mut latencies: Vec<Duration> = futures_util::future::join_all(runs).await.concat();
        let (elapsed, cpu) = (started.elapsed(), server.cpu() - cpu_before);
        let switches = server.context_switches().saturating_sub(switches_before);
        let first_id = next_id;
        next_id += clients * per_client;
        let transactions = match (writes_before, writer_counters(&server.addr).await) {
            (Some((w0, b0)), Some((w1, b1))) => format!("; {} writes in {} transactions", w1 - w0, b1 - b0),
            _ => String::new(),
        };
        latencies.sort();
        let n = latencies.len();
        println!(
            "content, {db:?}, {clients:>2} client(s): {n} items in {secs:.2} s = {rate:.0}/s; request -> ready \
             p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms; server CPU {per:.3} ms and {switches_per:.1} context switches per item{transactions}",
            secs = elapsed.as_secs_f64(),
            rate = n as f64 / elapsed.as_secs_f64(),
            p50 = support::ms(&latencies, 0.50),
            p99 = support::ms(&latencies, 0.99),
            max = support::ms(&latencies, 1.0),
            per = cpu.as_secs_f64() * 1000.0 / n as f64,
            switches_per = switches as f64 / n as f64,
        );
        // The same items asked for again: each is answered as it is, with no upstream call.
        let (cpu_before, started) = (server.cpu(), Instant::now());
        let runs = (0..clients).map(|c| client(&server.addr, first_id + c * per_client, per_client, true));
        let mut latencies: Vec<Duration> = futures_util::future::join_all(runs).await.concat();
        let (elapsed, cpu) = (started.elapsed(), server.cpu() - cpu_before);
        latencies.sort();
        let n = latencies.len();
        println!(
            "content, {db:?}, {clients:>2} client(s), items there already: {n} in {secs:.2} s = {rate:.0}/s; \
             request -> snapshot p50 {p50:.2} ms, p99 {p99:.2} ms; server CPU {per:.3} ms per request",
            secs = elapsed.as_secs_f64(),
            rate = n as f64 / elapsed.as_secs_f64(),
            p50 = support::ms(&latencies, 0.50),
            p99 = support::ms(&latencies, 0.99),
            per = cpu.as_secs_f64() * 1000.0 / n as f64,
        );
    }
    assert_eq!(fake.request_count() as u64, next_id - 1, "one upstream call per item");
}

/// The store writer's `(writes, transactions)` so far, from `/metrics` (`None` for a build
/// without them).
async fn writer_counters(addr: &str) -> Option<(u64, u64)> {
    let mut response = common::http().get(format!("http://{addr}/metrics")).send().await.ok()?;
    let body = response.body().limit(1 << 22).await.ok()?;
    let text = String::from_utf8_lossy(&body);
    let value = |name: &str| {
        text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok()).map(|v| v as u64)
    };
    Some((value("lorewire_store_writes_total")?, value("lorewire_store_write_batches_total")?))
}

fn main() {
    let items = support::env_usize("LOREWIRE_BENCH_ITEMS", 2000) as u64;
    let fake = FakeLlm::start();
    actix_web::rt::System::new().block_on(async {
        let backends = std::env::var("LOREWIRE_BENCH_BACKENDS").unwrap_or_else(|_| "sqlite,postgres".into());
        for db in [Db::Sqlite, Db::Postgres] {
            if !backends.contains(&format!("{db:?}").to_lowercase()) {
                continue;
            }
            fake.reset_requests();
            pipeline(db, &fake, items).await;
        }
    });
}
