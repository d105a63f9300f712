//! What browsers expect of the pages and assets over HTTP: framing refused, a favicon, the
//! client's TypeScript types, and `HEAD` answering like `GET` without a body.

use crate::common::{http, spawn_app, Db};

const PAGES: [&str; 2] = ["/", "/admin"];
const ASSETS: [&str; 7] = [
    "/favicon.ico",
    "/static/favicon.svg",
    "/static/lorewire.js",
    "/static/lorewire.d.ts",
    "/static/app.js",
    "/static/admin.js",
    "/static/style.css",
];

/// Status, the headers a browser acts on, and the body.
async fn fetch(method: &str, url: &str) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let client = http();
    let request = match method {
        "HEAD" => client.head(url),
        _ => client.get(url),
    };
    let mut resp = request.send().await.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let mut headers: Vec<(String, String)> = resp
        .headers()
        .iter()
        .filter(|(name, _)| !["date", "x-request-id"].contains(&name.as_str()))
        .map(|(name, value)| (name.to_string(), value.to_str().unwrap().to_owned()))
        .collect();
    headers.sort();
    let body = resp.body().limit(1 << 20).await.unwrap().to_vec();
    (resp.status().as_u16(), headers, body)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

#[actix_web::test]
async fn pages_refuse_framing_and_link_the_icon() {
    let app = spawn_app(Db::Sqlite).await;
    for page in PAGES {
        let (status, headers, body) = fetch("GET", &app.url(page)).await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(header(&headers, "x-frame-options"), Some("DENY"), "{page}: {headers:?}");
        let csp = header(&headers, "content-security-policy").unwrap_or_else(|| panic!("{page}: no CSP"));
        assert!(csp.contains("frame-ancestors 'none'"), "{page}: {csp}");
        assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"), "{page}: {csp}");
        let html = String::from_utf8(body).unwrap();
        assert!(html.contains(r#"<link rel="icon" href="/static/favicon.svg""#), "{page} links the icon");
        assert!(!html.contains("<script>") && !html.contains(" style=\""), "{page} has inline code");
    }
}

#[actix_web::test]
async fn favicon_and_client_types_are_served() {
    let app = spawn_app(Db::Sqlite).await;
    for path in ["/favicon.ico", "/static/favicon.svg"] {
        let (status, headers, body) = fetch("GET", &app.url(path)).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(header(&headers, "content-type"), Some("image/svg+xml"), "{path}");
        assert!(String::from_utf8(body).unwrap().starts_with("<svg"), "{path}");
    }
    let (status, headers, body) = fetch("GET", &app.url("/static/lorewire.d.ts")).await;
    assert_eq!(status, 200);
    assert!(header(&headers, "content-type").is_some_and(|t| t.starts_with("application/typescript")), "{headers:?}");
    let types = include_str!("../../static/lorewire.d.ts");
    assert_eq!(String::from_utf8(body).unwrap(), types, "the served types are the file's");
}

#[actix_web::test]
async fn head_answers_like_get_without_a_body() {
    let app = spawn_app(Db::Sqlite).await;
    for path in PAGES.iter().chain(ASSETS.iter()).chain(["/static/no-such.js"].iter()) {
        let url = app.url(path);
        let (get_status, get_headers, get_body) = fetch("GET", &url).await;
        let (head_status, head_headers, head_body) = fetch("HEAD", &url).await;
        assert_eq!(head_status, get_status, "{path}");
        assert_eq!(head_headers, get_headers, "{path}: the same headers");
        assert!(head_body.is_empty(), "{path}: HEAD sent a body");
        assert!(!get_body.is_empty(), "{path}: GET has a body");
        if get_status == 200 {
            assert_eq!(header(&head_headers, "content-length"), Some(get_body.len().to_string().as_str()), "{path}");
        }
    }
}
