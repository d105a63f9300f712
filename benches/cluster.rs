//! Lobby fan-out across processes: three real binaries (child processes) on one PostgreSQL
//! database, 1,000 WebSocket clients spread over them, one message at a time sent from clients
//! on every process; through Redis pub/sub and through `LISTEN/NOTIFY`, side by side.
//!
//! Prints, per backplane: `message:send` -> `message:new` latency over every delivery (p50 /
//! p99 / max) and the three servers' CPU time (user + system, /proc/PID/stat) per delivered
//! `message:new` (no LLM key, so moods fall back at once without an upstream call); then 200
//! concurrent streamed runs, each started on one process and watched from another (the watcher
//! joins the same run), each process with a fake upstream of its own (so the process that
//! streams a run is known): the latency of every `run:delta` from the upstream's chunk, on the
//! process that streams it and on the others.
//!
//! Then content across processes: 1, 2 and 3 real binaries on one PostgreSQL database and one
//! Redis, each with its own fake upstream (answering at once) and its own 32 WebSocket clients
//! (each asking for items one after another, waiting for `ready`): the items per second of all
//! processes together, request -> `ready` p50 / p99, and the servers' CPU per item. The processes
//! share this one machine, so each has one writer connection (`LOREWIRE_DB_WRITERS`, as the
//! operations guide advises for that case) unless the bench's own environment sets it.
//!
//! `cargo bench --bench cluster` (Linux; needs the local PostgreSQL and Redis, as the tests do).
//! LOREWIRE_BENCH_CLIENTS / LOREWIRE_BENCH_MESSAGES / LOREWIRE_BENCH_RUNS /
//! LOREWIRE_BENCH_ITEMS (per process, default 2,000) change the sizes; LOREWIRE_BENCH_PARTS
//! (`fanout,runs,content`) which parts run.

#[allow(dead_code, unused_imports)]
#[path = "../tests/common/mod.rs"]
mod common;

#[allow(dead_code)]
#[path = "support/mod.rs"]
mod support;

use std::rc::Rc;
use std::time::{Duration, Instant};

use awc::ws::{Frame, Message};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use support::clients::{Counters, PLAYER};
use support::Server;

/// A lorewire child process on `database_url`, through Redis when `redis` is given.
async fn start(database_url: &str, redis: Option<(&str, &str)>, extra: &[(&str, String)]) -> Server {
    let mut env = vec![("DATABASE_URL", database_url.to_owned())];
    if let Some((url, prefix)) = redis {
        env.extend([("LOREWIRE_REDIS_URL", url.to_owned()), ("LOREWIRE_REDIS_PREFIX", prefix.to_owned())]);
    }
    env.extend(extra.iter().cloned());
    Server::lorewire(&env).await
}

async fn fan_out(name: &str, database_url: &str, redis: Option<(&str, &str)>, clients: usize, messages: usize) {
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(start(database_url, redis, &[]).await);
    }
    // Let each process hear the others before anyone joins.
    actix_web::rt::time::sleep(Duration::from_secs(2)).await;
    let counters = Rc::new(Counters::default());
    let addrs: Vec<&str> = servers.iter().map(|s| s.addr.as_str()).collect();
    let (sinks, _) = support::clients::join_all(&addrs, clients, 100, PLAYER, &counters).await;
    actix_web::rt::time::sleep(Duration::from_secs(2)).await;

    counters.latencies.borrow_mut().clear();
    let cpu_before: Duration = servers.iter().map(Server::cpu).sum();
    let started = Instant::now();
    for m in 0..messages {
        let text = json!({"type": "message:send", "text": format!("bench {m}")}).to_string();
        let expected = counters.messages.get() + clients;
        counters.sent_at.set(Some(Instant::now()));
        // Senders on every process in turn.
        sinks[m % 30].send(Message::Text(text.into())).expect("client task alive");
        support::clients::wait_for("every delivery", Duration::from_secs(60), || counters.messages.get() >= expected)
            .await;
    }
    let took = started.elapsed();
    let cpu: Duration = servers.iter().map(Server::cpu).sum::<Duration>() - cpu_before;
    let mut latencies = counters.latencies.take();
    latencies.sort();
    let delivered = latencies.len();
    println!(
        "{name}: 3 processes, {clients} clients, {messages} messages one at a time: {delivered} deliveries in \
         {secs:.1} s; send -> message:new p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms; server CPU \
         {cpu_ms:.0} ms = {per:.1} us per delivery (moods included)",
        secs = took.as_secs_f64(),
        p50 = support::ms(&latencies, 0.50),
        p99 = support::ms(&latencies, 0.99),
        max = support::ms(&latencies, 1.0),
        cpu_ms = cpu.as_secs_f64() * 1000.0,
        per = cpu.as_secs_f64() * 1e6 / delivered as f64,
    );
    drop(sinks);
}

