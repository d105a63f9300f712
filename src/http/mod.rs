//! HTTP routes (README "REST"): public, player (`/api`, player token) and admin (`/admin/api`,
//! admin token); `GET /ws` is the WebSocket edge's, registered beside these in `app.rs`.
//! Handlers stay thin: parse, authorize, call a service, map errors; they hold no business rule.

pub mod admin;
pub mod error;
pub mod insights;
pub mod pages;
pub mod public;
pub mod request_log;
pub mod runs;

use actix_web::{error::JsonPayloadError, web, HttpRequest};

use self::error::ApiError;

/// Largest JSON body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(MAX_BODY_BYTES)
            .error_handler(|e: JsonPayloadError, _| ApiError::Invalid(json_error(&e)).into()),
    )
    .app_data(web::PathConfig::default().error_handler(|e, _| ApiError::Invalid(e.to_string()).into()))
    .app_data(web::QueryConfig::default().error_handler(|e, _| ApiError::Invalid(e.to_string()).into()))
    .route("/health", web::get().to(public::health))
    .route("/ready", web::get().to(public::ready))
    .route("/metrics", web::get().to(public::metrics))
    .route("/", get_or_head().to(pages::index))
    .route("/admin", get_or_head().to(pages::admin))
    .route("/favicon.ico", get_or_head().to(pages::favicon))
    .route("/static/{name}", get_or_head().to(pages::asset))
    .service(
        web::scope("/api")
            .route("/content", web::post().to(public::request_content))
            .route("/content/{kind}/{subject_id}", web::get().to(public::get_content))
            .route("/generate", web::post().to(runs::generate))
            .route("/runs/{run_id}", web::get().to(runs::get_run))
            .route("/runs/{run_id}/events", web::get().to(runs::run_events)),
    )
    .service(
        web::scope("/admin/api")
            .route("/llm", web::get().to(admin::get_llm))
            .route("/llm", web::put().to(admin::put_llm))
            .route("/llm/circuit/reset", web::post().to(admin::reset_circuit))
            .route("/runs", web::get().to(runs::admin_runs))
            .route("/costs", web::get().to(runs::admin_costs))
            .route("/budgets/{project_id}", web::get().to(runs::get_budget))
            .route("/budgets/{project_id}", web::put().to(runs::put_budget))
            .route("/dead-letters", web::get().to(runs::dead_letters))
            .route("/dead-letters/{run_id}/retry", web::post().to(runs::retry_dead_letter))
            .route("/prices", web::get().to(runs::get_prices))
            .route("/prices/{model}", web::put().to(runs::put_price))
            .route("/users", web::get().to(insights::users))
            .route("/metrics/summary", web::get().to(insights::summary))
            .route("/metrics/history", web::get().to(insights::history)),
    )
    .default_service(web::to(|| async {
        Err::<actix_web::HttpResponse, _>(ApiError::NotFound("no such route".into()))
    }));
}

/// A route for `GET` and `HEAD` (actix sends a HEAD response's headers without its body).
fn get_or_head() -> actix_web::Route {
    web::route().guard(actix_web::guard::Any(actix_web::guard::Get()).or(actix_web::guard::Head()))
}

fn json_error(e: &JsonPayloadError) -> String {
    match e {
        JsonPayloadError::OverflowKnownLength { length, limit } => {
            format!("body is {length} bytes; at most {limit} are accepted")
        }
        JsonPayloadError::Overflow { limit } => format!("body is over {limit} bytes"),
        JsonPayloadError::ContentType => "send the body as application/json".into(),
        JsonPayloadError::Deserialize(e) => format!("invalid JSON body: {e}"),
        other => format!("invalid body: {other}"),
    }
}

/// The bearer token of a request, if it has one.
pub fn bearer(req: &HttpRequest) -> Option<&str> {
    let value = req.headers().get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}
