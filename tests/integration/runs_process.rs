//! Generation runs and the real binary: kill -9 while a run streams and another waits, then
//! restart: both finish, each exactly once; and two processes on one PostgreSQL database,
//! where the last session of a run leaves on one while the other streams it.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{eventually, get_json, post_json, Db, FakeLlm, Mode};
use crate::process::{test_db, Server};

async fn kill_9_while_streaming_then_restart(db: Db) {
    let fake = FakeLlm::start();
    let chunks: Vec<String> = (0..30).map(|i| format!("verse{i:02} ")).collect();
    let full: String = chunks.concat();
    fake.set_stream_chunks(chunks);
    fake.set_chunk_pause(Some(Duration::from_millis(100)));
    let db = test_db(db).await;
    let env = [("LOREWIRE_LLM_CONCURRENCY", "1"), ("LOREWIRE_RETRY_BASE_MS", "50")];
    let mut server = Server::start_with(&db.url, &fake, &env).await;
    let (_ws, token) = server.player().await;
    let mut run_ids = Vec::new();
    for input in ["the streaming one", "the waiting one"] {
        let body = json!({"project_id": "p1", "action": "WRITE", "input": input});
        let (status, body) = post_json(&server.url("/api/generate"), &token, &body).await;
        assert_eq!(status, 202, "{body}");
        run_ids.push(body["run_id"].as_str().unwrap().to_owned());
    }
    eventually("the first run to stream", || async { (fake.request_count() == 1).then_some(()) }).await;
    actix_web::rt::time::sleep(Duration::from_millis(400)).await;
    let (_, run) = get_json(&server.url(&format!("/api/runs/{}", run_ids[0])), Some(&token)).await;
    assert_eq!(run["status"], "running", "{run}");
    server.kill9();

    fake.set_chunk_pause(None);
    let server = Server::start_with(&db.url, &fake, &env).await;
    for (run_id, attempts) in run_ids.iter().zip([2, 1]) {
        let url = server.url(&format!("/api/runs/{run_id}"));
        let run: Value = eventually("the run to finish after the restart", || {
            let url = url.clone();
            let token = token.clone();
            async move {
                let (_, run) = get_json(&url, Some(&token)).await;
                (run["status"] == "done").then_some(run)
            }
        })
        .await;
        assert_eq!(run["text"], full.as_str(), "{run}");
        assert_eq!(run["attempts"], attempts, "{run}");
    }
    // The interrupted run was called again once, the waiting one once: nothing ran twice.
    assert_eq!(fake.request_count(), 3, "{}", server.output());
    let (_, list) = get_json(&server.url("/admin/api/runs"), Some(crate::common::ADMIN_TOKEN)).await;
    assert_eq!(list["runs"].as_array().unwrap().len(), 2, "{list}");
}

both_backends!(kill_9_while_streaming_then_restart);

/// Two processes on one PostgreSQL database: the session waiting on a run aborts it on process
/// A while process B streams it. B stops its upstream stream and ends the run aborted, charged
/// for what it received.
#[actix_web::test]
async fn abort_on_one_process_stops_the_stream_on_another() {
    abort_on_one_process_stops_the_stream_on_another_with(&[]).await;
}

/// The same with `extra` settings on both processes (e.g. a Redis backplane).
pub(crate) async fn abort_on_one_process_stops_the_stream_on_another_with(extra: &[(&str, &str)]) {
    let fake = FakeLlm::start();
    let chunks: Vec<String> = (0..60).map(|i| format!("word{i:02} ")).collect();
    fake.set_stream_chunks(chunks);
    fake.set_chunk_pause(Some(Duration::from_millis(100)));
    let db = test_db(Db::Postgres).await;
    let mut env = vec![("LOREWIRE_LLM_CONCURRENCY", "1"), ("LOREWIRE_LLM_TIMEOUT_SECS", "30")];
    env.extend_from_slice(extra);
    // A's only slot hangs on a REST run, so the WebSocket run can only stream on B.
    fake.push_modes([Mode::Hang]);
    let a = Server::start_with(&db.url, &fake, &env).await;
    let (mut ws, token) = a.player().await;
    let body = json!({"project_id": "p1", "action": "WRITE", "input": "the run that hangs"});
    let (status, body) = post_json(&a.url("/api/generate"), &token, &body).await;
    assert_eq!(status, 202, "{body}");
    eventually("A's slot to be taken", || async { (fake.request_count() == 1).then_some(()) }).await;
    let b = Server::start_with(&db.url, &fake, &env).await;

    ws.send(json!({"type": "generate:start", "project_id": "p1", "action": "DESCRIBE", "input": "on B", "ref": 1}))
        .await;
    let run_id = ws.recv_type("run:queued").await["run_id"].as_str().unwrap().to_owned();
    eventually("B to stream the run", || async { (fake.request_count() == 2).then_some(()) }).await;
    actix_web::rt::time::sleep(Duration::from_millis(500)).await;
    let run_url = a.url(&format!("/api/runs/{run_id}"));
    let (_, run) = get_json(&run_url, Some(&token)).await;
    assert_eq!(run["status"], "running", "{run}");

    let aborted_at = std::time::Instant::now();
    ws.send(json!({"type": "generate:abort", "run_id": run_id, "ref": "stop"})).await;
    assert_eq!(ws.recv_type("run:error").await["code"], "aborted");
    let run: Value = eventually("the run to end", || {
        let (url, token) = (run_url.clone(), token.clone());
        async move {
            let (_, run) = get_json(&url, Some(&token)).await;
            (run["status"] != "running").then_some(run)
        }
    })
    .await;
    assert_eq!(run["status"], "aborted", "{run}\nA:\n{}\nB:\n{}", a.output(), b.output());
    // The whole stream takes 6 s: B stopped it early, and told the fake so by going away.
    assert!(aborted_at.elapsed() < Duration::from_secs(3), "{:?}", aborted_at.elapsed());
    eventually("the fake to see the stream closed", || async { (fake.streams_cut_by_client() == 1).then_some(()) })
        .await;
    let output = run["usage"]["output_tokens"].as_u64().unwrap();
    assert!(output > 0 && output < 60 * 8 / 4, "charged for the text received: {run}");
    assert!(run["cost_usd"].as_f64().unwrap() > 0.0, "{run}");
    assert_eq!(fake.request_count(), 2, "the run was not called again");
}
