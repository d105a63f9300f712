//! The limits that keep one client from hurting the others (PROTOCOL §4), over real sockets:
//! connections per address (429, the slot freed on close, other addresses and `/health`
//! unaffected), the request body deadline (408), authorization before the body on every route,
//! the `session:start` deadline (1008), the per-session content subscription cap, and the
//! `/metrics` token. Limits are set small in each test's Config.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use actix_web::http::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::common::*;

const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
/// Another client address: every 127.x.y.z reaches the server on 127.0.0.1.
const OTHER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

async fn connect_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    socket.connect(to).await.unwrap()
}

/// Everything the server sends until it closes (or `wait` passes), as text.
async fn read_all(stream: &mut TcpStream, wait: Duration) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A whole request on a connection of its own from `from`; the answer's status and body.
async fn request_from(from: IpAddr, to: SocketAddr, head: &str, body: &str) -> (u16, String) {
    let mut stream = connect_from(from, to).await;
    let request = format!("{head}\r\nHost: {to}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    stream.write_all(request.as_bytes()).await.unwrap();
    let answer = read_all(&mut stream, WAIT).await;
    status_and_body(&answer)
}

fn status_and_body(answer: &str) -> (u16, String) {
    let status = answer.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

async fn open_from(app: &TestApp, address: IpAddr, n: usize) {
    let limits = app.running.as_ref().unwrap().state.limits.clone();
    eventually(&format!("{n} connections open from {address}"), || {
        let open = limits.open_from(address);
        async move { (open == n).then_some(()) }
    })
    .await;
}

async fn metric(app: &TestApp, series: &str) -> f64 {
    let (status, text) = request_from(LOOPBACK, app.addr, "GET /metrics HTTP/1.1", "").await;
    assert_eq!(status, 200, "{text}");
    text.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok()).unwrap_or(0.0)
}

#[actix_web::test]
async fn connections_over_the_per_address_limit_get_429_until_one_closes() {
    let app = spawn_with(Setup::new(Db::Sqlite), |c| c.max_connections_per_address = 4).await;
    // Four idle connections (nothing sent yet) hold the address's four slots.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connect_from(LOOPBACK, app.addr).await);
    }
    open_from(&app, LOOPBACK, 4).await;

    let (status, body) = request_from(LOOPBACK, app.addr, "GET /health HTTP/1.1", "").await;
    assert_eq!(status, 429, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"], "rate_limited");
    assert!(body["message"].as_str().unwrap().contains("at most 4"), "{body}");
    // A WebSocket upgrade is refused before it happens.
    assert_eq!(WsClient::connect_with(&app.url("/ws"), None).await.err(), Some(429));

    // Another address is not held back, and /health answers it.
    let (status, body) = request_from(OTHER, app.addr, "GET /health HTTP/1.1", "").await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    open_from(&app, LOOPBACK, 4).await;

    // Closing one frees its slot.
    drop(held.pop());
    open_from(&app, LOOPBACK, 3).await;
    let (status, body) = request_from(LOOPBACK, app.addr, "GET /health HTTP/1.1", "").await;
    assert_eq!(status, 200, "{body}");
    drop(held);
    open_from(&app, LOOPBACK, 0).await;
    assert!(metric(&app, "lorewire_connections_refused_total{reason=\"per_address\"}").await >= 2.0);
}

#[actix_web::test]
async fn a_websocket_holds_its_slot_until_it_closes() {
    let app = spawn_with(Setup::new(Db::Sqlite), |c| c.max_connections_per_address = 2).await;
    let (first, _) = app.player("One").await;
    let (second, _) = app.player("Two").await;
    open_from(&app, LOOPBACK, 2).await;
    assert_eq!(WsClient::connect_with(&app.url("/ws"), None).await.err(), Some(429));
    first.close().await;
    open_from(&app, LOOPBACK, 1).await;
    let (mut third, _) = app.player("Three").await;
    third.expect_silence(Duration::from_millis(100)).await;
    drop(second);
}

#[actix_web::test]
async fn a_body_that_does_not_arrive_in_time_is_answered_408() {
    let app = spawn_with(Setup::new(Db::Sqlite), |c| {
        c.max_connections_per_address = 4;
        c.body_timeout = Duration::from_millis(300);
    })
    .await;
    let token = app.player_token().await;
    let routes = [
        ("POST /api/content", token.as_str()),
        ("POST /api/generate", token.as_str()),
        ("PUT /admin/api/llm", ADMIN_TOKEN),
        ("PUT /admin/api/budgets/p1", ADMIN_TOKEN),
    ];
    // Twice as many slow bodies as the address has slots: each is let go at its deadline.
    for round in 0..2 {
        open_from(&app, LOOPBACK, 0).await;
        let mut slow = Vec::new();
        for (route, token) in routes {
            let mut stream = connect_from(LOOPBACK, app.addr).await;
            let head = format!(
                "{route} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\
                 Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"kind\":",
                app.addr
            );
            stream.write_all(head.as_bytes()).await.unwrap();
            slow.push((route, stream));
        }
        let started = std::time::Instant::now();
        for (route, mut stream) in slow {
            let (status, body) = status_and_body(&read_all(&mut stream, WAIT).await);
            assert_eq!(status, 408, "round {round}, {route}: {body}");
            assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["error"], "timeout", "{route}");
        }
        assert!(started.elapsed() < Duration::from_secs(3), "the 408s took {:?}", started.elapsed());
    }
    assert_eq!(metric(&app, "lorewire_connections_refused_total{reason=\"body_timeout\"}").await, 8.0);
    // A body that arrives in time is served as before.
    let (status, body) = post_json(&app.url("/api/content"), &token, &json!({"kind": "quest", "subject_id": 1})).await;
    assert_eq!(status, 202, "{body}");
}

