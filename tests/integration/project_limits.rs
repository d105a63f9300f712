//! A project's per-day limits (PROTOCOL §5): tokens and USD per UTC day beside its budget,
//! reserved with the player's and the studio's in one conditional UPDATE, so concurrent runs
//! never take the project's day past its limit; the first level that refuses is named
//! (`project`); limits change at run time through `PUT /admin/api/projects/{id}/limits`.

use futures_util::future::join_all;
use lorewire::domain::runs::{prompt_token_bound, Action};
use serde_json::{json, Value};

use crate::common::fake_llm::FakeUsage;
use crate::common::{post_json, spawn_with, Db, Setup, TestApp};

const LIMITS: &str = "/admin/api/projects/p1/limits";

/// Inputs of one length: every run reserves the same bound.
fn input(i: usize) -> String {
    format!("run {i:02}")
}

async fn generate(app: &TestApp, token: &str, project: &str, input: &str) -> (u16, Value) {
    let body = json!({"project_id": project, "action": "WRITE", "input": input});
    post_json(&app.url("/api/generate"), token, &body).await
}

/// 40 concurrent REST runs under a project's daily token limit that fits exactly 5, each run
/// reporting exactly its bound (so no settlement frees room): 5 run, 35 are refused with
/// `level: project` and store nothing, and the project's day ends exactly at 5 bounds. Another
/// project is not held back; lifting the limit at run time lets the next run through; a USD
/// limit refuses what does not fit under it.
async fn a_projects_daily_limit_is_exact_under_concurrent_runs(db: Db) {
    let app = spawn_with(Setup::new(db), |_| {}).await;
    let action = Action::Write;
    let prompt = prompt_token_bound(action.system_prompt(), &action.user_message(&input(0))) as i64;
    let output = i64::from(app.config.max_output_tokens);
    let bound = prompt + output;
    app.fake.set_usage(Some(FakeUsage { input: prompt as u64, output: output as u64, ..FakeUsage::default() }));
    let (mut ws, ack) = app.player("Ada").await;
    let token = ack["token"].as_str().unwrap().to_owned();

    for bad in [json!({}), json!({"daily_tokens": -1}), json!({"daily_usd": "ten"}), json!([1])] {
        let (status, body) = app.admin_put(LIMITS, bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    assert_eq!(app.admin_put("/admin/api/projects/no%20spaces/limits", json!({"daily_tokens": 1})).await.0, 400);
    let (status, limits) = app.admin_put(LIMITS, json!({"daily_tokens": 5 * bound})).await;
    assert_eq!(
        (status, limits["daily_tokens"].as_i64(), limits["daily_usd"].clone()),
        (200, Some(5 * bound), Value::Null)
    );

    let answers = join_all((0..40).map(|i| {
        let (app, token) = (&app, token.clone());
        async move { generate(app, &token, "p1", &input(i)).await }
    }))
    .await;
    let accepted: Vec<&str> =
        answers.iter().filter(|(s, _)| *s == 202).map(|(_, b)| b["run_id"].as_str().unwrap()).collect();
    assert_eq!(accepted.len(), 5, "{answers:?}");
    assert!(
        answers
            .iter()
            .all(|(s, b)| *s == 202 || (*s == 402 && b["level"] == "project" && b["error"] == "budget_exceeded")),
        "{answers:?}"
    );
    let (_, listed) = app.admin_get("/admin/api/runs?limit=100").await;
    assert_eq!(listed["runs"].as_array().unwrap().len(), 5, "nothing refused was stored");
    ws.send(json!({"type": "generate:start", "project_id": "p1", "action": "WRITE", "input": input(50), "ref": 3}))
        .await;
    let refused = ws.recv_type("error:budget_exceeded").await;
    assert_eq!((refused["ref"].clone(), refused["level"].clone()), (json!(3), json!("project")), "{refused}");
    for run_id in &accepted {
        assert_eq!(app.final_run(&token, run_id).await["status"], "done");
    }
    let (_, limits) = app.admin_get(LIMITS).await;
    let today = &limits["today"];
    assert_eq!((today["tokens"].as_i64(), today["reserved_tokens"].as_i64()), (Some(5 * bound), Some(0)), "{limits}");

    // Another project has its own day; the limit lifted at run time applies at once.
    assert_eq!(generate(&app, &token, "p2", &input(60)).await.0, 202);
    let (_, limits) = app.admin_put(LIMITS, json!({"daily_tokens": null})).await;
    assert_eq!(limits["daily_tokens"], Value::Null, "{limits}");
    assert_eq!(generate(&app, &token, "p1", &input(61)).await.0, 202);

    // A USD limit the run's worst case does not fit under: refused at the project's level.
    let (status, _) = app.admin_put(LIMITS, json!({"daily_usd": 0.000001})).await;
    assert_eq!(status, 200);
    let (status, refused) = generate(&app, &token, "p1", &input(62)).await;
    assert_eq!((status, refused["level"].as_str()), (402, Some("project")), "{refused}");
    assert!(refused["message"].as_str().unwrap().contains("project"), "{refused}");
}

both_backends!(a_projects_daily_limit_is_exact_under_concurrent_runs);
