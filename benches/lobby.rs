//! Sessions and the lobby, measured on the real binary as a child process (SQLite, no LLM
//! key, so every mood falls back at once without an upstream call), by clients in this process:
//!
//! 1. memory per idle joined session at 1,000, 5,000 and 15,000 sessions: the server's RSS
//!    (/proc/PID/status VmRSS) before the sessions (after 100 warm-up sessions joined and
//!    left, so the server's fixed costs are in it; the RSS at start is printed too) and once
//!    every one has its ack, history and `presence:state`, divided by the sessions; then the
//!    RSS once they have all closed;
//! 2. the join storm: the time from the first handshake to the last `presence:state`, with at
//!    most 100 handshakes in flight;
//! 3. lobby fan-out with 1,000 joined clients: messages sent one at a time (the next once every
//!    client has the last), `message:send` -> `message:new` latency over every delivery
//!    (p50 / p99 / max), and the server's CPU time (user + system, /proc/PID/stat) per delivered
//!    lobby frame (`message:new` and `message:mood_updated`).
//!
//! `cargo bench --bench lobby` (Linux only; about two minutes). LOREWIRE_BENCH_SESSIONS
//! (`1000,5000,15000`), LOREWIRE_BENCH_CLIENTS and LOREWIRE_BENCH_MESSAGES change the sizes.
//! `cargo bench --bench echo_floor` measures a bare actix-web-actors echo session the same way.

#[allow(dead_code)]
#[path = "support/mod.rs"]
mod support;

use std::rc::Rc;
use std::time::{Duration, Instant};

use awc::ws::Message;
use serde_json::json;
use support::clients::{self, Counters, PLAYER};
use support::Server;

/// Memory per idle joined session at `sessions`, the join storm, and the memory once they closed.
async fn sessions(sessions: usize) {
    let server = Server::lorewire(&[]).await;
    // The server sees the sockets close; idle threads of the blocking pool exit after 10 s.
    let m = clients::memory_per_session(&server, sessions, PLAYER, Duration::from_secs(11)).await;
    println!(
        "sessions: {sessions:>6} idle joined: join storm {storm:.2} s (100 handshakes in flight); server RSS \
         {cold} KiB at start, {before} KiB after {warm_up} sessions joined and left -> {joined} KiB = {per:.1} KiB \
         per session ({threads} threads)",
        storm = m.storm.as_secs_f64(),
        cold = m.cold,
        warm_up = clients::WARM_UP,
        before = m.before,
        joined = m.joined,
        per = m.per_session(sessions),
        threads = m.threads_joined,
    );
    println!(
        "sessions: {sessions:>6} closed: server RSS {closed} KiB = before + {grew} KiB ({threads} threads)",
        closed = m.closed,
        grew = m.grew_after_close(),
        threads = m.threads_closed,
    );
}

/// Lobby fan-out latency and CPU per delivered frame with `clients` joined clients.
async fn fan_out(clients: usize, messages: usize) {
    let server = Server::lorewire(&[]).await;
    let counters = Rc::new(Counters::default());
    let (sinks, _) = clients::join_all(&[&server.addr], clients, 100, PLAYER, &counters).await;
    let senders = sinks.len().min(50);
    let send = |m: usize| {
        let text = json!({"type": "message:send", "text": format!("bench message {m}")}).to_string();
        counters.sent_at.set(Some(Instant::now()));
        sinks[m % senders].send(Message::Text(text.into())).expect("client task alive");
    };
    // Warm-up, then one message at a time, each once every client has the one before.
    for m in 0..10 {
        let expected = counters.messages.get() + clients;
        send(m);
        clients::wait_for("a warm-up message", Duration::from_secs(30), || counters.messages.get() >= expected).await;
    }
    actix_web::rt::time::sleep(Duration::from_secs(1)).await;
    counters.latencies.borrow_mut().clear();
    let (cpu_before, frames_before) = (server.cpu(), counters.lobby_frames.get());
    let started = Instant::now();
    for m in 0..messages {
        let expected = counters.messages.get() + clients;
        send(10 + m);
        clients::wait_for("every delivery", Duration::from_secs(30), || counters.messages.get() >= expected).await;
    }
    // The moods of the last messages settle too.
    let expected = frames_before + 2 * messages * clients;
    clients::wait_for("every mood", Duration::from_secs(30), || counters.lobby_frames.get() >= expected).await;
    let took = started.elapsed();
    let cpu = server.cpu() - cpu_before;
    let delivered = counters.lobby_frames.get() - frames_before;
    let mut latencies = counters.latencies.take();
    latencies.sort();
    println!(
        "fan-out: {clients} clients, {messages} messages one at a time: send -> message:new over {n} deliveries \
         p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms; {delivered} lobby frames in {secs:.2} s, server CPU \
         {cpu_ms:.0} ms = {per:.2} us per delivered frame",
        n = latencies.len(),
        p50 = support::ms(&latencies, 0.50),
        p99 = support::ms(&latencies, 0.99),
        max = support::ms(&latencies, 1.0),
        secs = took.as_secs_f64(),
        cpu_ms = cpu.as_secs_f64() * 1000.0,
        per = cpu.as_secs_f64() * 1e6 / delivered as f64,
    );
}

fn main() {
    let sizes = support::session_sizes("sessions");
    let clients = support::env_usize("LOREWIRE_BENCH_CLIENTS", 1000);
    let messages = support::env_usize("LOREWIRE_BENCH_MESSAGES", 200);
    actix_web::rt::System::new().block_on(async move {
        for size in sizes {
            sessions(size).await;
        }
        fan_out(clients, messages).await;
    });
}
