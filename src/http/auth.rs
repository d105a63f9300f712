//! Authorization before anything else of a request (PROTOCOL §4): the token of every `/api/*`
//! route (player token; the OpenAPI document needs none) and every `/admin/api/*` route (admin
//! token) is checked before the body is read or the path and query are parsed, so a bad token
//! gets 401/403, never 400. The player found is handed to the handler ([`Player`]).
//!
//! Never decides what an authorized caller may do: the handlers and services do.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage};

use super::admin;
use super::public::{self, Player};
use crate::api_error::ApiError;
use crate::state::AppState;

/// Who may call a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Player,
    Admin,
}

/// The token a path needs, by its prefix (PROTOCOL §3), or none.
pub fn scheme_of(path: &str) -> Option<Scheme> {
    if path.starts_with("/admin/api/") {
        Some(Scheme::Admin)
    } else if path.starts_with("/api/") && path != "/api/openapi.json" {
        Some(Scheme::Player)
    } else {
        None
    }
}

/// Checks the path's token before the handler (and its extractors) run; a refusal is an
/// answer like any handler's (logged by the request log with its status and duration).
pub async fn authorize_first<B: MessageBody>(
    req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<EitherBody<B>>, actix_web::Error> {
    if let Some(scheme) = scheme_of(req.path()) {
        if let Err(e) = check(&req, scheme).await {
            return Ok(req.error_response(e).map_into_right_body());
        }
    }
    Ok(next.call(req).await?.map_into_left_body())
}

async fn check(req: &ServiceRequest, scheme: Scheme) -> Result<(), ApiError> {
    let Some(state) = req.app_data::<web::Data<AppState>>() else {
        tracing::error!("a request reached the authorization without the app's state");
        return Err(ApiError::Internal);
    };
    match scheme {
        Scheme::Admin => admin::authorize(req.request(), state),
        Scheme::Player => {
            let user = public::player(req.request(), state).await?;
            req.extensions_mut().insert(Player(user));
            Ok(())
        }
    }
}
