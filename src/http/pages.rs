//! The browser client (`GET /`), the admin dashboard (`GET /admin`) and their assets, compiled
//! into the binary from `static/` so they are served the same from any working directory.
//! The pages hold no secret: the admin page asks for the token and keeps it in sessionStorage.
//! Every route here answers `HEAD` like `GET` (same status and headers, no body).

use actix_web::{web, HttpResponse};

use crate::api_error::ApiError;

/// (name under /static/, content type, body)
const ASSETS: &[(&str, &str, &str)] = &[
    ("lorewire.js", "text/javascript; charset=utf-8", include_str!("../../static/lorewire.js")),
    // The helpers both pages share.
    ("dom.js", "text/javascript; charset=utf-8", include_str!("../../static/dom.js")),
    // The client page (app.js) and its parts.
    ("app.js", "text/javascript; charset=utf-8", include_str!("../../static/app.js")),
    ("app-session.js", "text/javascript; charset=utf-8", include_str!("../../static/app-session.js")),
    ("app-presence.js", "text/javascript; charset=utf-8", include_str!("../../static/app-presence.js")),
    ("app-chat.js", "text/javascript; charset=utf-8", include_str!("../../static/app-chat.js")),
    ("app-scene.js", "text/javascript; charset=utf-8", include_str!("../../static/app-scene.js")),
    ("app-content.js", "text/javascript; charset=utf-8", include_str!("../../static/app-content.js")),
    ("app-runs.js", "text/javascript; charset=utf-8", include_str!("../../static/app-runs.js")),
    // The admin dashboard (admin.js) and its parts.
    ("admin.js", "text/javascript; charset=utf-8", include_str!("../../static/admin.js")),
    ("admin-api.js", "text/javascript; charset=utf-8", include_str!("../../static/admin-api.js")),
    ("admin-llm.js", "text/javascript; charset=utf-8", include_str!("../../static/admin-llm.js")),
    ("admin-upstreams.js", "text/javascript; charset=utf-8", include_str!("../../static/admin-upstreams.js")),
    ("admin-summary.js", "text/javascript; charset=utf-8", include_str!("../../static/admin-summary.js")),
    ("admin-runs.js", "text/javascript; charset=utf-8", include_str!("../../static/admin-runs.js")),
    ("admin-moderation.js", "text/javascript; charset=utf-8", include_str!("../../static/admin-moderation.js")),
    ("admin-spend.js", "text/javascript; charset=utf-8", include_str!("../../static/admin-spend.js")),
    ("charts.js", "text/javascript; charset=utf-8", include_str!("../../static/charts.js")),
    // uPlot (MIT), vendored from npm: see static/vendor/uplot/README.md.
    (
        "uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_str!("../../static/vendor/uplot/uPlot.iife.min.js"),
    ),
    ("uPlot.min.css", "text/css; charset=utf-8", include_str!("../../static/vendor/uplot/uPlot.min.css")),
    ("style.css", "text/css; charset=utf-8", include_str!("../../static/style.css")),
    ("favicon.svg", "image/svg+xml", include_str!("../../static/favicon.svg")),
    // The types of lorewire.js, for TypeScript clients (README "Browser client").
    ("lorewire.d.ts", "application/typescript; charset=utf-8", include_str!("../../static/lorewire.d.ts")),
    // The wire's types it imports, generated from the Rust types (src/domain/wire_types.rs).
    ("lorewire.wire.d.ts", "application/typescript; charset=utf-8", include_str!("../../static/lorewire.wire.d.ts")),
];

const INDEX: &str = include_str!("../../static/index.html");
const ADMIN: &str = include_str!("../../static/admin.html");

fn page(body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("cache-control", "no-cache"))
        .insert_header(("x-content-type-options", "nosniff"))
        .insert_header(("referrer-policy", "no-referrer"))
        // Never framed (clickjacking): the header older browsers know, and CSP's frame-ancestors.
        .insert_header(("x-frame-options", "DENY"))
        // Only our own scripts and styles run; the page talks only to this server.
        .insert_header((
            "content-security-policy",
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'",
        ))
        .body(body)
}

/// The browser client.
#[utoipa::path(get, path = "/", tag = "pages", operation_id = "client_page",
    responses((status = 200, description = "The browser client's page", body = String, content_type = "text/html; charset=utf-8")))]
pub async fn index() -> HttpResponse {
    page(INDEX)
}

/// The admin dashboard (it asks for the admin token itself).
#[utoipa::path(get, path = "/admin", tag = "pages", operation_id = "admin_page",
    responses((status = 200, description = "The admin dashboard's page", body = String, content_type = "text/html; charset=utf-8")))]
pub async fn admin() -> HttpResponse {
    page(ADMIN)
}

pub async fn asset(name: web::Path<String>) -> Result<HttpResponse, ApiError> {
    served(name.as_str())
        .ok_or_else(|| ApiError::NotFound(format!("no asset `{}`", name.chars().take(64).collect::<String>())))
}

/// `/favicon.ico`, which browsers ask for on their own: the SVG icon the pages link.
pub async fn favicon() -> HttpResponse {
    served("favicon.svg").expect("the icon is compiled in")
}

fn served(name: &str) -> Option<HttpResponse> {
    let (_, content_type, body) = ASSETS.iter().find(|(n, _, _)| *n == name)?;
    Some(
        HttpResponse::Ok()
            .content_type(*content_type)
            .insert_header(("cache-control", "no-cache"))
            .insert_header(("x-content-type-options", "nosniff"))
            .body(*body),
    )
}