/// Chunks of every streamed answer, and the pause between two.
const CHUNKS: usize = 20;
const CHUNK_PAUSE: Duration = Duration::from_millis(25);

/// One client of one run: starts (or, when `after` is given, once it fires, joins) the run of
/// `input` and returns its id and the `run:delta` arrivals (seq, when) until `run:done`;
/// `queued` is told when the run is queued.
async fn follow(
    client: &awc::Client,
    addr: &str,
    input: &str,
    after: Option<tokio::sync::oneshot::Receiver<()>>,
    mut queued: Option<tokio::sync::oneshot::Sender<()>>,
) -> (String, Vec<(u64, Instant)>) {
    let (_, mut framed) = client.ws(format!("http://{addr}/ws")).connect().await.expect("ws connects");
    let start = json!({"type": "session:start", "nickname": "runner"}).to_string();
    framed.send(Message::Text(start.into())).await.expect("send");
    if let Some(after) = after {
        let _ = after.await;
    }
    let run = json!({"type": "generate:start", "project_id": "bench", "action": "WRITE", "input": input}).to_string();
    framed.send(Message::Text(run.into())).await.expect("send");
    let (mut run_id, mut deltas) = (String::new(), Vec::new());
    loop {
        match framed.next().await {
            Some(Ok(Frame::Text(bytes))) => {
                let arrived = Instant::now();
                let frame: Value = serde_json::from_slice(&bytes).expect("JSON");
                match frame["type"].as_str().unwrap_or("") {
                    "run:queued" => {
                        run_id = frame["run_id"].as_str().unwrap().to_owned();
                        if let Some(queued) = queued.take() {
                            let _ = queued.send(());
                        }
                    }
                    "run:delta" => deltas.push((frame["seq"].as_u64().unwrap(), arrived)),
                    "run:done" => break,
                    t if t.starts_with("error") || t == "run:error" => panic!("the run failed: {frame}"),
                    _ => {}
                }
            }
            Some(Ok(Frame::Ping(p))) => {
                let _ = framed.send(Message::Pong(p)).await;
            }
            Some(Ok(_)) => {}
            other => panic!("the socket ended: {other:?}"),
        }
    }
    (run_id, deltas)
}

