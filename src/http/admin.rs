//! Admin routes: the LLM configuration (the key is write-only) and the circuit breaker.
//! Every route checks the admin bearer token in constant time (401 without, 403 wrong).

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::bearer;
use super::error::ApiError;
use crate::llm::circuit::{CircuitSnapshot, GetSnapshot, Reset};
use crate::llm::providers::Provider;
use crate::state::AppState;
use crate::store::llm_config::{self, LlmConfigRow, SettingsChange};

const MAX_MODEL_CHARS: usize = 200;
const MAX_BASE_URL_CHARS: usize = 500;
const MAX_API_KEY_CHARS: usize = 500;

/// Checks the admin token; both sides are hashed first so the comparison does not leak length.
pub fn authorize(req: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    let token = bearer(req).ok_or_else(|| ApiError::Unauthorized("send Authorization: Bearer <admin token>".into()))?;
    let given = Sha256::digest(token.as_bytes());
    let expected = Sha256::digest(state.admin_token.expose().as_bytes());
    if bool::from(given.ct_eq(&expected)) {
        Ok(())
    } else {
        Err(ApiError::Forbidden("wrong admin token".into()))
    }
}

fn last4(key: &str) -> Option<String> {
    let chars: Vec<char> = key.chars().collect();
    // Short keys would give away too much of themselves.
    (chars.len() >= 8).then(|| chars[chars.len() - 4..].iter().collect())
}

fn llm_view(row: &LlmConfigRow, circuit: &CircuitSnapshot) -> Value {
    let key = row.api_key.as_deref().filter(|k| !k.is_empty());
    json!({
        "provider": row.provider,
        "model": row.model,
        "base_url": row.base_url,
        "api_key_set": key.is_some(),
        "api_key_last4": key.and_then(last4),
        "last_error": row.last_error,
        "circuit": circuit,
        "notice": crate::llm::credentials::no_config_notice(row),
    })
}

async fn circuit_snapshot(state: &AppState) -> Result<CircuitSnapshot, ApiError> {
    state.circuit.send(GetSnapshot).await.map_err(|_| ApiError::Internal)
}

async fn stored_config(state: &AppState) -> Result<LlmConfigRow, ApiError> {
    state.store.run(llm_config::get).await?.ok_or(ApiError::Internal)
}

pub async fn get_llm(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let row = stored_config(&state).await?;
    let circuit = circuit_snapshot(&state).await?;
    Ok(HttpResponse::Ok().json(llm_view(&row, &circuit)))
}

fn string_field<'a>(body: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, ApiError> {
    match body.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(ApiError::Invalid(format!("`{name}` must be a string"))),
    }
}

/// Validates a PUT body against the stored settings. Switching provider also switches a
/// model or base URL still at the old provider's default.
fn settings_change(body: &Map<String, Value>, stored: &LlmConfigRow) -> Result<SettingsChange, ApiError> {
    let mut change = SettingsChange::default();
    let old_provider: Option<Provider> = stored.provider.parse().ok();
    let provider = match string_field(body, "provider")? {
        Some(p) => Some(p.parse::<Provider>().map_err(ApiError::Invalid)?),
        None => None,
    };
    if let Some(provider) = provider {
        change.provider = Some(provider.as_str().to_owned());
        if let Some(old) = old_provider.filter(|old| *old != provider) {
            if stored.model == old.default_model() {
                change.model = Some(provider.default_model().to_owned());
            }
            if stored.base_url == old.default_base_url() {
                change.base_url = Some(provider.default_base_url().to_owned());
            }
        }
    }
    if let Some(model) = string_field(body, "model")? {
        let model = model.trim();
        if model.is_empty() || model.chars().count() > MAX_MODEL_CHARS || model.chars().any(char::is_control) {
            return Err(ApiError::Invalid(format!(
                "`model` must be 1..{MAX_MODEL_CHARS} characters without control characters"
            )));
        }
        change.model = Some(model.to_owned());
    }
    if let Some(base_url) = string_field(body, "base_url")? {
        let base_url = base_url.trim();
        let parsed =
            url::Url::parse(base_url).map_err(|e| ApiError::Invalid(format!("`base_url` is not a URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") || base_url.len() > MAX_BASE_URL_CHARS {
            return Err(ApiError::Invalid(format!(
                "`base_url` must be an http(s) URL of at most {MAX_BASE_URL_CHARS} characters"
            )));
        }
        change.base_url = Some(base_url.trim_end_matches('/').to_owned());
    }
    match body.get("api_key") {
        None => {}
        Some(Value::Null) => change.api_key = Some(None),
        Some(Value::String(key)) => {
            let key = key.trim();
            if key.chars().count() > MAX_API_KEY_CHARS || key.chars().any(|c| c.is_control() || c.is_whitespace()) {
                return Err(ApiError::Invalid(format!(
                    "`api_key` must be at most {MAX_API_KEY_CHARS} characters without spaces or control characters"
                )));
            }
            change.api_key = Some((!key.is_empty()).then(|| key.to_owned()));
        }
        Some(_) => return Err(ApiError::Invalid("`api_key` must be a string or null".into())),
    }
    Ok(change)
}

pub async fn put_llm(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let Value::Object(body) = body.into_inner() else {
        return Err(ApiError::Invalid("the body must be a JSON object".into()));
    };
    let stored = stored_config(&state).await?;
    let change = settings_change(&body, &stored)?;
    let now = state.clock.now_naive();
    let row = state.store.run(move |conn| llm_config::update_settings(conn, &change, now)).await?;
    tracing::info!(provider = %row.provider, model = %row.model, base_url = %row.base_url,
        api_key_set = row.api_key.is_some(), "LLM settings changed by admin");
    let circuit = circuit_snapshot(&state).await?;
    Ok(HttpResponse::Ok().json(llm_view(&row, &circuit)))
}

pub async fn reset_circuit(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let circuit = state.circuit.send(Reset).await.map_err(|_| ApiError::Internal)?;
    Ok(HttpResponse::Ok().json(json!({ "circuit": circuit })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last4_only_for_long_keys() {
        assert_eq!(last4("sk-ant-123456789"), Some("6789".into()));
        assert_eq!(last4("short"), None);
    }
}
