//! The OpenAPI document (`GET /api/openapi.json`): it describes every route `http::endpoints`
//! registers (and nothing else), routes are registered nowhere but there, it is served without a
//! token, and a schema-driven fuzzer (schemathesis) run from it against live servers with both
//! tokens gets no 5xx and only the statuses and bodies the document promises.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::{json, Value};

use crate::common::*;

/// Routes that are not part of the REST API, and why.
const NOT_REST: &[(&str, &str)] = &[
    ("/static/{name}", "the pages' script and style files, not a JSON API"),
    ("/favicon.ico", "the pages' icon, for browsers that ask for it by this name"),
    ("/ws", "the WebSocket upgrade (README, PROTOCOL §2), registered by app.rs beside http::routes"),
];

/// The schemathesis release the suite is written against (its CLI changes between releases).
const SCHEMATHESIS: &str = "4.32.5";

fn methods() -> [&'static str; 8] {
    ["get", "put", "post", "delete", "patch", "head", "options", "trace"]
}

/// `(method, path)` of every operation in a document.
fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let paths = doc["paths"].as_object().expect("`paths` is an object");
    paths
        .iter()
        .flat_map(|(path, item)| {
            methods().into_iter().filter(|m| item.get(*m).is_some()).map(|m| (m.to_owned(), path.clone()))
        })
        .collect()
}

/// `(method, path)` of every registered REST route.
fn registered_rest() -> BTreeSet<(String, String)> {
    lorewire::http::endpoints()
        .iter()
        .filter(|e| !NOT_REST.iter().any(|(path, _)| *path == e.path))
        .map(|e| (e.method.as_str().to_ascii_lowercase(), e.path.to_owned()))
        .collect()
}

/// Which bearer scheme a path needs (PROTOCOL §3), or none.
fn scheme_of(path: &str) -> Option<&'static str> {
    if path.starts_with("/admin/api/") {
        Some(lorewire::http::openapi::ADMIN_TOKEN)
    } else if path.starts_with("/api/") && path != "/api/openapi.json" {
        Some(lorewire::http::openapi::PLAYER_TOKEN)
    } else {
        None
    }
}

/// Everything wrong with a document, given the routes that are registered.
fn problems(doc: &Value, registered: &BTreeSet<(String, String)>) -> Vec<String> {
    let mut problems = Vec::new();
    if !doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.1.")) {
        problems.push(format!("`openapi` is {}, not 3.1.x", doc["openapi"]));
    }
    let documented = operations(doc);
    for (method, path) in registered.difference(&documented) {
        problems.push(format!(
            "{} {path} is registered but not described: annotate its handler with #[utoipa::path] and list it in src/http/openapi.rs",
            method.to_uppercase()
        ));
    }
    for (method, path) in documented.difference(registered) {
        problems.push(format!("{} {path} is described but not registered", method.to_uppercase()));
    }
    for (path, _) in NOT_REST {
        if doc["paths"].get(*path).is_some() {
            problems.push(format!("{path} is not REST and must not be described"));
        }
    }
    for scheme in [lorewire::http::openapi::PLAYER_TOKEN, lorewire::http::openapi::ADMIN_TOKEN] {
        let s = &doc["components"]["securitySchemes"][scheme];
        if s["type"] != "http" || s["scheme"] != "bearer" {
            problems.push(format!("security scheme `{scheme}` is not an HTTP bearer scheme: {s}"));
        }
    }
    let error = &doc["components"]["schemas"]["Error"];
    if error["required"] != serde_json::json!(["error", "message"]) {
        problems.push(format!("the Error schema does not require `error` and `message`: {error}"));
    }
    for (method, path) in &documented {
        let op = &doc["paths"][path][method];
        let names: Vec<&str> = op["security"]
            .as_array()
            .map(|list| list.iter().filter_map(|r| r.as_object()).flat_map(|r| r.keys()).map(String::as_str).collect())
            .unwrap_or_default();
        match scheme_of(path) {
            Some(scheme) => {
                if names != [scheme] {
                    problems.push(format!("{method} {path} needs security `{scheme}`, has {names:?}"));
                }
                if op["responses"].get("401").is_none() {
                    problems.push(format!("{method} {path} needs a token but describes no 401"));
                }
            }
            None if !names.is_empty() => problems.push(format!("{method} {path} needs no token, has {names:?}")),
            None => {}
        }
        let responses = op["responses"].as_object().cloned().unwrap_or_default();
        for (status, response) in responses.iter().filter(|(s, _)| !s.starts_with('2')) {
            if response["content"]["application/json"]["schema"]["$ref"] != "#/components/schemas/Error" {
                problems.push(format!("{method} {path} answers {status} without the Error shape"));
            }
        }
    }
    problems
}

#[test]
fn every_registered_route_is_described() {
    let doc: Value = serde_json::from_str(lorewire::http::openapi::document_json()).expect("the document is JSON");
    let problems = problems(&doc, &registered_rest());
    assert!(problems.is_empty(), "the OpenAPI document and the routes disagree:\n{}", problems.join("\n"));
}

