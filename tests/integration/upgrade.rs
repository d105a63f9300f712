//! The upgrade on a raw socket: frames a client sends right behind its upgrade request reach the
//! session, an upgrade the app refuses is answered over HTTP and the connection closed, and a
//! session that ends closes its socket after the close frame.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{spawn_app, Db, TestApp};

const WAIT: Duration = Duration::from_secs(10);

fn upgrade_request(app: &TestApp, path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n",
        app.addr
    )
}

/// A masked text frame, as a client sends it.
fn client_text(payload: &str) -> Vec<u8> {
    let payload = payload.as_bytes();
    assert!(payload.len() < 126, "short frames only");
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Reads until the connection ends (the server closed it), within `WAIT`.
async fn read_to_end(socket: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    tokio::time::timeout(WAIT, socket.read_to_end(&mut all)).await.expect("the server closes the connection").unwrap();
    all
}

/// The response head (up to the blank line) and what follows it.
fn split_head(bytes: &[u8]) -> (String, &[u8]) {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete response head") + 4;
    (String::from_utf8_lossy(&bytes[..end]).into_owned(), &bytes[end..])
}

/// The server's (unmasked) frames in `bytes`: (opcode, payload).
fn server_frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    while bytes.len() >= 2 {
        let (opcode, len) = (bytes[0] & 0x0f, (bytes[1] & 0x7f) as usize);
        assert_eq!(bytes[1] & 0x80, 0, "server frames are not masked");
        let (len, start) = match len {
            126 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            127 => (u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize, 10),
            n => (n, 2),
        };
        if bytes.len() < start + len {
            break;
        }
        frames.push((opcode, bytes[start..start + len].to_vec()));
        bytes = &bytes[start + len..];
    }
    frames
}

fn texts(frames: &[(u8, Vec<u8>)]) -> Vec<Value> {
    frames.iter().filter(|(op, _)| *op == 1).map(|(_, p)| serde_json::from_slice(p).expect("JSON text")).collect()
}

async fn frames_behind_the_upgrade_request_reach_the_session(db: Db) {
    let app = spawn_app(db).await;
    let mut socket = TcpStream::connect(app.addr).await.unwrap();
    // The upgrade request and the first frames in one write: the server reads them together.
    let mut bytes = upgrade_request(&app, "/ws", "").into_bytes();
    bytes.extend(client_text(&json!({"type": "session:start", "nickname": "Pip", "ref": "early"}).to_string()));
    bytes.extend(client_text(&json!({"type": "presence:list", "after_user_id": 0, "ref": "list"}).to_string()));
    socket.write_all(&bytes).await.unwrap();

    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let replies = loop {
        let n = tokio::time::timeout(WAIT, socket.read(&mut buf)).await.expect("the replies in time").unwrap();
        assert!(n > 0, "the server closed the socket early: {}", String::from_utf8_lossy(&received));
        received.extend_from_slice(&buf[..n]);
        if !received.windows(4).any(|w| w == b"\r\n\r\n") {
            continue;
        }
        let (_, rest) = split_head(&received);
        let replies = texts(&server_frames(rest));
        if replies.iter().any(|r| r["ref"] == "list") {
            break replies;
        }
    };
    let (head, _) = split_head(&received);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.to_ascii_lowercase().contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="), "{head}");
    assert_eq!(replies[0]["type"], "session:ack", "{replies:?}");
    assert_eq!(replies[0]["ref"], "early");
    let page = replies.iter().find(|r| r["ref"] == "list").unwrap();
    assert_eq!(page["type"], "presence:page", "{page}");

    // A close from the client is answered with a close, then the server ends the connection.
    let mask = [1, 2, 3, 4];
    let code = 1000u16.to_be_bytes();
    let mut close = vec![0x88, 0x82];
    close.extend_from_slice(&mask);
    close.extend([code[0] ^ mask[0], code[1] ^ mask[1]]);
    socket.write_all(&close).await.unwrap();
    socket.shutdown().await.unwrap();
    let rest = read_to_end(&mut socket).await;
    let frames = server_frames(&rest);
    assert_eq!(frames.last().map(|(op, _)| *op), Some(8), "the last frame is the close: {frames:?}");
}

async fn an_upgrade_the_app_refuses_is_answered_and_closed(db: Db) {
    let app = spawn_app(db).await;
    for (path, extra, status) in
        [("/nowhere", "", "404"), ("/ws", "Origin: http://evil.example\r\n", "403"), ("/api/openapi.json", "", "200")]
    {
        let mut socket = TcpStream::connect(app.addr).await.unwrap();
        socket.write_all(upgrade_request(&app, path, extra).as_bytes()).await.unwrap();
        let response = read_to_end(&mut socket).await;
        let (head, body) = split_head(&response);
        assert!(head.starts_with(&format!("HTTP/1.1 {status}")), "{path}: {head}");
        assert!(head.to_ascii_lowercase().contains("connection: close"), "{path}: {head}");
        let length: usize = head
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(|v| v.trim().parse().unwrap()))
            .expect("a content length");
        assert_eq!(body.len(), length, "{path}: the whole body, then the end");
        let body: Value = serde_json::from_slice(body).expect("a JSON body");
        if status != "200" {
            assert!(body["error"].is_object() || body["error"].is_string(), "{path}: {body}");
        }
    }
    // The server still serves WebSockets and requests.
    let (_ws, ack) = app.player("After").await;
    assert_eq!(ack["nickname"], "After");
}

both_backends!(frames_behind_the_upgrade_request_reach_the_session, an_upgrade_the_app_refuses_is_answered_and_closed,);
