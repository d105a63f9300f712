//! Generation runs and the real binary: kill -9 while a run streams and another waits, then
//! restart: both finish, each exactly once.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{eventually, get_json, post_json, Db, FakeLlm};
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
