//! WebSocket clients for the benches: each on a task of its own that reads everything, answers
//! pings, counts what it received and sends what it is given.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use awc::ws::{Frame, Message};
use futures_util::{SinkExt, StreamExt};

/// Frames to send on one client's socket.
pub type Sink = tokio::sync::mpsc::UnboundedSender<Message>;

/// What every client saw, shared with their reader tasks (one thread).
#[derive(Default)]
pub struct Counters {
    /// Clients that received their join reply.
    pub joined: Cell<usize>,
    /// `message:new` and `message:mood_updated` frames.
    pub lobby_frames: Cell<usize>,
    pub messages: Cell<usize>,
    pub closed: Cell<usize>,
    /// When the lobby message in flight was sent; each `message:new` records its latency.
    pub sent_at: Cell<Option<Instant>>,
    pub latencies: RefCell<Vec<Duration>>,
}

/// How a client says hello and knows it has joined.
#[derive(Clone, Copy)]
pub struct Hello {
    /// The first text frame, `{n}` replaced by the client's number.
    pub first: &'static str,
    /// The start of the frame that says the client has joined.
    pub joined: &'static [u8],
}

/// A lobby player: `session:start`, joined once `presence:state` arrives.
pub const PLAYER: Hello =
    Hello { first: r#"{"type":"session:start","nickname":"bench{n}"}"#, joined: br#"{"type":"presence:state""# };

/// Opens a session and says hello; a task of its own keeps reading and sends what it is given.
pub async fn connect(client: &awc::Client, addr: &str, n: usize, hello: Hello, counters: Rc<Counters>) -> Sink {
    let (_, mut framed) =
        client.ws(format!("http://{addr}/ws")).max_frame_size(64 << 20).connect().await.expect("ws connects");
    let first = hello.first.replace("{n}", &n.to_string());
    framed.send(Message::Text(first.into())).await.expect("send");
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
                        if head.starts_with(hello.joined) {
                            counters.joined.set(counters.joined.get() + 1);
                        } else if head.starts_with(br#"{"type":"message:new""#) {
                            counters.messages.set(counters.messages.get() + 1);
                            counters.lobby_frames.set(counters.lobby_frames.get() + 1);
                            if let Some(sent) = counters.sent_at.get() {
                                counters.latencies.borrow_mut().push(sent.elapsed());
                            }
                        } else if head.starts_with(br#"{"type":"message:mood_updated""#) {
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

pub async fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        actix_web::rt::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Connects `n` clients (client `i` to `addrs[i % addrs.len()]`) with at most `in_flight`
/// handshakes at a time and waits until every one has joined; returns their sinks and how long
/// the whole storm took. The sinks are in client order.
pub async fn join_all(
    addrs: &[&str],
    n: usize,
    in_flight: usize,
    hello: Hello,
    counters: &Rc<Counters>,
) -> (Vec<Sink>, Duration) {
    let client =
        awc::Client::builder().connector(awc::Connector::new().limit(0)).timeout(Duration::from_secs(60)).finish();
    let joined_before = counters.joined.get();
    let started = Instant::now();
    let connects = (0..n).map(|i| connect(&client, addrs[i % addrs.len()], i, hello, counters.clone()));
    let sinks: Vec<Sink> = futures_util::stream::iter(connects).buffered(in_flight).collect().await;
    wait_for("every session to join", Duration::from_secs(180), || counters.joined.get() >= joined_before + n).await;
    let took = started.elapsed();
    assert_eq!(counters.closed.get(), 0, "no session was closed");
    (sinks, took)
}

/// Sessions that join and leave before the measurement, so that the server's fixed costs
/// (blocking threads and their heaps, the store connections' page caches) are in `before`.
pub const WARM_UP: usize = 100;

/// What [`memory_per_session`] measured, RSS in KiB.
pub struct SessionMemory {
    /// At start, before any session.
    pub cold: u64,
    /// After the [`WARM_UP`] sessions have joined and left.
    pub before: u64,
    pub joined: u64,
    pub closed: u64,
    pub storm: Duration,
    pub threads_joined: u64,
    pub threads_closed: u64,
}

impl SessionMemory {
    pub fn per_session(&self, sessions: usize) -> f64 {
        self.joined.saturating_sub(self.before) as f64 / sessions as f64
    }

    pub fn grew_after_close(&self) -> i64 {
        self.closed as i64 - self.before as i64
    }
}

/// The server's RSS at start, after [`WARM_UP`] sessions have joined and left, once every one
/// of `sessions` clients has joined (100 handshakes in flight) and buffers drained, and
/// `after_close` after they have all closed.
pub async fn memory_per_session(
    server: &super::Server,
    sessions: usize,
    hello: Hello,
    after_close: Duration,
) -> SessionMemory {
    actix_web::rt::time::sleep(Duration::from_millis(500)).await;
    let cold = server.rss_kib();
    let warm_up = Rc::new(Counters::default());
    let (sinks, _) = join_all(&[&server.addr], WARM_UP, 100, hello, &warm_up).await;
    drop(sinks);
    wait_for("the warm-up sessions to close", Duration::from_secs(60), || warm_up.closed.get() >= WARM_UP).await;
    actix_web::rt::time::sleep(Duration::from_millis(500)).await;
    let before = server.rss_kib();
    let counters = Rc::new(Counters::default());
    let (sinks, storm) = join_all(&[&server.addr], sessions, 100, hello, &counters).await;
    // Let the last presence updates go out and the buffers drain.
    actix_web::rt::time::sleep(Duration::from_secs(2)).await;
    let (joined, threads_joined) = (server.rss_kib(), server.status("Threads"));
    drop(sinks);
    wait_for("every client to close", Duration::from_secs(60), || counters.closed.get() >= sessions).await;
    actix_web::rt::time::sleep(after_close).await;
    SessionMemory {
        cold,
        before,
        joined,
        closed: server.rss_kib(),
        storm,
        threads_joined,
        threads_closed: server.status("Threads"),
    }
}
