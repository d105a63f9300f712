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

/// The module specifiers (`from "./x.js"`, `import "./x.js"`) of a script or a .d.ts file.
fn specifiers(source: &str) -> Vec<String> {
    let mut out = Vec::new();
    for marker in ["from \"", "import \""] {
        for (at, _) in source.match_indices(marker) {
            let rest = &source[at + marker.len()..];
            out.push(rest[..rest.find('"').unwrap_or(0)].to_owned());
        }
    }
    out
}

/// A page's module scripts, and every file a served module or type file imports, are served:
/// a browser (or a TypeScript user who downloads lorewire.d.ts) can fetch everything referenced.
#[actix_web::test]
async fn every_module_the_pages_and_the_types_import_is_served() {
    let app = spawn_app(Db::Sqlite).await;
    let mut queue: Vec<String> = vec!["/static/lorewire.d.ts".into()];
    for page in PAGES {
        let (_, _, body) = fetch("GET", &app.url(page)).await;
        let html = String::from_utf8(body).unwrap();
        for (at, _) in html.match_indices("<script type=\"module\" src=\"") {
            let rest = &html[at + 27..];
            queue.push(rest[..rest.find('"').unwrap()].to_owned());
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    while let Some(path) = queue.pop() {
        if !seen.insert(path.clone()) {
            continue;
        }
        let (status, headers, body) = fetch("GET", &app.url(&path)).await;
        assert_eq!(status, 200, "{path} is referenced but not served");
        let kind = header(&headers, "content-type").unwrap_or("");
        let types = path.ends_with(".d.ts");
        let expected = if types { "application/typescript" } else { "text/javascript" };
        assert!(kind.starts_with(expected), "{path}: {kind}");
        for spec in specifiers(&String::from_utf8(body).unwrap()) {
            let name = spec.trim_start_matches("./").trim_start_matches("/static/");
            assert!(spec.starts_with("./") || spec.starts_with("/static/"), "{path} imports {spec} from elsewhere");
            // TypeScript finds the types of `./x.js` in `./x.d.ts`.
            let name = if types { name.replace(".js", ".d.ts") } else { name.to_owned() };
            queue.push(format!("/static/{name}"));
        }
    }
    for expected in
        ["/static/app.js", "/static/admin.js", "/static/dom.js", "/static/lorewire.js", "/static/lorewire.wire.d.ts"]
    {
        assert!(seen.contains(expected), "{expected} not reached from the pages and the types: {seen:?}");
    }
}
