//! HTTP routes (README "REST"): public, player (`/api`, player token) and admin (`/admin/api`,
//! admin token); `GET /ws` is the WebSocket edge's, registered beside these in `app.rs`.
//! Handlers stay thin: name who may call them (`auth::Admin`, `auth::Player`), parse, call a
//! service, map errors; they hold no business rule.

pub mod admin;
pub mod auth;
pub mod edge;
pub mod insights;
pub mod limits_admin;
pub mod moderation;
pub mod openapi;
pub mod pages;
pub mod public;
pub mod request_log;
pub mod responses;
pub mod run_admin;
pub mod runs;
pub mod upstreams_admin;

use actix_web::http::Method;
use actix_web::{error::JsonPayloadError, web, FromRequest, Handler, Responder};

use crate::api_error::ApiError;

/// Largest JSON body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// One route of this edge: its method, its whole path and its handler.
pub struct Endpoint {
    pub method: Method,
    pub path: &'static str,
    route: actix_web::Route,
}

fn at<F, Args>(method: Method, path: &'static str, handler: F) -> Endpoint
where
    F: Handler<Args>,
    Args: FromRequest + 'static,
    F::Output: Responder + 'static,
{
    Endpoint { route: web::method(method.clone()).to(handler), method, path }
}

/// A page or asset: `GET`, and `HEAD` answering the same headers without the body (actix drops
/// a HEAD response's body).
fn page<F, Args>(path: &'static str, handler: F) -> Endpoint
where
    F: Handler<Args>,
    Args: FromRequest + 'static,
    F::Output: Responder + 'static,
{
    let get_or_head = actix_web::guard::Any(actix_web::guard::Get()).or(actix_web::guard::Head());
    Endpoint { route: web::route().guard(get_or_head).to(handler), method: Method::GET, path }
}

/// Every route this edge serves: `routes` registers exactly these, and a test checks each
/// against the OpenAPI document (`openapi.rs`), so a route cannot be added undescribed.
pub fn endpoints() -> Vec<Endpoint> {
    vec![
        at(Method::GET, "/health", public::health),
        at(Method::GET, "/ready", public::ready),
        at(Method::GET, "/metrics", public::metrics),
        page("/", pages::index),
        page("/admin", pages::admin),
        page("/favicon.ico", pages::favicon),
        page("/static/{name}", pages::asset),
        // Player routes (player token), except the document itself.
        at(Method::GET, "/api/openapi.json", openapi::document),
        at(Method::POST, "/api/content", public::request_content),
        at(Method::GET, "/api/content/{kind}/{subject_id}", public::get_content),
        at(Method::POST, "/api/generate", runs::generate),
        at(Method::GET, "/api/runs/{run_id}", runs::get_run),
        at(Method::GET, "/api/runs/{run_id}/events", runs::run_events),
        // Admin routes (admin token).
        at(Method::POST, "/admin/api/content", public::server_request_content),
        at(Method::GET, "/admin/api/llm", admin::get_llm),
        at(Method::PUT, "/admin/api/llm", admin::put_llm),
        at(Method::POST, "/admin/api/llm/circuit/reset", admin::reset_circuit),
        at(Method::GET, "/admin/api/upstreams", upstreams_admin::list),
        at(Method::POST, "/admin/api/upstreams", upstreams_admin::add),
        at(Method::GET, "/admin/api/upstreams/{id}", upstreams_admin::get),
        at(Method::PUT, "/admin/api/upstreams/{id}", upstreams_admin::put),
        at(Method::DELETE, "/admin/api/upstreams/{id}", upstreams_admin::delete),
        at(Method::POST, "/admin/api/upstreams/{id}/circuit/reset", upstreams_admin::reset),
        at(Method::GET, "/admin/api/runs", run_admin::admin_runs),
        at(Method::GET, "/admin/api/costs", run_admin::admin_costs),
        at(Method::GET, "/admin/api/budgets/{project_id}", run_admin::get_budget),
        at(Method::PUT, "/admin/api/budgets/{project_id}", run_admin::put_budget),
        at(Method::GET, "/admin/api/dead-letters", run_admin::dead_letters),
        at(Method::POST, "/admin/api/dead-letters/{run_id}/retry", run_admin::retry_dead_letter),
        at(Method::GET, "/admin/api/prices", run_admin::get_prices),
        at(Method::PUT, "/admin/api/prices/{model}", run_admin::put_price),
        at(Method::GET, "/admin/api/users", insights::users),
        at(Method::GET, "/admin/api/metrics/summary", insights::summary),
        at(Method::GET, "/admin/api/metrics/history", insights::metric_history),
        at(Method::GET, "/admin/api/moderation", moderation::flags),
        at(Method::GET, "/admin/api/limits", limits_admin::get_limits),
        at(Method::PUT, "/admin/api/limits", limits_admin::put_limits),
        at(Method::GET, "/admin/api/players/{user_id}", limits_admin::get_player),
        at(Method::PUT, "/admin/api/players/{user_id}", limits_admin::put_player),
        at(Method::GET, "/admin/api/projects/{project_id}/limits", limits_admin::get_project),
        at(Method::PUT, "/admin/api/projects/{project_id}/limits", limits_admin::put_project),
        at(Method::GET, "/admin/api/usage", limits_admin::usage),
    ]
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::JsonConfig::default().limit(MAX_BODY_BYTES).error_handler(|e: JsonPayloadError, _| json_error(&e).into()),
    )
    .app_data(web::PathConfig::default().error_handler(|e, _| ApiError::Invalid(e.to_string()).into()))
    .app_data(web::QueryConfig::default().error_handler(|e, _| ApiError::Invalid(e.to_string()).into()));
    for endpoint in endpoints() {
        cfg.route(endpoint.path, endpoint.route);
    }
    cfg.default_service(web::to(|| async {
        Err::<actix_web::HttpResponse, _>(ApiError::NotFound("no such route".into()))
    }));
}

fn json_error(e: &JsonPayloadError) -> ApiError {
    match e {
        JsonPayloadError::Payload(p) if crate::connections::is_body_timeout(p) => {
            ApiError::Timeout("the request body did not arrive in time".into())
        }
        other => ApiError::Invalid(json_message(other)),
    }
}

fn json_message(e: &JsonPayloadError) -> String {
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
