//! Authorization before anything else of a request (PROTOCOL §4): the token of every `/api/*`
//! route (player token; the OpenAPI document needs none) and every `/admin/api/*` route (admin
//! token) is checked before the body is read or the path and query are parsed, so a bad token
//! gets 401/403, never 400. What it establishes reaches the handlers as the extractors
//! [`Admin`] and [`Player`], which only read it.
//!
//! Never decides what an authorized caller may do: the handlers and services do.

use std::future::{ready, Ready};

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, FromRequest, HttpMessage, HttpRequest};

use super::edge::{bearer, same_token};
use crate::api_error::ApiError;
use crate::players::StartRefused;
use crate::state::AppState;
use crate::store::users::UserRow;

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

/// The caller bore the admin token. A handler that takes it runs only for the admin.
#[derive(Debug, Clone, Copy)]
pub struct Admin;

/// The player whose token the request bore. A handler that takes it runs only for a player.
#[derive(Debug, Clone)]
pub struct Player(pub UserRow);

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
        Scheme::Admin => {
            let admin = admin(req.request(), state)?;
            req.extensions_mut().insert(admin);
        }
        Scheme::Player => {
            let player = player(req.request(), state).await?;
            req.extensions_mut().insert(player);
        }
    }
    Ok(())
}

/// The admin token, compared in constant time (401 without, 403 wrong).
fn admin(req: &HttpRequest, state: &AppState) -> Result<Admin, ApiError> {
    let token = bearer(req).ok_or_else(|| ApiError::Unauthorized("send Authorization: Bearer <admin token>".into()))?;
    if same_token(token, state.admin_token.expose()) {
        Ok(Admin)
    } else {
        Err(ApiError::Forbidden("wrong admin token".into()))
    }
}

/// The player a request's bearer token belongs to: an opaque token from `session:ack`, or the
/// studio's JWT, as `LOREWIRE_AUTH` allows. Whatever proves the player, the handlers see a `Player`.
async fn player(req: &HttpRequest, state: &AppState) -> Result<Player, ApiError> {
    let token =
        bearer(req).ok_or_else(|| ApiError::Unauthorized("send Authorization: Bearer <player token>".into()))?;
    match state.players.authenticate(token).await {
        Ok(Some(user)) => Ok(Player(user)),
        Ok(None) => Err(ApiError::Unauthorized("unknown player token; start a session to get one".into())),
        Err(StartRefused::Store(e)) => Err(e.into()),
        Err(StartRefused::Blocked) => Err(ApiError::Forbidden(StartRefused::Blocked.to_string())),
        Err(refused) => Err(ApiError::Unauthorized(refused.to_string())),
    }
}

/// What `authorize_first` put in the request; a route outside its paths cannot name it.
fn established<T: Clone + 'static>(req: &HttpRequest, what: &str) -> Result<T, ApiError> {
    req.extensions().get::<T>().cloned().ok_or_else(|| {
        tracing::error!(path = %req.path(), "a handler asks for the {what} on a path authorize_first does not check");
        ApiError::Internal
    })
}

impl FromRequest for Admin {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(established(req, "admin"))
    }
}

impl FromRequest for Player {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(established(req, "player"))
    }
}
