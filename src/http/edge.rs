//! What every handler of the edge shares and no handler owns: the bearer token of a request,
//! the constant-time comparison of tokens, and the answers that several routes give alike.
//! Never decides who a caller is (`auth` does) nor what they may do (the services do).

use actix_web::HttpRequest;

use crate::api_error::ApiError;

/// Whether `given` is `expected`; both are hashed first so the comparison takes the same time
/// whatever they hold and however long they are.
pub fn same_token(given: &str, expected: &str) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    bool::from(Sha256::digest(given.as_bytes()).ct_eq(&Sha256::digest(expected.as_bytes())))
}

/// The bearer token of a request, if it has one.
pub fn bearer(req: &HttpRequest) -> Option<&str> {
    let value = req.headers().get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// A run id that names no run (player and admin routes alike).
pub fn no_run(run_id: &str) -> ApiError {
    ApiError::NotFound(format!("no run `{run_id}`"))
}

/// Refuses new work once the server is shutting down.
pub fn not_shutting_down(state: &crate::state::AppState) -> Result<(), ApiError> {
    if state.is_shutting_down() {
        return Err(ApiError::Unavailable("the server is shutting down".into()));
    }
    Ok(())
}