#[test]
fn an_undescribed_route_is_caught() {
    let doc: Value = serde_json::from_str(lorewire::http::openapi::document_json()).unwrap();
    let mut registered = registered_rest();
    registered.insert(("get".into(), "/admin/api/undescribed".into()));
    let problems = problems(&doc, &registered);
    assert!(
        problems.iter().any(|p| p.contains("GET /admin/api/undescribed is registered but not described")),
        "{problems:?}"
    );
}

/// Lines that register a route, and the ones allowed to: `http::routes` registering the table,
/// its 404 for every other path, and `/ws`.
#[test]
fn routes_are_registered_only_from_the_table() {
    const REGISTERS: &[&str] = &[
        ".route(",
        "web::resource(",
        "web::scope(",
        "default_service(",
        "web::get()",
        "web::post()",
        "web::put()",
        "web::delete()",
        "web::patch()",
        "web::head()",
        "web::route()",
        "web::method(",
        "web::to(",
        "#[get(",
        "#[post(",
        "#[put(",
        "#[delete(",
        "#[patch(",
        "#[route(",
        "#[routes]",
    ];
    const ALLOWED: &[(&str, &str, &str)] = &[
        ("http/mod.rs", "web::method(method.clone()).to(handler)", "builds an entry of the table"),
        (
            "http/mod.rs",
            "web::route().guard(get_or_head).to(handler)",
            "builds a page entry of the table (GET and HEAD)",
        ),
        ("http/mod.rs", "cfg.route(endpoint.path, endpoint.route)", "registers the table"),
        ("http/mod.rs", "cfg.default_service(web::to(", "the JSON 404 of every other path"),
        ("app.rs", ".route(, web::get().to(crate::ws::upgrade))", "GET /ws, not REST (see NOT_REST)"),
    ];
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    super::layers::rust_files(&src, &mut files);
    let mut stray = Vec::new();
    let mut seen = BTreeSet::new();
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
        let code = super::layers::code_of(&std::fs::read_to_string(file).unwrap());
        // A `.service(...)` with an argument mounts something; `.service()` builds a connector.
        let mounts = |line: &str| line.match_indices(".service(").any(|(i, m)| !line[i + m.len()..].starts_with(')'));
        for (n, line) in code.lines().enumerate() {
            if !(REGISTERS.iter().any(|p| line.contains(p)) || mounts(line)) {
                continue;
            }
            match ALLOWED.iter().position(|(f, text, _)| rel == *f && line.contains(text)) {
                Some(i) => {
                    seen.insert(i);
                }
                None => stray.push(format!("src/{rel}:{}: {}", n + 1, line.trim())),
            }
        }
    }
    assert!(
        stray.is_empty(),
        "routes registered outside the table: add them to http::endpoints (and describe them in openapi.rs):\n{}",
        stray.join("\n")
    );
    let unused: Vec<_> = ALLOWED.iter().enumerate().filter(|(i, _)| !seen.contains(i)).map(|(_, a)| a).collect();
    assert!(unused.is_empty(), "allowed registrations not found any more (the check may be blind): {unused:?}");
}

#[actix_web::test]
async fn the_document_is_served_without_a_token() {
    let app = spawn_app(Db::Sqlite).await;
    let mut resp = http().get(app.url("/api/openapi.json")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let content_type = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
    assert!(content_type.starts_with("application/json"), "{content_type}");
    let doc: Value = resp.json().limit(1 << 22).await.expect("the document parses as JSON");
    let problems = problems(&doc, &registered_rest());
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // Each path of PROTOCOL §3 by name, so a route dropped from the table and the document together shows.
    for path in [
        "/health",
        "/ready",
        "/metrics",
        "/api/openapi.json",
        "/",
        "/admin",
        "/api/content",
        "/api/content/{kind}/{subject_id}",
        "/api/generate",
        "/api/runs/{run_id}",
        "/api/runs/{run_id}/events",
        "/admin/api/llm",
        "/admin/api/llm/circuit/reset",
        "/admin/api/runs",
        "/admin/api/costs",
        "/admin/api/budgets/{project_id}",
        "/admin/api/dead-letters",
        "/admin/api/dead-letters/{run_id}/retry",
        "/admin/api/prices",
        "/admin/api/prices/{model}",
        "/admin/api/users",
        "/admin/api/metrics/summary",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} is missing");
    }
    // The admin lists take an empty filter as its default (as a form sends it), and say so.
    for (path, name) in [("/admin/api/runs", "status"), ("/admin/api/runs", "limit"), ("/admin/api/costs", "limit")] {
        let params = doc["paths"][path]["get"]["parameters"].as_array().unwrap();
        let param = params.iter().find(|p| p["name"] == name).unwrap_or_else(|| panic!("{path} has no {name}"));
        let schema = &param["schema"];
        let admits_empty = schema["enum"].as_array().is_some_and(|e| e.contains(&json!("")))
            || schema["anyOf"]
                .as_array()
                .is_some_and(|a| a.iter().any(|s| s["type"] == "string" && s["maxLength"] == 0));
        assert!(admits_empty, "{path} `{name}` does not admit an empty value: {schema}");
    }
    // The player routes still need their token.
    let (status, body) = get_json(&app.url("/api/runs/run_x"), None).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("unauthorized")));
}