async fn streamed_runs(name: &str, database_url: &str, redis: Option<(&str, &str)>, runs: usize) {
    let fakes: Vec<common::FakeLlm> = (0..3).map(|_| common::FakeLlm::start()).collect();
    let chunks: Vec<String> = (0..CHUNKS).map(|i| format!("word{i:02} ")).collect();
    for fake in &fakes {
        fake.set_stream_chunks(chunks.clone());
        fake.set_chunk_pause(Some(CHUNK_PAUSE));
    }
    let mut servers = Vec::new();
    for fake in &fakes {
        let extra = [
            ("LOREWIRE_LLM_PROVIDER", "openai-chat".to_owned()),
            ("LOREWIRE_LLM_BASE_URL", fake.openai_base_url()),
            ("LOREWIRE_LLM_API_KEY", "sk-bench-0000".to_owned()),
        ];
        servers.push(start(database_url, redis, &extra).await);
    }
    actix_web::rt::time::sleep(Duration::from_secs(2)).await;
    let client =
        awc::Client::builder().connector(awc::Connector::new().limit(0)).timeout(Duration::from_secs(60)).finish();
    // Run i is started on process i % 3 and watched from the next one.
    let all = (0..runs).map(|i| {
        let (starter, watcher) = (&servers[i % 3].addr, &servers[(i + 1) % 3].addr);
        let input = format!("bench run {i}");
        let client = &client;
        async move {
            let (queued, after) = tokio::sync::oneshot::channel::<()>();
            let starting = follow(client, starter, &input, None, Some(queued));
            let watching = follow(client, watcher, &input, Some(after), None);
            let ((a_id, a), (b_id, b)) = futures_util::future::join(starting, watching).await;
            assert_eq!(a_id, b_id, "the watcher joined the same run");
            (i, input, a, b)
        }
    });
    let results = futures_util::future::join_all(all).await;
    let (mut local, mut remote) = (Vec::new(), Vec::new());
    for (i, input, starter, watcher) in results {
        let streamed_by = fakes
            .iter()
            .enumerate()
            .find_map(|(p, fake)| fake.requests().into_iter().find(|r| r.raw_body.contains(&input)).map(|r| (p, r.at)))
            .expect("one upstream saw the run");
        let (process, asked) = streamed_by;
        for (client_process, deltas) in [(i % 3, starter), ((i + 1) % 3, watcher)] {
            for (seq, arrived) in deltas {
                let sent = asked + CHUNK_PAUSE * seq as u32;
                let latency = arrived.saturating_duration_since(sent);
                if client_process == process {
                    local.push(latency)
                } else {
                    remote.push(latency)
                }
            }
        }
    }
    local.sort();
    remote.sort();
    println!(
        "{name}: {runs} streamed runs at once over 3 processes ({CHUNKS} chunks, {} ms apart): upstream chunk -> \
         run:delta on the streaming process p50 {:.1} ms, p99 {:.1} ms ({} deltas); on another process p50 {:.1} ms, \
         p99 {:.1} ms ({} deltas)",
        CHUNK_PAUSE.as_millis(),
        support::ms(&local, 0.5),
        support::ms(&local, 0.99),
        local.len(),
        support::ms(&remote, 0.5),
        support::ms(&remote, 0.99),
        remote.len(),
    );
}

/// One content client: `count` items one after another; the latency of each.
async fn content_client(addr: &str, first_id: u64, count: u64) -> Vec<Duration> {
    let mut ws = common::WsClient::connect(&format!("http://{addr}/ws")).await;
    ws.send(json!({"type": "session:start", "nickname": "Bench"})).await;
    ws.recv_type("session:ack").await;
    let mut latencies = Vec::with_capacity(count as usize);
    for subject_id in first_id..first_id + count {
        let started = Instant::now();
        ws.send(json!({"type": "content:request", "kind": "quest", "subject_id": subject_id})).await;
        loop {
            let frame = ws.recv().await;
            if frame["type"] == "content:update" && frame["content"]["subject_id"] == subject_id {
                assert_eq!(frame["content"]["status"], "ready", "{frame}");
                break;
            }
        }
        latencies.push(started.elapsed());
    }
    ws.close().await;
    latencies
}

