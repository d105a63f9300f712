//! The real binary's log on stderr: `LOREWIRE_LOG_FORMAT=json` gives one JSON object a line,
//! every request and WebSocket upgrade has one line with method, path, status, duration and
//! request id, polls stay at debug, no secret reaches a line, and text in a pipe has no colour.

use std::process::Command;

use serde_json::{json, Value};

use crate::common::{eventually, http, Db, FakeLlm, WsClient, ADMIN_TOKEN, API_KEY};
use crate::process::{test_db, Server};

const BIN: &str = env!("CARGO_BIN_EXE_lorewire");

/// The request lines (level, span and fields) of a JSON log.
fn request_lines(log: &str) -> Vec<Value> {
    log.lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .filter(|l| l["target"] == "lorewire::http::request_log")
        .collect()
}

fn line_for<'a>(lines: &'a [Value], method: &str, path: &str) -> Option<&'a Value> {
    lines.iter().find(|l| l["span"]["method"] == method && l["span"]["path"] == path)
}

#[actix_web::test]
async fn json_log_has_one_line_per_request_and_no_secret() {
    let fake = FakeLlm::start();
    let db = test_db(Db::Sqlite).await;
    let server = Server::start_with(&db.url, &fake, &[("LOREWIRE_LOG_FORMAT", "json"), ("RUST_LOG", "info")]).await;
    let (_ws, token) = server.player().await;

    // A token in the query string and in the Authorization header.
    let resp =
        http().get(server.url(&format!("/api/content/npc/7?token={token}"))).bearer_auth(&token).send().await.unwrap();
    let content_status = resp.status().as_u16();
    let content_id = resp.headers().get("x-request-id").expect("x-request-id").to_str().unwrap().to_owned();
    let mut ws = WsClient::connect(&server.url(&format!("/ws?token={token}"))).await;
    ws.send(json!({"type": "session:start", "nickname": "Logged", "token": token})).await;
    ws.recv_type("session:ack").await;
    let second_key = "sk-log-CANARY-00112233445566778899";
    let resp =
        http().put(server.url("/admin/api/llm")).bearer_auth(ADMIN_TOKEN).send_json(&json!({"api_key": second_key}));
    assert_eq!(resp.await.unwrap().status(), 200);
    for path in ["/health", "/ready", "/metrics", "/health"] {
        assert_eq!(http().get(server.url(path)).send().await.unwrap().status(), 200, "{path}");
    }
    // The last request: once its line is there, every earlier one is too.
    let resp = http().get(server.url("/admin/api/llm")).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let log = eventually("the last request's line", || async {
        let log = server.stderr();
        line_for(&request_lines(&log), "GET", "/admin/api/llm").map(|_| log.clone())
    })
    .await;

    for line in log.lines() {
        let l: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        for key in ["timestamp", "level", "target"] {
            assert!(l[key].is_string(), "no `{key}`: {line}");
        }
        assert!(l["fields"]["message"].is_string(), "no message: {line}");
    }
    let lines = request_lines(&log);
    let content = line_for(&lines, "GET", "/api/content/npc/7").expect("the REST call is logged");
    assert_eq!(content["level"], "INFO", "{content}");
    assert_eq!(content["fields"]["status"], content_status, "{content}");
    assert!(content["fields"]["duration_ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{content}");
    assert_eq!(content["span"]["request_id"], content_id.as_str(), "the id sent back is the one logged: {content}");
    let upgrades: Vec<&Value> = lines.iter().filter(|l| l["span"]["path"] == "/ws").collect();
    assert_eq!(upgrades.len(), 2, "each upgrade is logged once: {upgrades:?}");
    for upgrade in upgrades {
        assert_eq!(upgrade["level"], "INFO", "{upgrade}");
        assert_eq!(upgrade["span"]["method"], "GET", "{upgrade}");
        assert_eq!(upgrade["fields"]["status"], 101, "{upgrade}");
        assert!(upgrade["fields"]["duration_ms"].is_number(), "{upgrade}");
        assert!(upgrade["span"]["request_id"].as_str().is_some_and(|id| id.len() >= 32), "{upgrade}");
    }
    let put = line_for(&lines, "PUT", "/admin/api/llm").expect("the admin call is logged");
    assert_eq!(put["fields"]["status"], 200);
    for poll in ["/health", "/ready", "/metrics"] {
        assert!(line_for(&lines, "GET", poll).is_none(), "{poll} polls stay out of the info log:\n{log}");
    }
    for secret in [token.as_str(), ADMIN_TOKEN, API_KEY, second_key] {
        assert!(!log.contains(secret), "`{secret}` reached the log:\n{log}");
    }
}

#[actix_web::test]
async fn text_log_in_a_pipe_has_no_colour() {
    let fake = FakeLlm::start();
    let db = test_db(Db::Sqlite).await;
    let server = Server::start_with(&db.url, &fake, &[("LOREWIRE_LOG_FORMAT", "text"), ("RUST_LOG", "info")]).await;
    assert_eq!(http().get(server.url("/api/content/quest/1?token=abc")).send().await.unwrap().status(), 401);
    let log = eventually("the request line", || async {
        let log = server.stderr();
        log.contains("path=/api/content/quest/1 ").then_some(log)
    })
    .await;
    assert!(log.contains("lorewire is serving"), "{log}");
    assert!(!log.contains("\x1b["), "colour codes in a pipe:\n{log:?}");
    let line = log.lines().find(|l| l.contains("path=/api/content/quest/1 ")).unwrap();
    assert!(line.contains(" INFO ") && line.contains("method=GET") && line.contains("status=401"), "{line}");
    assert!(line.contains("request_id=") && line.contains("duration_ms="), "{line}");
    assert!(!log.contains("token=abc"), "the query string reached the log:\n{log}");
}

#[test]
fn an_unknown_log_format_stops_the_start_with_the_choices() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .env("LOREWIRE_LOG_FORMAT", "yaml")
        .env("LOREWIRE_BIND", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("'yaml'") && err.contains("text, json"), "{err}");
    assert!(!dir.path().join("lorewire.db").exists(), "nothing started");
}

