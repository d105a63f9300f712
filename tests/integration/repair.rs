//! Repair before fallback, on all three wire formats: an answer cut off or a field over its cap
//! is salvaged; a refused answer is asked for once more, telling the model what was wrong; only
//! then the fallback.

use lorewire::llm::providers::Provider;
use serde_json::{json, Value};

use crate::common::{http, spawn_with, Db, Mode, Setup, TestApp};

const PROVIDERS: [Provider; 3] = [Provider::Anthropic, Provider::OpenAi, Provider::OpenAiChat];

async fn app_for(provider: Provider) -> TestApp {
    // Two failures open the circuit: a pair of calls must count as one.
    spawn_with(Setup { provider, ..Setup::new(Db::Sqlite) }, |c| c.circuit_failures = 2).await
}

/// The user message of a recorded request, whatever the wire format.
fn user_message(provider: Provider, body: &Value) -> String {
    let text = match provider {
        Provider::Anthropic => &body["messages"][0]["content"],
        Provider::OpenAi => &body["input"],
        Provider::OpenAiChat => &body["messages"][1]["content"],
    };
    text.as_str().unwrap_or_else(|| panic!("no user message in {body}")).to_owned()
}

async fn metrics(app: &TestApp) -> String {
    let body = http().get(app.url("/metrics")).send().await.unwrap().body().await.unwrap();
    String::from_utf8(body.to_vec()).unwrap()
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in {text}"))
}

fn repaired(text: &str, how: &str) -> f64 {
    metric(text, &format!("lorewire_answers_repaired_total{{how=\"{how}\",what=\"quest\"}}"))
}

async fn quest(app: &TestApp, token: &str, subject_id: u64) -> Value {
    app.content_final(token, "quest", subject_id, json!({})).await
}

/// A quest answer with these fields, as JSON text.
fn answer(flavor: &str, hook: &str) -> String {
    json!({"flavorText": flavor, "hookText": hook}).to_string()
}

#[actix_web::test]
async fn nearly_right_answers_are_salvaged_without_another_call() {
    for provider in PROVIDERS {
        let app = app_for(provider).await;
        let token = app.player_token().await;

        // Cut off by the output-token cap inside the last field.
        let cut = "{\"flavorText\": \"Ash falls on the well.\", \"hookText\": \"Drink, and remember. Or do not drin";
        app.fake.push_modes([Mode::Text(cut.into())]);
        let content = quest(&app, &token, 1).await;
        assert_eq!(content["status"], "ready", "{provider:?}: {content}");
        assert_eq!(content["reason"], Value::Null);
        assert_eq!(content["fields"]["hookText"], "Drink, and remember.");
        assert_eq!(app.fake.request_count(), 1, "{provider:?}");

        // A field 4 characters over its cap of 300.
        let first = format!("Go. {}.", "a".repeat(200));
        let hook = format!("{first} {}", "b".repeat(304 - first.len() - 1));
        assert_eq!(hook.chars().count(), 304);
        app.fake.push_modes([Mode::Text(answer("Ash falls on the well.", &hook))]);
        let content = quest(&app, &token, 2).await;
        assert_eq!(content["status"], "ready", "{provider:?}: {content}");
        assert_eq!(content["fields"]["hookText"], first);
        assert_eq!(app.fake.request_count(), 2, "{provider:?}: salvaged without asking again");

        let text = metrics(&app).await;
        assert_eq!(repaired(&text, "salvaged"), 2.0, "{provider:?}");
        assert_eq!(repaired(&text, "reasked"), 0.0, "{provider:?}");
        assert_eq!(metric(&text, "lorewire_upstream_calls_total{outcome=\"ok\"}"), 2.0);
    }
}