/// Content items per second over `processes` processes on one database, each with its own
/// upstream and `clients` clients.
async fn content_scaling(processes: usize, clients: u64, items: u64) {
    let db = actix_web::rt::task::spawn_blocking(|| common::TestDb::new(common::Db::Postgres)).await.unwrap();
    let (redis_url, prefix) = (common::redis_url(), common::redis_prefix());
    let fakes: Vec<common::FakeLlm> = (0..processes).map(|_| common::FakeLlm::start()).collect();
    let writers = std::env::var("LOREWIRE_DB_WRITERS").unwrap_or_else(|_| "1".into());
    let mut servers = Vec::new();
    for fake in &fakes {
        let extra = [
            ("LOREWIRE_LLM_PROVIDER", "openai-chat".to_owned()),
            ("LOREWIRE_LLM_BASE_URL", fake.openai_base_url()),
            ("LOREWIRE_LLM_API_KEY", "sk-bench-0000".to_owned()),
            ("LOREWIRE_LLM_MODEL", "bench-model".to_owned()),
            ("LOREWIRE_LLM_CONCURRENCY", "64".to_owned()),
            ("LOREWIRE_DB_WRITERS", writers.clone()),
        ];
        servers.push(start(&db.url, Some((&redis_url, &prefix)), &extra).await);
    }
    // Warm-up: connections, prepared statements.
    let warm = servers.iter().enumerate().map(|(p, s)| content_client(&s.addr, 10_000_000 + p as u64 * 1000, 20));
    futures_util::future::join_all(warm).await;
    let per_client = (items / clients).max(1);
    let cpu_before: Duration = servers.iter().map(Server::cpu).sum();
    let started = Instant::now();
    let all = servers.iter().enumerate().flat_map(|(p, server)| {
        (0..clients).map(move |c| content_client(&server.addr, (p as u64 * clients + c) * per_client + 1, per_client))
    });
    let mut latencies: Vec<Duration> = futures_util::future::join_all(all).await.concat();
    let elapsed = started.elapsed();
    let cpu = servers.iter().map(Server::cpu).sum::<Duration>() - cpu_before;
    latencies.sort();
    let n = latencies.len();
    println!(
        "content, {processes} process(es) x {clients} clients, {writers} writer(s) each: {n} items in {secs:.2} s = {rate:.0}/s; request -> ready \
         p50 {p50:.2} ms, p99 {p99:.2} ms; servers' CPU {per:.3} ms per item",
        secs = elapsed.as_secs_f64(),
        rate = n as f64 / elapsed.as_secs_f64(),
        p50 = support::ms(&latencies, 0.50),
        p99 = support::ms(&latencies, 0.99),
        per = cpu.as_secs_f64() * 1000.0 / n as f64,
    );
}

fn main() {
    let fds = support::raise_fd_limit();
    let clients = support::env_usize("LOREWIRE_BENCH_CLIENTS", 1000);
    let messages = support::env_usize("LOREWIRE_BENCH_MESSAGES", 100);
    assert!(fds as usize > 2 * clients + 100, "open-file limit {fds} is too low for {clients} clients");
    let parts = std::env::var("LOREWIRE_BENCH_PARTS").unwrap_or_else(|_| "fanout,runs,content".into());
    actix_web::rt::System::new().block_on(async move {
        let redis_url = common::redis_url();
        for (name, redis) in [("redis", true), ("notify", false)].into_iter().filter(|_| parts.contains("fanout")) {
            let db = actix_web::rt::task::spawn_blocking(|| common::TestDb::new(common::Db::Postgres)).await.unwrap();
            let prefix = common::redis_prefix();
            let redis = redis.then_some((redis_url.as_str(), prefix.as_str()));
            fan_out(name, &db.url, redis, clients, messages).await;
        }
        for (name, redis) in [("redis", true), ("notify", false)].into_iter().filter(|_| parts.contains("runs")) {
            let db = actix_web::rt::task::spawn_blocking(|| common::TestDb::new(common::Db::Postgres)).await.unwrap();
            let prefix = common::redis_prefix();
            let redis = redis.then_some((redis_url.as_str(), prefix.as_str()));
            streamed_runs(name, &db.url, redis, support::env_usize("LOREWIRE_BENCH_RUNS", 200)).await;
        }
        if parts.contains("content") {
            let items = support::env_usize("LOREWIRE_BENCH_ITEMS", 2000) as u64;
            for processes in 1..=3 {
                content_scaling(processes, 32, items).await;
            }
        }
    });
}
