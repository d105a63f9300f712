//! Lobby cost, measured on the real binary as a child process (SQLite, no LLM key, so every
//! mood falls back at once without an upstream call):
//!
//! 1. memory per idle joined session: RSS of the server (/proc/PID/status VmRSS) before and
//!    after 5,000 WebSocket sessions have started and received their history and presence;
//! 2. server CPU per delivered lobby frame with 1,000 joined clients: utime + stime of the
//!    server (/proc/PID/stat) around a burst of messages, divided by the `message:new` and
//!    `message:mood_updated` frames the clients received.
//!
//! `cargo bench --bench lobby` (Linux only; about a minute). Set LOREWIRE_BENCH_SESSIONS /
//! LOREWIRE_BENCH_CLIENTS / LOREWIRE_BENCH_MESSAGES to change the sizes.

#[allow(dead_code)]
#[path = "support/mod.rs"]
mod support;

use std::cell::Cell;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use awc::ws::{Frame, Message};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;

/// Frames to send on one client's socket.
type Sink = tokio::sync::mpsc::UnboundedSender<Message>;

struct Server {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start() -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new(env!("CARGO_BIN_EXE_lorewire"))
            .current_dir(dir.path())
            .env("DATABASE_URL", dir.path().join("bench.db"))
            .env("LOREWIRE_BIND", &addr)
            .env("LOREWIRE_ADMIN_TOKEN", "bench-admin")
            .env("LOREWIRE_CHAT_RATE", "1000000/1s")
            .env("RUST_LOG", "warn")
            .env_remove("LOREWIRE_LLM_API_KEY")
            .env_remove("ANTHROPIC_API_KEY")
            .env_remove("OPENAI_API_KEY")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("lorewire starts");
        let server = Server { child, addr, _dir: dir };
        let client = awc::Client::default();
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(resp) = client.get(format!("http://{}/ready", server.addr)).send().await {
                if resp.status().is_success() {
                    break;
                }
            }
            assert!(Instant::now() < until, "the server did not become ready");
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        }
        server
    }

    /// A numeric field of /proc/PID/status (`VmRSS` in KiB, `Threads`).
    fn status(&self, field: &str) -> u64 {
        support::status(self.child.id(), field)
    }

    fn rss_kib(&self) -> u64 {
        self.status("VmRSS")
    }

    fn cpu(&self) -> Duration {
        support::cpu(self.child.id())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What every client saw, shared with its reader task.
#[derive(Default)]
struct Counters {
    joined: Cell<usize>,
    lobby_frames: Cell<usize>,
    closed: Cell<usize>,
}

/// Opens a session; a task of its own keeps reading, answers pings and sends what it is given.
async fn connect(client: &awc::Client, addr: &str, n: usize, counters: Rc<Counters>) -> Sink {
    let (_, mut framed) =
        client.ws(format!("http://{addr}/ws")).max_frame_size(64 << 20).connect().await.expect("ws connects");
    let start = json!({"type": "session:start", "nickname": format!("bench{n}")}).to_string();
    framed.send(Message::Text(start.into())).await.expect("send");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Message>();
    actix_web::rt::spawn(async move {
        loop {
            tokio::select! {
                out = rx.recv() => match out {
                    Some(msg) => if framed.send(msg).await.is_err() { break },
                    None => break,
                },
                frame = framed.next() => match frame {
                    Some(Ok(Frame::Text(bytes))) => {
                        // Only the type is needed; a prefix check avoids parsing the big frames.
                        let head = &bytes[..bytes.len().min(40)];
                        if head.starts_with(br#"{"type":"presence:state""#) {
                            counters.joined.set(counters.joined.get() + 1);
                        } else if head.starts_with(br#"{"type":"message:new""#)
                            || head.starts_with(br#"{"type":"message:mood_updated""#)
                        {
                            counters.lobby_frames.set(counters.lobby_frames.get() + 1);
                        }
                    }
                    Some(Ok(Frame::Ping(p))) => if framed.send(Message::Pong(p)).await.is_err() { break },
                    Some(Ok(Frame::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(_)) => {}
                },
            }
        }
        counters.closed.set(counters.closed.get() + 1);
    });
    tx
}

async fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Connects `n` sessions, at most 100 handshakes at a time, and waits until all have joined.
async fn join_all(server: &Server, n: usize, counters: &Rc<Counters>) -> Vec<Sink> {
    let client =
        awc::Client::builder().connector(awc::Connector::new().limit(0)).timeout(Duration::from_secs(60)).finish();
    let mut sinks = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
        let batch = chunk.iter().map(|i| connect(&client, &server.addr, *i, counters.clone()));
        sinks.extend(futures_util::future::join_all(batch).await);
    }
    wait_for("every session to join", Duration::from_secs(120), || counters.joined.get() >= n).await;
    assert_eq!(counters.closed.get(), 0, "no session was closed");
    sinks
}

async fn memory_per_session(sessions: usize) {
    let server = Server::start().await;
    actix_web::rt::time::sleep(Duration::from_millis(500)).await;
    let before = server.rss_kib();
    let counters = Rc::new(Counters::default());
    let started = Instant::now();
    let sinks = join_all(&server, sessions, &counters).await;
    let took = started.elapsed();
    // Let the last presence updates go out and buffers drain.
    actix_web::rt::time::sleep(Duration::from_secs(2)).await;
    let after = server.rss_kib();
    let threads = server.status("Threads");
    println!(
        "memory: {sessions} idle joined sessions: server RSS {before} KiB -> {after} KiB = {per:.1} KiB per session \
         (joined in {secs:.1} s; {threads} threads)",
        per = (after.saturating_sub(before)) as f64 / sessions as f64,
        secs = took.as_secs_f64(),
    );
    // The join storm grew the blocking pool (one session start each); its idle threads exit after 10 s.
    actix_web::rt::time::sleep(Duration::from_secs(11)).await;
    let settled = server.rss_kib();
    println!(
        "memory: the same sessions once the blocking pool is idle again: RSS {settled} KiB = {per:.1} KiB per \
         session ({threads} threads)",
        per = (settled.saturating_sub(before)) as f64 / sessions as f64,
        threads = server.status("Threads"),
    );
    drop(sinks);
}

async fn cpu_per_frame(clients: usize, messages: usize) {
    let server = Server::start().await;
    let counters = Rc::new(Counters::default());
    let sinks = join_all(&server, clients, &counters).await;
    actix_web::rt::time::sleep(Duration::from_secs(1)).await;
    let cpu_before = server.cpu();
    let frames_before = counters.lobby_frames.get();
    let started = Instant::now();
    let senders = sinks.len().min(50);
    for m in 0..messages {
        let text = json!({"type": "message:send", "text": format!("bench message {m}")}).to_string();
        sinks[m % senders].send(Message::Text(text.into())).expect("client task alive");
    }
    // Every client gets message:new and message:mood_updated for every message.
    let expected = frames_before + 2 * messages * clients;
    wait_for("every lobby frame", Duration::from_secs(300), || counters.lobby_frames.get() >= expected).await;
    let took = started.elapsed();
    let cpu = server.cpu() - cpu_before;
    let delivered = counters.lobby_frames.get() - frames_before;
    println!(
        "cpu: {clients} clients, {messages} messages: {delivered} lobby frames delivered in {secs:.2} s \
         ({rate:.0} frames/s); server CPU {cpu_ms:.0} ms = {per:.2} us per delivered frame",
        secs = took.as_secs_f64(),
        rate = delivered as f64 / took.as_secs_f64(),
        cpu_ms = cpu.as_secs_f64() * 1000.0,
        per = cpu.as_secs_f64() * 1e6 / delivered as f64,
    );
}

fn main() {
    let fds = support::raise_fd_limit();
    let sessions = support::env_usize("LOREWIRE_BENCH_SESSIONS", 5000);
    let clients = support::env_usize("LOREWIRE_BENCH_CLIENTS", 1000);
    let messages = support::env_usize("LOREWIRE_BENCH_MESSAGES", 200);
    assert!(fds as usize > sessions + 100, "open-file limit {fds} is too low for {sessions} sessions");
    actix_web::rt::System::new().block_on(async move {
        memory_per_session(sessions).await;
        cpu_per_frame(clients, messages).await;
    });
}
