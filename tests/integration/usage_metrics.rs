//! The usage limits on `/metrics`: what settlements charged at each level
//! (`lorewire_usage_spent_*_total{level}`) and what the limits refused
//! (`lorewire_usage_refused_total{level,reason}`), moving as players spend and are refused.

use lorewire::content::prompts;
use lorewire::content::{ContentKind, Context};
use lorewire::core::config::Config;
use lorewire::runs::Price;
use serde_json::json;

use crate::common::fake_llm::FakeUsage;
use crate::common::{eventually, get_json, http, post_json, spawn_with, Db, Setup, TestApp};

const PRICE: Price = Price { input: 2_000_000, output: 10_000_000, cache_read: 0, cache_write: 0 };

/// The value of one series on `/metrics` (`name{labels}` as the text format writes it).
async fn metric(app: &TestApp, series: &str) -> u64 {
    let mut resp = http().get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let text = String::from_utf8(resp.body().limit(1 << 22).await.unwrap().to_vec()).unwrap();
    let line = text.lines().find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '));
    let line = line.unwrap_or_else(|| panic!("no `{series}` on /metrics:\n{text}"));
    line[series.len()..].trim().parse().unwrap_or_else(|_| panic!("not a count: {line}"))
}

fn spent(what: &str, level: &str) -> String {
    format!("lorewire_usage_spent_{what}_total{{level=\"{level}\"}}")
}

fn refused(level: &str, reason: &str) -> String {
    format!("lorewire_usage_refused_total{{level=\"{level}\",reason=\"{reason}\"}}")
}

/// A player whose daily tokens fit one npc item: its settlement moves the player's and the
/// studio's spent tokens and micro-dollars by what the call reported; the next new item is
/// refused at the player's level (`over_limit`) and takes no start; over the start rate,
/// `start_rate`.
async fn settlements_and_refusals_move_the_usage_counters(db: Db) {
    let probe = Config::with_database("unused");
    let prompt = prompts::prompt(ContentKind::Npc, 10, &Context::default(), probe.max_output_tokens);
    let (prompt_tokens, output_tokens) = prompt.bound_with_reask();
    let app = spawn_with(Setup::new(db), |c| {
        c.usage.player_daily_tokens = Some(prompt_tokens + output_tokens);
        c.usage.player_llm_rate = "2/1m".parse().unwrap();
    })
    .await;
    app.set_price(&app.config.llm_model, &PRICE).await;
    app.fake.set_usage(Some(FakeUsage { input: 10, output: 5, ..FakeUsage::default() }));
    for level in ["player", "project", "studio"] {
        assert_eq!(metric(&app, &spent("tokens", level)).await, 0);
        assert_eq!(metric(&app, &refused(level, "over_limit")).await, 0);
    }

    let token = app.player_token().await;
    let (status, body) = post_json(&app.url("/api/content"), &token, &json!({"kind": "npc", "subject_id": 10})).await;
    assert_eq!(status, 202, "{body}");
    eventually("the item to be ready", || async {
        let (_, c) = get_json(&app.url("/api/content/npc/10"), Some(&token)).await;
        (c["status"] == "ready").then_some(())
    })
    .await;
    // 10 input tokens at $2/M and 5 output tokens at $10/M: 70 micro-dollars.
    eventually("the settlement to be counted", || async {
        (metric(&app, &spent("tokens", "studio")).await == 15).then_some(())
    })
    .await;
    assert_eq!(metric(&app, &spent("tokens", "player")).await, 15);
    assert_eq!(metric(&app, &spent("micros", "player")).await, 70);
    assert_eq!(metric(&app, &spent("micros", "studio")).await, 70);

    let (status, body) = post_json(&app.url("/api/content"), &token, &json!({"kind": "npc", "subject_id": 11})).await;
    assert_eq!((status, body["level"].as_str()), (402, Some("player")), "{body}");
    assert_eq!(metric(&app, &refused("player", "over_limit")).await, 1);
    assert_eq!(metric(&app, &refused("studio", "over_limit")).await, 0);
    assert_eq!(metric(&app, &spent("tokens", "player")).await, 15, "a refusal charges nothing");

    // A refused request took no start: with the limit lifted, the window's second start is
    // free, and the third is refused before any limit.
    let (status, body) = app.admin_put("/admin/api/limits", json!({"player_daily_tokens": null})).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = post_json(&app.url("/api/content"), &token, &json!({"kind": "npc", "subject_id": 12})).await;
    assert_eq!(status, 202, "{body}");
    let (status, body) = post_json(&app.url("/api/content"), &token, &json!({"kind": "npc", "subject_id": 13})).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(metric(&app, &refused("player", "start_rate")).await, 1);
    assert_eq!(metric(&app, &refused("player", "over_limit")).await, 1);
}

/// A run refused by its project's budget counts at the project's level; a run that ends counts
/// its cost there and at the player's and the studio's.
async fn runs_count_at_the_project_level(db: Db) {
    let app = spawn_with(Setup::new(db), |_| {}).await;
    app.set_price(&app.config.llm_model, &PRICE).await;
    app.fake.set_usage(Some(FakeUsage { input: 10, output: 5, ..FakeUsage::default() }));
    let (status, body) = app.admin_put("/admin/api/budgets/tiny", json!({"limit_usd": 0.000001})).await;
    assert_eq!(status, 200, "{body}");
    let token = app.player_token().await;
    let run = json!({"project_id": "tiny", "action": "DESCRIBE", "input": "a cursed bell"});
    let (status, body) = post_json(&app.url("/api/generate"), &token, &run).await;
    assert_eq!((status, body["level"].as_str()), (402, Some("project")), "{body}");
    assert_eq!(metric(&app, &refused("project", "over_limit")).await, 1);

    let run = json!({"project_id": "open", "action": "DESCRIBE", "input": "a cursed bell"});
    let (status, body) = post_json(&app.url("/api/generate"), &token, &run).await;
    assert_eq!(status, 202, "{body}");
    let done = app.final_run(&token, body["run_id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "done", "{done}");
    eventually("the run's settlement to be counted", || async {
        (metric(&app, &spent("micros", "project")).await == 70).then_some(())
    })
    .await;
    assert_eq!(metric(&app, &spent("tokens", "project")).await, 15);
    assert_eq!(metric(&app, &spent("micros", "player")).await, 70);
    assert_eq!(metric(&app, &spent("micros", "studio")).await, 70);
}

crate::both_backends!(settlements_and_refusals_move_the_usage_counters, runs_count_at_the_project_level);
