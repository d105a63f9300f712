//! Generation runs: the latency lorewire adds to the first delta, and throughput.
//!
//! `cargo bench --bench runs` prints, with the fake upstream (Chat Completions, whose
//! first SSE chunk already carries text):
//! - added time to first delta: from the fake receiving the request (it answers headers and the
//!   first text chunk at once) to the client's first `run:delta`, p50/p99 over sequential runs,
//!   plus the time from `generate:start` to the upstream request (admission + queue claim);
//! - runs per second at 32 concurrent WebSocket clients with an instant upstream, on SQLite and
//!   on PostgreSQL (`LOREWIRE_BENCH_BACKENDS`, default `sqlite,postgres`);
//! - the same added time to first delta with moderation on (a word list, and a moderation
//!   endpoint answering in `LOREWIRE_BENCH_MODERATION_MS`, default 20 ms): what the check adds.

#[allow(dead_code, unused_imports)]
#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{spawn_with, Db, Setup, TestApp};
use lorewire::llm::providers::Provider;
use serde_json::{json, Value};

fn start(input: String) -> Value {
    json!({"type": "generate:start", "project_id": "bench", "action": "WRITE", "input": input})
}

/// Runs one generation; returns (start -> first delta, start) once it is done.
async fn one_run(ws: &mut common::WsClient, input: String) -> (Duration, Instant) {
    let started = Instant::now();
    ws.send(start(input)).await;
    let mut first = None;
    loop {
        let frame = ws.recv().await;
        match frame["type"].as_str() {
            Some("run:delta") if first.is_none() => first = Some(started.elapsed()),
            Some("run:done") => break,
            Some("run:error") | Some("error:overloaded") => panic!("run failed: {frame}"),
            _ => {}
        }
    }
    (first.expect("a delta before done"), started)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// p50 and p99 of the time lorewire adds between the upstream's first byte and the client's
/// first `run:delta`, in ms.
async fn first_delta_latency(app: &TestApp, runs: usize, label: &str) -> (f64, f64) {
    let (mut ws, _) = app.player("Bench").await;
    for i in 0..20 {
        one_run(&mut ws, format!("warm-up {i}")).await;
    }
    let mut added = Vec::with_capacity(runs);
    let mut to_upstream = Vec::with_capacity(runs);
    for i in 0..runs {
        app.fake.reset_requests();
        let (first, started) = one_run(&mut ws, format!("latency {i}")).await;
        let at = app.fake.requests()[0].at;
        let upstream = at.duration_since(started);
        to_upstream.push(upstream);
        added.push(first.saturating_sub(upstream));
    }
    added.sort();
    to_upstream.sort();
    let (a50, a99) = (percentile(&added, 0.50), percentile(&added, 0.99));
    println!(
        "runs, SQLite, 1 client, {runs} runs{label}: upstream first byte -> client run:delta p50 {a50:.2} ms, \
         p99 {a99:.2} ms; generate:start -> upstream request p50 {u50:.2} ms, p99 {u99:.2} ms",
        u50 = percentile(&to_upstream, 0.50),
        u99 = percentile(&to_upstream, 0.99),
    );
    (a50, a99)
}

/// The added time to first delta with moderation on, against the same without.
async fn moderated_first_delta(plain: (f64, f64)) {
    let endpoint_ms = std::env::var("LOREWIRE_BENCH_MODERATION_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(20u64);
    let endpoint = common::fake_moderation::FakeModeration::start().await;
    endpoint.set_latency(Duration::from_millis(endpoint_ms));
    let dir = tempfile::tempdir().expect("temp dir");
    let words = dir.path().join("words.txt");
    std::fs::write(&words, "badword\n").expect("word list");
    let url = endpoint.url.clone();
    let app = spawn_with(Setup { provider: Provider::OpenAiChat, ..Setup::new(Db::Sqlite) }, move |c| {
        c.job_poll = Duration::from_secs(1);
        c.moderation.words = Some(words);
        c.moderation.url = Some(url);
    })
    .await;
    app.fake.set_chunk_pause(Some(Duration::ZERO));
    let label = format!(", moderation on (endpoint {endpoint_ms} ms)");
    let (m50, m99) = first_delta_latency(&app, 200, &label).await;
    println!(
        "runs, moderation adds to the first delta: p50 {:.2} ms, p99 {:.2} ms (goal: at most the endpoint's {endpoint_ms} ms + 5 ms)",
        m50 - plain.0,
        m99 - plain.1,
    );
}

async fn client(app: &TestApp, id: usize, count: usize) {
    let (mut ws, _) = app.player("Bench").await;
    for i in 0..count {
        one_run(&mut ws, format!("throughput {id} {i}")).await;
    }
}

/// Runs per second at 32 concurrent clients on `db`, each starting 30 runs one after another.
async fn throughput(db: Db) {
    let name = format!("{db:?}");
    let app = spawn_with(Setup { provider: Provider::OpenAiChat, ..Setup::new(db) }, |c| {
        c.llm_concurrency = 64;
        c.job_poll = Duration::from_secs(1);
    })
    .await;
    app.fake.set_chunk_pause(Some(Duration::ZERO));
    let (clients, per_client) = (32usize, 30usize);
    futures_util::future::join_all((0..clients).map(|c| client(&app, 1000 + c, 3))).await;
    let started = Instant::now();
    futures_util::future::join_all((0..clients).map(|c| client(&app, c, per_client))).await;
    let elapsed = started.elapsed();
    let n = clients * per_client;
    println!(
        "runs, {name}, {clients} clients, instant upstream: {n} runs in {secs:.2}s = {rate:.0} runs/s",
        secs = elapsed.as_secs_f64(),
        rate = n as f64 / elapsed.as_secs_f64(),
    );
}

fn main() {
    actix_web::rt::System::new().block_on(async {
        let app = spawn_with(Setup { provider: Provider::OpenAiChat, ..Setup::new(Db::Sqlite) }, |c| {
            c.job_poll = Duration::from_secs(1);
        })
        .await;
        app.fake.set_chunk_pause(Some(Duration::ZERO));
        let plain = first_delta_latency(&app, 300, "").await;
        drop(app);
        // LOREWIRE_BENCH_BACKENDS (`sqlite,postgres`): the databases of the throughput.
        let backends = std::env::var("LOREWIRE_BENCH_BACKENDS").unwrap_or_else(|_| "sqlite,postgres".into());
        for db in [Db::Sqlite, Db::Postgres] {
            if backends.split(',').any(|b| b.trim().eq_ignore_ascii_case(&format!("{db:?}"))) {
                throughput(db).await;
            }
        }
        moderated_first_delta(plain).await;
    });
}
