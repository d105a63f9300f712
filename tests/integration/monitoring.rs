//! The files for studios that run Prometheus (README "Monitoring"): `ops/grafana/lorewire-dashboard.json`
//! and `ops/prometheus/lorewire-alerts.yml` parse, cover the dashboard's groups and the alerts
//! the operators asked for, and name only metrics (and label values) that a freshly started
//! server's `/metrics` already shows.

use std::collections::BTreeSet;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::common::{http, spawn_app, Db};

#[derive(Debug, Deserialize)]
struct RuleFile {
    groups: Vec<RuleGroup>,
}

#[derive(Debug, Deserialize)]
struct RuleGroup {
    name: String,
    rules: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    alert: String,
    expr: String,
    #[serde(rename = "for")]
    for_: Option<String>,
    labels: std::collections::BTreeMap<String, String>,
    annotations: std::collections::BTreeMap<String, String>,
}

fn read(path: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `expr` of the dashboard's queries, wherever it is nested.
fn exprs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", Value::String(expr)) => out.push(expr.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

/// A metric named in a query, with the `label="value"` matchers written right after it.
#[derive(Debug)]
struct Selector {
    metric: String,
    matchers: Vec<(String, String)>,
}

fn selectors(expr: &str) -> Vec<Selector> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("lorewire_") {
        let tail = &rest[at..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        let metric = tail[..end].to_owned();
        let mut matchers = Vec::new();
        let after = &tail[end..];
        if let Some(inner) = after.strip_prefix('{').and_then(|a| a.split_once('}')).map(|(inner, _)| inner) {
            for pair in inner.split(',').filter(|p| !p.trim().is_empty()) {
                let (name, value) = pair.split_once('=').unwrap_or_else(|| panic!("a matcher `{pair}` in {expr}"));
                assert!(!name.ends_with('!') && !value.starts_with('~'), "only = matchers are checked: {expr}");
                matchers.push((name.trim().to_owned(), value.trim().trim_matches('"').to_owned()));
            }
        }
        out.push(Selector { metric, matchers });
        rest = &tail[end..];
    }
    out
}

/// The sample lines of a Prometheus text exposition: (metric name, the part in braces).
fn samples(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let name_end = l.find(['{', ' ']).unwrap_or(l.len());
            let labels = l[name_end..].strip_prefix('{').and_then(|r| r.split_once('}')).map(|(x, _)| x);
            (l[..name_end].to_owned(), labels.unwrap_or("").to_owned())
        })
        .collect()
}

#[actix_web::test]
async fn grafana_and_alert_rules_name_only_metrics_a_fresh_server_shows() {
    let dashboard: Value =
        serde_json::from_str(&read("ops/grafana/lorewire-dashboard.json")).expect("dashboard is JSON");
    let rules: RuleFile = serde_norway::from_str(&read("ops/prometheus/lorewire-alerts.yml")).expect("rules are YAML");

    // The dashboard: the same groups as the admin page's charts, each panel with a query.
    let panels = dashboard["panels"].as_array().expect("panels");
    let titles: BTreeSet<&str> = panels.iter().map(|p| p["title"].as_str().expect("a title")).collect();
    for title in [
        "Content finished",
        "Upstream calls",
        "Upstream latency",
        "Queue depth",
        "Players online",
        "Lobby messages",
        "Spend",
        "Circuit breaker",
    ] {
        assert!(titles.contains(title), "no panel {title}: {titles:?}");
    }
    for panel in panels {
        let mut found = Vec::new();
        exprs(panel, &mut found);
        assert!(!found.is_empty(), "panel {} has no query", panel["title"]);
    }

    // The alert rules the operators asked for.
    assert_eq!(rules.groups.len(), 1);
    assert_eq!(rules.groups[0].name, "lorewire");
    let alerts: BTreeSet<&str> = rules.groups[0].rules.iter().map(|r| r.alert.as_str()).collect();
    let want = [
        "LorewireCircuitOpen",
        "LorewireQueueDepthHigh",
        "LorewireFallbackShareHigh",
        "LorewireSlowConsumerDisconnects",
        "LorewireBackplaneDown",
    ];
    assert_eq!(alerts, want.into_iter().collect(), "alerts");
    for rule in &rules.groups[0].rules {
        assert!(rule.labels.contains_key("severity"), "{} has a severity", rule.alert);
        assert!(rule.annotations.contains_key("summary"), "{} has a summary", rule.alert);
        if let Some(wait) = &rule.for_ {
            assert!(wait.ends_with('m'), "{}: `for` in minutes: {wait}", rule.alert);
        }
    }

    let mut all = Vec::new();
    exprs(&dashboard, &mut all);
    all.extend(rules.groups.iter().flat_map(|g| g.rules.iter().map(|r| r.expr.clone())));

    // A server that has done nothing yet: every series the files need is there from the start.
    let app = spawn_app(Db::Sqlite).await;
    let mut resp = http().get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let text = String::from_utf8(resp.body().limit(1 << 22).await.unwrap().to_vec()).unwrap();
    let exposed = samples(&text);
    let mut checked = 0;
    for expr in &all {
        let found = selectors(expr);
        assert!(!found.is_empty(), "no lorewire metric in {expr}");
        for Selector { metric, matchers } in found {
            let series: Vec<&String> = exposed.iter().filter(|(name, _)| *name == metric).map(|(_, l)| l).collect();
            assert!(!series.is_empty(), "`{metric}` (in {expr}) is not on /metrics:\n{text}");
            for (label, value) in matchers {
                let pair = format!("{label}=\"{value}\"");
                assert!(series.iter().any(|l| l.contains(&pair)), "no `{metric}` with {pair} (in {expr}) on /metrics");
            }
            checked += 1;
        }
    }
    assert!(checked >= all.len(), "every query names a metric");
}

#[test]
fn selectors_read_names_and_matchers() {
    let found = selectors(
        r#"sum(rate(lorewire_content_finished_total{status="fallback"}[10m])) / sum(rate(lorewire_content_finished_total[10m]))"#,
    );
    assert_eq!(found.len(), 2);
    assert_eq!(found[0].metric, "lorewire_content_finished_total");
    assert_eq!(found[0].matchers, vec![("status".to_owned(), "fallback".to_owned())]);
    assert!(found[1].matchers.is_empty());
    let lines = samples("# HELP x y\nlorewire_a_total{outcome=\"ok\"} 0\nlorewire_b 1\n");
    assert_eq!(lines, vec![("lorewire_a_total".into(), "outcome=\"ok\"".into()), ("lorewire_b".into(), String::new())]);
}
