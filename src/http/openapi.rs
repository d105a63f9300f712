//! The OpenAPI 3.1 description of every REST route (`GET /api/openapi.json`), generated from the
//! handlers' `#[utoipa::path]` annotations and the types they take and answer. Describes; never
//! registers a route (`http::endpoints` does, and a test checks that both list the same routes).

use std::sync::OnceLock;

use actix_web::HttpResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::RefOr;
use utoipa::{Modify, OpenApi};

use super::responses::error;
use super::{admin, insights, limits_admin, moderation, pages, public, run_admin, runs, upstreams_admin};

/// The security scheme of `/api/*`: the token of a `session:ack`.
pub const PLAYER_TOKEN: &str = "player_token";
/// The security scheme of `/admin/api/*`: `LOREWIRE_ADMIN_TOKEN`.
pub const ADMIN_TOKEN: &str = "admin_token";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "lorewire",
        description = "REST API of lorewire, a realtime game backend. Every error is \
            `{\"error\": <code>, \"message\": <text>}`. The WebSocket protocol (`GET /ws`) is \
            described in the README.",
    ),
    paths(
        public::health,
        public::ready,
        public::metrics,
        document,
        pages::index,
        pages::admin,
        public::request_content,
        public::get_content,
        public::server_request_content,
        runs::generate,
        runs::get_run,
        runs::run_events,
        admin::get_llm,
        admin::put_llm,
        admin::reset_circuit,
        upstreams_admin::list,
        upstreams_admin::add,
        upstreams_admin::get,
        upstreams_admin::put,
        upstreams_admin::delete,
        upstreams_admin::reset,
        run_admin::admin_runs,
        run_admin::admin_costs,
        run_admin::get_budget,
        run_admin::put_budget,
        run_admin::dead_letters,
        run_admin::retry_dead_letter,
        run_admin::get_prices,
        run_admin::put_price,
        insights::users,
        insights::summary,
        insights::metric_history,
        moderation::flags,
        limits_admin::get_limits,
        limits_admin::put_limits,
        limits_admin::get_player,
        limits_admin::put_player,
        limits_admin::get_project,
        limits_admin::put_project,
        limits_admin::usage,
    ),
    modifiers(&BearerSchemes, &EdgeLimits),
    tags(
        (name = "public", description = "Health, readiness and metrics; no token"),
        (name = "pages", description = "The browser client and the admin dashboard"),
        (name = "content", description = "Quest, event and NPC text (player token)"),
        (name = "runs", description = "Generation runs (player token)"),
        (name = "admin", description = "Settings, costs, budgets and insights (admin token)"),
    )
)]
pub struct ApiDoc;

/// Adds the two bearer schemes the operations name.
struct BearerSchemes;

impl Modify for BearerSchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = |description: &str| {
            SecurityScheme::Http(
                HttpBuilder::new().scheme(HttpAuthScheme::Bearer).description(Some(description)).build(),
            )
        };
        components.add_security_scheme(
            PLAYER_TOKEN,
            bearer("The `token` of a WebSocket `session:ack`: `Authorization: Bearer <token>`"),
        );
        components.add_security_scheme(ADMIN_TOKEN, bearer("`LOREWIRE_ADMIN_TOKEN`: `Authorization: Bearer <token>`"));
    }
}

/// Adds what the per-client limits (`limits.rs`) may answer on any route: 429 over the
/// connections of one address, and 408 where a body is taken and did not arrive in time.
struct EdgeLimits;

const TOO_MANY_CONNECTIONS: &str = "too many open connections from this address";

impl Modify for EdgeLimits {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
                &mut item.head,
                &mut item.options,
                &mut item.trace,
            ];
            for operation in operations.into_iter().flatten() {
                let responses = &mut operation.responses.responses;
                match responses.get_mut("429") {
                    Some(RefOr::T(response)) => {
                        response.description = format!("{}, or {TOO_MANY_CONNECTIONS}", response.description);
                    }
                    Some(RefOr::Ref(_)) => {}
                    None => {
                        let mut description = TOO_MANY_CONNECTIONS.to_owned();
                        description[..1].make_ascii_uppercase();
                        responses.insert("429".into(), error(&description));
                    }
                }
                if operation.request_body.is_some() {
                    responses.insert("408".into(), error("The request body did not arrive within 10 s"));
                }
            }
        }
    }
}

/// The document as JSON, built once.
pub fn document_json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| ApiDoc::openapi().to_json().expect("the OpenAPI document serializes"))
}

/// This document.
#[utoipa::path(get, path = "/api/openapi.json", tag = "public", operation_id = "openapi_document",
    responses((status = 200, description = "The OpenAPI 3.1 description of every REST route", body = Object)))]
pub async fn document() -> HttpResponse {
    HttpResponse::Ok().content_type("application/json").body(document_json())
}
