//! Failing over between upstreams (PROTOCOL §7) as a user sees it: the real binary as a child
//! process, two fake upstreams (OpenAI Chat Completions) in this process, one WebSocket client
//! asking for items one after another.
//!
//! `cargo bench --bench failover` prints, on SQLite:
//! - `second alone`: the second upstream as the only one: request -> `ready` p50 / p99 (its
//!   own time, through lorewire);
//! - `every call hops`: the primary answers 500 to every call and its circuit never opens
//!   (`LOREWIRE_CIRCUIT_FAILURES` very high), so each item is tried there first and moves on to
//!   the second: how many items end `ready`, p50 / p99, and the p50 a failed hop adds;
//! - `circuit opens`: the same with the default circuit: the primary is left alone once its
//!   circuit opens; how many items end `ready`.
//!
//! LOREWIRE_BENCH_ITEMS (default 500) changes the count per phase.

#[allow(dead_code, unused_imports)]
#[path = "../tests/common/mod.rs"]
mod common;

#[allow(dead_code)]
#[path = "support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use common::{Db, FakeLlm, Mode, TestDb, WsClient};
use serde_json::{json, Value};
use support::Server;

/// `count` items one after another: their latencies and how many ended `ready`.
async fn items(addr: &str, first_id: u64, count: u64) -> (Vec<Duration>, u64) {
    let mut ws = WsClient::connect(&format!("http://{addr}/ws")).await;
    ws.send(json!({"type": "session:start", "nickname": "Bench"})).await;
    ws.recv_type("session:ack").await;
    let (mut latencies, mut ready) = (Vec::with_capacity(count as usize), 0);
    for subject_id in first_id..first_id + count {
        let started = Instant::now();
        ws.send(json!({"type": "content:request", "kind": "quest", "subject_id": subject_id})).await;
        loop {
            let frame = ws.recv().await;
            if frame["type"] == "content:update" && frame["content"]["subject_id"] == subject_id {
                ready += u64::from(frame["content"]["status"] == "ready");
                break;
            }
        }
        latencies.push(started.elapsed());
    }
    ws.close().await;
    latencies.sort();
    (latencies, ready)
}

async fn server(db: &TestDb, primary: &FakeLlm, circuit_failures: &str) -> Server {
    Server::lorewire(&[
        ("DATABASE_URL", db.url.clone()),
        ("LOREWIRE_LLM_PROVIDER", "openai-chat".into()),
        ("LOREWIRE_LLM_BASE_URL", primary.openai_base_url()),
        ("LOREWIRE_LLM_API_KEY", "sk-bench-primary".into()),
        ("LOREWIRE_LLM_MODEL", "bench-model".into()),
        ("LOREWIRE_CIRCUIT_FAILURES", circuit_failures.into()),
        ("LOREWIRE_PLAYER_LLM_RATE", "1000000/1s".into()),
        ("LOREWIRE_PLAYER_DAILY_TOKENS", "none".into()),
    ])
    .await
}

async fn add_upstream(addr: &str, fake: &FakeLlm) {
    let body = json!({"provider": "openai-chat", "base_url": fake.openai_base_url(), "model": "bench-model-2",
                      "api_key": "sk-bench-second", "priority": 1});
    let mut resp = common::http()
        .post(format!("http://{addr}/admin/api/upstreams"))
        .bearer_auth("bench-admin")
        .send_json(&body)
        .await
        .expect("the admin API answers");
    let answer: Value = resp.json().await.unwrap_or(Value::Null);
    assert_eq!(resp.status().as_u16(), 201, "{answer}");
}

fn line(what: &str, latencies: &[Duration], ready: u64) -> f64 {
    let p50 = support::ms(latencies, 0.50);
    println!(
        "failover, {what}: {ready}/{n} ready ({pct:.1} %); request -> ready p50 {p50:.2} ms, p99 {p99:.2} ms",
        n = latencies.len(),
        pct = ready as f64 * 100.0 / latencies.len() as f64,
        p99 = support::ms(latencies, 0.99),
    );
    p50
}

fn main() {
    let count = support::env_usize("LOREWIRE_BENCH_ITEMS", 500) as u64;
    let (primary, second) = (FakeLlm::start(), FakeLlm::start());
    actix_web::rt::System::new().block_on(async {
        // The second upstream as the only one: its own time through lorewire.
        let db = TestDb::new(Db::Sqlite);
        let alone = server(&db, &second, "3").await;
        items(&alone.addr, 1_000_000, 50).await;
        let (latencies, ready) = items(&alone.addr, 1, count).await;
        let own = line("second alone", &latencies, ready);
        drop(alone);

        // Every call tried on the failing primary first.
        primary.set_mode(Mode::Status(500));
        let db = TestDb::new(Db::Sqlite);
        let hops = server(&db, &primary, "1000000000").await;
        add_upstream(&hops.addr, &second).await;
        items(&hops.addr, 1_000_000, 50).await;
        let (latencies, ready) = items(&hops.addr, 1, count).await;
        let hopped = line("every call hops", &latencies, ready);
        println!("failover, a failed hop adds p50 {:.2} ms", hopped - own);
        drop(hops);

        // The default circuit: the primary is skipped once it opens.
        let db = TestDb::new(Db::Sqlite);
        let opens = server(&db, &primary, "3").await;
        add_upstream(&opens.addr, &second).await;
        let (latencies, ready) = items(&opens.addr, 1, count).await;
        line("circuit opens", &latencies, ready);
    });
}