/// JWTs, accepted or refused, over the WebSocket and as REST bearers, never reach the log,
/// even at debug; the refusal's reason does.
#[actix_web::test]
async fn jwts_never_reach_the_log() {
    use jsonwebtoken::{encode, EncodingKey, Header};
    let fake = FakeLlm::start();
    let db = test_db(Db::Sqlite).await;
    let secret = "log-test-secret-0123456789";
    let env = [("LOREWIRE_AUTH", "both"), ("LOREWIRE_JWT_SECRET", secret), ("RUST_LOG", "debug")];
    let server = Server::start_with(&db.url, &fake, &env).await;
    let exp = chrono::Utc::now().timestamp() + 600;
    let claims = json!({"iss": "studio", "sub": "logged-player", "name": "Logged", "exp": exp});
    let good = encode(&Header::default(), &claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap();
    let forged = encode(&Header::default(), &claims, &EncodingKey::from_secret(b"forged")).unwrap();
    for jwt in [&good, &forged] {
        let mut ws = WsClient::connect(&server.url("/ws")).await;
        ws.send(json!({"type": "session:start", "jwt": jwt})).await;
        ws.recv().await;
        let resp = http().get(server.url("/api/content/npc/7")).bearer_auth(jwt).send().await.unwrap();
        assert!(resp.status() == 404 || resp.status() == 401, "{}", resp.status());
    }
    let log = eventually("the refusal's line", || async {
        let log = server.stderr();
        log.contains("a JWT was refused").then_some(log)
    })
    .await;
    assert!(log.contains("the JWT's signature is not valid"), "the reason is logged");
    for jwt in [&good, &forged] {
        for part in jwt.split('.') {
            assert!(!log.contains(part), "a part of a JWT reached the log: {part}");
        }
    }
}