/// Runs schemathesis against `app` on the operations whose path matches `paths` (a regex),
/// with `run_id` as every `run_id` parameter.
async fn fuzz(app: &TestApp, player_token: &str, run_id: &str, paths: (&str, &str)) {
    let dir = tempfile::tempdir().unwrap();
    // Each operation gets the token of the scheme the document names for it.
    let config = format!(
        "[auth.openapi.{}]\nbearer = \"{player_token}\"\n\n[auth.openapi.{}]\nbearer = \"{ADMIN_TOKEN}\"\n\n\
         [parameters]\nrun_id = \"{run_id}\"\n",
        lorewire::http::openapi::PLAYER_TOKEN,
        lorewire::http::openapi::ADMIN_TOKEN,
    );
    std::fs::write(dir.path().join("schemathesis.toml"), config).unwrap();
    let (filter, regex) = paths;
    // A few examples per operation keep the suite quick; LOREWIRE_FUZZ_EXAMPLES=500 searches harder.
    let examples = std::env::var("LOREWIRE_FUZZ_EXAMPLES").unwrap_or_else(|_| "15".into());
    let mut cmd = std::process::Command::new("st");
    cmd.current_dir(dir.path())
        .args(["--config-file", "schemathesis.toml", "--no-color", "run", &app.url("/api/openapi.json")])
        .args(["--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,ignored_auth,negative_data_rejection"])
        // Examples, boundary values and random data: nothing needs a host but the server.
        .args(["--phases", "examples,coverage,fuzzing", "--max-examples", &examples, "--request-timeout", "10"])
        .args(["--generation-database", "none", filter, regex]);
    // Blocking here would stall the server's actors, which run on this thread.
    let out = actix_web::rt::task::spawn_blocking(move || cmd.output()).await.unwrap().expect("st runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found problems ({filter} {regex}):\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("passed"), "schemathesis tested nothing:\n{stdout}");
}

/// Upstream calls the server has made, by `/metrics`.
async fn upstream_calls(app: &TestApp) -> f64 {
    let mut resp = http().get(app.url("/metrics")).send().await.unwrap();
    let text = String::from_utf8(resp.body().limit(1 << 22).await.unwrap().to_vec()).unwrap();
    text.lines()
        .filter(|l| l.starts_with("lorewire_upstream_calls_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Fails, saying how to install it, unless the schemathesis CLI of the pinned release is on PATH.
fn require_schemathesis() {
    let version = std::process::Command::new("st").arg("--version").output();
    let version = version.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    assert!(
        version.contains(SCHEMATHESIS),
        "schemathesis {SCHEMATHESIS} is needed (found: {:?}): pip install schemathesis=={SCHEMATHESIS}",
        version.trim()
    );
}

#[actix_web::test]
async fn the_fuzzer_finds_no_server_error_on_public_and_player_routes() {
    require_schemathesis();
    // Content and runs call the fake upstream on 127.0.0.1.
    let app = spawn_app(Db::Sqlite).await;
    let token = app.player_token().await;
    // A finished run, so the run routes answer 200 (and its events stream ends).
    let body = serde_json::json!({"project_id": "p1", "action": "WRITE", "input": "the ashen well"});
    let (status, accepted) = post_json(&app.url("/api/generate"), &token, &body).await;
    assert_eq!(status, 202, "{accepted}");
    let run_id = accepted["run_id"].as_str().unwrap().to_owned();
    assert_eq!(app.final_run(&token, &run_id).await["status"], "done");
    // The game server's content route calls upstream like the player's: fuzzed here, not with the admin routes.
    fuzz(&app, &token, &run_id, ("--exclude-path-regex", "^/admin/api/(?!content$)")).await;
}

#[actix_web::test]
async fn the_fuzzer_finds_no_server_error_on_admin_routes() {
    require_schemathesis();
    // A server of its own: the fuzzer may point the LLM settings at any URL, so no player ever
    // asks this one for content or a run, and nothing calls upstream.
    let app = spawn_app(Db::Sqlite).await;
    fuzz(&app, "no-player-token-here", "run_none", ("--include-path-regex", "^/admin/api/(?!content$)")).await;
    assert_eq!(upstream_calls(&app).await, 0.0, "the admin server called an upstream");
    let (status, runs) = app.admin_get("/admin/api/runs").await;
    assert_eq!((status, runs["runs"].as_array().map(Vec::len)), (200, Some(0)));
}