#[actix_web::test]
async fn a_refused_answer_is_asked_for_again_with_what_was_wrong() {
    for provider in PROVIDERS {
        let app = app_for(provider).await;
        let token = app.player_token().await;

        // A missing field: asked again, the second answer (the fake's own) is valid.
        app.fake.push_modes([Mode::Text(json!({"flavorText": "Ash falls."}).to_string())]);
        let content = quest(&app, &token, 1).await;
        assert_eq!(content["status"], "ready", "{provider:?}: {content}");
        assert_eq!(content["reason"], Value::Null);
        let requests = app.fake.requests();
        assert_eq!(requests.len(), 2, "{provider:?}");
        let first = user_message(provider, &requests[0].body);
        let second = user_message(provider, &requests[1].body);
        assert!(!first.contains("refused"), "{first}");
        assert!(second.starts_with(&first), "the re-ask repeats the request: {second}");
        assert!(second.contains("missing field `hookText`"), "{provider:?}: {second}");

        // Garbage once, then valid.
        app.fake.push_modes([Mode::NotJsonText]);
        let content = quest(&app, &token, 2).await;
        assert_eq!(content["status"], "ready", "{provider:?}: {content}");
        assert!(user_message(provider, &app.fake.requests()[3].body).contains("is not JSON"));

        // Cut off inside the first field: nothing to salvage, so asked again.
        app.fake.push_modes([Mode::Text("{\"flavorText\": \"Ash falls on the well and".into())]);
        let content = quest(&app, &token, 3).await;
        assert_eq!(content["status"], "ready", "{provider:?}: {content}");
        assert_eq!(app.fake.request_count(), 6, "{provider:?}");

        let text = metrics(&app).await;
        assert_eq!(repaired(&text, "reasked"), 3.0, "{provider:?}");
        assert_eq!(metric(&text, "lorewire_upstream_calls_total{outcome=\"ok\"}"), 3.0);
        assert_eq!(metric(&text, "lorewire_upstream_calls_total{outcome=\"invalid_json\"}"), 2.0);
        assert_eq!(metric(&text, "lorewire_upstream_calls_total{outcome=\"invalid_response\"}"), 1.0);
        let (_, llm) = app.admin_get("/admin/api/llm").await;
        assert_eq!(llm["circuit"]["failures"], 0, "{provider:?}: a repaired answer is a success: {llm}");
    }
}

#[actix_web::test]
async fn garbage_twice_falls_back_after_two_calls() {
    for provider in PROVIDERS {
        let app = app_for(provider).await;
        let token = app.player_token().await;
        app.fake.push_modes([Mode::NotJsonText, Mode::NotJsonText]);
        let content = quest(&app, &token, 1).await;
        assert_eq!(content["status"], "fallback", "{provider:?}: {content}");
        assert_eq!(content["reason"], "invalid_json");
        assert_eq!(app.fake.request_count(), 2, "{provider:?}: one re-ask, no more");

        // Over its cap with no sentence end to cut at, twice: refused, never stored cut.
        let over = answer("Ash falls.", &"b".repeat(301));
        app.fake.push_modes([Mode::Text(over.clone()), Mode::Text(over)]);
        let content = quest(&app, &token, 2).await;
        assert_eq!(content["status"], "fallback", "{provider:?}: {content}");
        assert_eq!(content["reason"], "invalid_response");
        assert_eq!(app.fake.request_count(), 4);

        let text = metrics(&app).await;
        assert_eq!(repaired(&text, "reasked") + repaired(&text, "salvaged"), 0.0);
        assert_eq!(metric(&text, "lorewire_upstream_calls_total{outcome=\"invalid_json\"}"), 2.0);
        // Invalid after the re-ask is each item's own failure: the provider answered, so the
        // circuit counts nothing (two failures would have opened it).
        let (_, llm) = app.admin_get("/admin/api/llm").await;
        assert_eq!(llm["circuit"]["state"], "closed", "{provider:?}: {llm}");
        assert_eq!(llm["circuit"]["failures"], 0, "{provider:?}: {llm}");
    }
}

#[actix_web::test]
async fn compatible_servers_get_the_caps_in_the_schema() {
    for provider in [Provider::OpenAi, Provider::OpenAiChat] {
        let app = app_for(provider).await;
        let token = app.player_token().await;
        quest(&app, &token, 1).await;
        let body = &app.fake.requests()[0].body;
        let schema = match provider {
            Provider::OpenAi => &body["text"]["format"]["schema"],
            _ => &body["response_format"]["json_schema"]["schema"],
        };
        assert_eq!(schema["properties"]["hookText"]["maxLength"], 300, "{provider:?}: {schema}");
        assert_eq!(schema["properties"]["flavorText"]["maxLength"], 600, "{provider:?}: {schema}");
        let asked = match provider {
            Provider::OpenAi => body["max_output_tokens"].as_u64(),
            _ => body["max_tokens"].as_u64(),
        };
        assert!(asked.unwrap() >= 900, "{provider:?}: a longest valid answer fits: {body}");
    }
}