#[actix_web::test]
async fn a_request_answered_before_its_body_is_whole_does_not_keep_its_connection() {
    let app = spawn_with(Setup::new(Db::Sqlite), |c| c.body_timeout = Duration::from_millis(300)).await;
    // A chunked body that stops after its first chunk: answered before it is read (a refused
    // token, a route that takes no body) or at its deadline, the connection then closes.
    let cases = [
        ("POST /api/content", "", 401),
        ("PUT /admin/api/llm", "Authorization: Bearer wrong\r\n", 403),
        ("GET /health", "", 200),
        ("PUT /admin/api/llm", &format!("Authorization: Bearer {ADMIN_TOKEN}\r\n") as &str, 408),
    ];
    for (route, auth, expected) in cases {
        let mut stream = connect_from(LOOPBACK, app.addr).await;
        let head = format!(
            "{route} HTTP/1.1\r\nHost: {}\r\n{auth}Content-Type: application/json\r\n\
             Transfer-Encoding: chunked\r\n\r\n5\r\n{{\"a\":\r\n",
            app.addr
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let started = std::time::Instant::now();
        let (status, body) = status_and_body(&read_all(&mut stream, WAIT).await);
        assert_eq!(status, expected, "{route}: {body}");
        assert!(started.elapsed() < Duration::from_secs(4), "{route}: open for {:?}", started.elapsed());
    }
    open_from(&app, LOOPBACK, 0).await;
}

/// Every `/api/*` and `/admin/api/*` route, with a path whose parameters are filled in.
fn guarded_routes() -> Vec<(Method, String, bool)> {
    lorewire::http::endpoints()
        .into_iter()
        .filter_map(|e| {
            let admin = e.path.starts_with("/admin/api/");
            let player = e.path.starts_with("/api/") && e.path != "/api/openapi.json";
            let path = e.path.replace("{kind}", "quest").replace("{subject_id}", "1").replace(['{', '}'], "");
            (admin || player).then_some((e.method, path, admin))
        })
        .collect()
}

#[actix_web::test]
async fn a_bad_token_gets_401_or_403_whatever_the_body_path_or_query() {
    let app = spawn_app(Db::Sqlite).await;
    let routes = guarded_routes();
    assert!(routes.iter().filter(|(m, _, _)| *m == Method::POST || *m == Method::PUT).count() >= 6);
    for (method, path, admin) in routes {
        let url = app.url(&format!("{path}?limit=not-a-number&status=nonsense&days=x"));
        let wrong = if admin { 403 } else { 401 };
        for (token, expected) in [(None, 401), (Some("not-a-real-token"), wrong)] {
            let mut req = http().request(method.clone(), &url).insert_header(("content-type", "application/json"));
            if let Some(token) = token {
                req = req.bearer_auth(token);
            }
            let mut resp = req.send_body("{\"malformed\": ").await.unwrap();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            assert_eq!(resp.status().as_u16(), expected, "{method} {path} with token {token:?}: {body}");
            let code = if expected == 401 { "unauthorized" } else { "forbidden" };
            assert_eq!(body["error"], code, "{method} {path}");
        }
    }
    // The right token still reaches the body's own check.
    let (status, body) = post_json(&app.url("/api/content"), &app.player_token().await, &json!([1])).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_payload")), "{body}");
}

#[actix_web::test]
async fn a_socket_that_never_starts_a_session_is_closed_with_1008() {
    let app = spawn_with(Setup::new(Db::Sqlite), |c| c.session_start = Duration::from_millis(300)).await;
    let mut silent = app.ws().await;
    let opened = std::time::Instant::now();
    assert_eq!(silent.expect_close().await, Some(1008));
    assert!(opened.elapsed() < Duration::from_secs(2), "closed after {:?}", opened.elapsed());

    // A refused session:start does not start the session either.
    let mut refused = app.ws().await;
    refused.send(json!({"type": "session:start", "nickname": "", "ref": "s"})).await;
    assert_eq!(refused.recv().await["type"], "error:invalid_payload");
    assert_eq!(refused.expect_close().await, Some(1008));

    // A started session stays past the deadline.
    let (mut started, _) = app.player("Started").await;
    started.expect_silence(Duration::from_millis(700)).await;
    started.send(json!({"type": "content:subscribe", "kind": "npc", "subject_id": 9, "ref": "x"})).await;
    assert_eq!(started.recv().await["type"], "error:not_found");
    assert_eq!(metric(&app, "lorewire_connections_refused_total{reason=\"session_start\"}").await, 2.0);
}

/// The frame answering `reference`, skipping the updates in between.
async fn reply(ws: &mut WsClient, reference: &str) -> Value {
    loop {
        let frame = ws.recv().await;
        if frame["ref"] == reference {
            return frame;
        }
    }
}

#[actix_web::test]
async fn content_subscriptions_stop_at_the_cap_and_unsubscribing_frees_one() {
    let app = spawn_with(Setup::new(Db::Sqlite), |c| c.max_subscriptions = 3).await;
    let (mut ws, ack) = app.player("Collector").await;
    let request = |id: u64, r: &str| json!({"type": "content:request", "kind": "quest", "subject_id": id, "ref": r});
    for id in 1..=3 {
        ws.send(request(id, &format!("r{id}"))).await;
        assert_eq!(reply(&mut ws, &format!("r{id}")).await["type"], "content:snapshot");
    }
    // The fourth is refused, by content:request and content:subscribe alike; nothing is stored.
    ws.send(request(4, "r4")).await;
    let refused = reply(&mut ws, "r4").await;
    assert_eq!(refused["type"], "error:rate_limited", "{refused}");
    assert!(refused["message"].as_str().unwrap().contains("at most 3"), "{refused}");
    let token = ack["token"].as_str().unwrap();
    let (status, _) = get_json(&app.url("/api/content/quest/4"), Some(token)).await;
    assert_eq!(status, 404, "a refused request stores nothing");
    ws.send(json!({"type": "content:subscribe", "kind": "quest", "subject_id": 4, "ref": "s4"})).await;
    assert_eq!(reply(&mut ws, "s4").await["type"], "error:rate_limited");

    // An item already subscribed costs nothing.
    ws.send(request(2, "again")).await;
    assert_eq!(reply(&mut ws, "again").await["type"], "content:snapshot");
    ws.send(json!({"type": "content:subscribe", "kind": "quest", "subject_id": 3, "ref": "s3"})).await;
    assert_eq!(reply(&mut ws, "s3").await["type"], "content:snapshot");

    // Unsubscribing frees a slot, and only one.
    ws.send(json!({"type": "content:unsubscribe", "kind": "quest", "subject_id": 1})).await;
    ws.send(request(4, "r4b")).await;
    assert_eq!(reply(&mut ws, "r4b").await["type"], "content:snapshot");
    ws.send(request(5, "r5")).await;
    assert_eq!(reply(&mut ws, "r5").await["type"], "error:rate_limited");
    // Another session has slots of its own.
    let (mut other, _) = app.player("Other").await;
    other.send(request(5, "o5")).await;
    assert_eq!(reply(&mut other, "o5").await["type"], "content:snapshot");
    assert!(metric(&app, "lorewire_subscriptions_refused_total").await >= 3.0);
}

#[actix_web::test]
async fn metrics_need_the_token_when_one_is_set() {
    let app = spawn_with(Setup::new(Db::Sqlite), |c| {
        c.metrics_token = Some(lorewire::core::config::Secret::new("metrics-secret"));
    })
    .await;
    for token in [None, Some("wrong"), Some(ADMIN_TOKEN)] {
        let (status, body) = get_json(&app.url("/metrics"), token).await;
        assert_eq!((status, body["error"].as_str()), (401, Some("unauthorized")), "token {token:?}: {body}");
    }
    let mut resp = http().get(app.url("/metrics")).bearer_auth("metrics-secret").send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let text = String::from_utf8(resp.body().limit(1 << 22).await.unwrap().to_vec()).unwrap();
    assert!(text.contains("lorewire_sessions_open"), "{text}");

    // Unset, /metrics stays open.
    let open = spawn_app(Db::Sqlite).await;
    let resp = http().get(open.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
}
