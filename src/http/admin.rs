//! Admin routes: the LLM configuration (the key is write-only) and the circuit breaker.
//! Every route is the admin's (`auth::Admin`).

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::ToSchema;

use super::auth::Admin;
use super::responses::{AdminErrors, ReadErrors, WriteErrors};
use crate::api_error::{typed_body, ApiError, ErrorBody};
use crate::llm::circuit::{CircuitSnapshot, GetSnapshot, Reset};
use crate::llm::credentials::NoCredentials;
use crate::llm::providers::Provider;
use crate::state::AppState;
use crate::store::llm_config::{LlmConfigRow, SettingsChange};

const MAX_MODEL_CHARS: usize = 200;
const MAX_BASE_URL_CHARS: usize = 500;
const MAX_API_KEY_CHARS: usize = 500;

pub(super) fn last4(key: &str) -> Option<String> {
    let chars: Vec<char> = key.chars().collect();
    // Short keys would give away too much of themselves.
    (chars.len() >= 8).then(|| chars[chars.len() - 4..].iter().collect())
}

/// The LLM settings as admins see them: the key only as whether it is set and its last 4 characters.
#[derive(Debug, Serialize, ToSchema)]
pub struct LlmView {
    #[schema(schema_with = provider_schema)]
    provider: String,
    model: String,
    base_url: String,
    api_key_set: bool,
    /// The key's last 4 characters; null when it is unset or shorter than 8.
    api_key_last4: Option<String>,
    /// The last upstream failure (a 401 or 403 for the admin to fix), or the stored settings'
    /// unknown provider; parts of the API key in it are `[redacted]`.
    last_error: Option<String>,
    circuit: CircuitSnapshot,
    /// Set when no call can be made (no key and no model server of one's own, or an unknown
    /// provider): the one sentence saying why every content item will fall back with `no_config`.
    notice: Option<String>,
}

/// The circuit after a reset.
#[derive(Debug, Serialize, ToSchema)]
pub struct CircuitReply {
    circuit: CircuitSnapshot,
}

/// `PUT /admin/api/llm`: any of the settings; a field left out keeps its value.
#[derive(Debug, Deserialize, ToSchema)]
pub struct LlmSettingsBody {
    /// Switching provider also switches a model or base URL still at the old provider's default.
    #[serde(default)]
    #[schema(schema_with = provider_schema, required = false)]
    provider: Option<String>,
    /// 1..200 characters without control characters.
    #[serde(default)]
    model: Option<String>,
    /// An http(s) URL of at most 500 characters: the API root as the provider's SDKs take it.
    #[serde(default)]
    base_url: Option<String>,
    /// The new key (write-only); null or empty removes it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    api_key: Option<Option<String>>,
}

/// A field that is present (`Some`, maybe null) as opposed to left out (`None`, by default).
pub(super) fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// The provider names, from the providers themselves.
pub(super) fn provider_schema() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(Provider::ALL.iter().map(|p| p.as_str())))
        .description(Some("anthropic (Messages API), openai (Responses API) or openai-chat (Chat Completions)"))
}

fn llm_view(row: &LlmConfigRow, circuit: CircuitSnapshot) -> LlmView {
    let key = row.api_key.as_deref().filter(|k| !k.is_empty());
    LlmView {
        provider: row.provider.clone(),
        model: row.model.clone(),
        base_url: row.base_url.clone(),
        api_key_set: key.is_some(),
        api_key_last4: key.and_then(last4),
        last_error: match crate::llm::credentials(row) {
            // Said before any call is tried, and never as "no API key".
            Err(unknown @ NoCredentials::UnknownProvider(_)) => Some(unknown.to_string()),
            _ => row.last_error.clone(),
        },
        circuit,
        notice: crate::llm::credentials::no_config_notice(row),
    }
}

async fn circuit_snapshot(state: &AppState) -> Result<CircuitSnapshot, ApiError> {
    state.circuit.send(GetSnapshot).await.map_err(|_| ApiError::Internal)
}

async fn stored_config(state: &AppState) -> Result<LlmConfigRow, ApiError> {
    crate::llm::settings::stored(&state.store).await?.ok_or(ApiError::Internal)
}

/// The LLM settings and the circuit.
#[utoipa::path(get, path = "/admin/api/llm", tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The settings and the circuit", body = LlmView),
        AdminErrors, ReadErrors,
    ))]
pub async fn get_llm(_: Admin, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let row = stored_config(&state).await?;
    let circuit = circuit_snapshot(&state).await?;
    Ok(HttpResponse::Ok().json(with_other_upstreams(&state, llm_view(&row, circuit)).await?))
}

/// The first upstream's view, its notice left out when another upstream can make the calls.
async fn with_other_upstreams(state: &AppState, mut view: LlmView) -> Result<LlmView, ApiError> {
    if view.notice.is_some() && crate::llm::route::callable(&crate::llm::settings::upstreams(&state.store).await?) > 0 {
        view.notice = None;
    }
    Ok(view)
}

/// Validates a PUT body against the stored settings. Switching provider also switches a
/// model or base URL still at the old provider's default.
fn settings_change(body: &LlmSettingsBody, stored: &LlmConfigRow) -> Result<SettingsChange, ApiError> {
    let mut change = SettingsChange::default();
    let old_provider = stored.provider().ok();
    let provider = match body.provider.as_deref() {
        Some(p) => Some(p.parse::<Provider>().map_err(ApiError::invalid)?),
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
    if let Some(model) = body.model.as_deref() {
        change.model = Some(valid_model(model)?);
    }
    if let Some(base_url) = body.base_url.as_deref() {
        change.base_url = Some(valid_base_url(base_url)?);
    }
    if let Some(key) = &body.api_key {
        change.api_key = Some(valid_api_key(key.as_deref())?);
    }
    Ok(change)
}

/// A model name: 1..200 characters without control characters.
pub(super) fn valid_model(model: &str) -> Result<String, ApiError> {
    let model = model.trim();
    if model.is_empty() || model.chars().count() > MAX_MODEL_CHARS || model.chars().any(char::is_control) {
        return Err(ApiError::Invalid(format!(
            "`model` must be 1..{MAX_MODEL_CHARS} characters without control characters"
        )));
    }
    Ok(model.to_owned())
}

/// An http(s) API root of at most 500 characters, without its trailing `/`.
pub(super) fn valid_base_url(base_url: &str) -> Result<String, ApiError> {
    let base_url = base_url.trim();
    let parsed = url::Url::parse(base_url).map_err(|e| ApiError::Invalid(format!("`base_url` is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || base_url.len() > MAX_BASE_URL_CHARS {
        return Err(ApiError::Invalid(format!(
            "`base_url` must be an http(s) URL of at most {MAX_BASE_URL_CHARS} characters"
        )));
    }
    Ok(base_url.trim_end_matches('/').to_owned())
}

/// A key to store (`None`: none); null or empty removes it.
pub(super) fn valid_api_key(key: Option<&str>) -> Result<Option<String>, ApiError> {
    let Some(key) = key.map(str::trim) else { return Ok(None) };
    if key.chars().count() > MAX_API_KEY_CHARS || key.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(ApiError::Invalid(format!(
            "`api_key` must be at most {MAX_API_KEY_CHARS} characters without spaces or control characters"
        )));
    }
    Ok((!key.is_empty()).then(|| key.to_owned()))
}

/// Change any of the LLM settings.
#[utoipa::path(put, path = "/admin/api/llm", tag = "admin", request_body = LlmSettingsBody,
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The settings as stored now", body = LlmView),
        (status = 400, description = "A setting is not valid; nothing was changed", body = ErrorBody),
        AdminErrors, WriteErrors,
    ))]
pub async fn put_llm(_: Admin, state: web::Data<AppState>, body: web::Json<Value>) -> Result<HttpResponse, ApiError> {
    let body: LlmSettingsBody = typed_body(body.into_inner())?;
    let stored = stored_config(&state).await?;
    let change = settings_change(&body, &stored)?;
    let now = state.clock.now_naive();
    let row = crate::llm::settings::change(&state.store, change, now).await?;
    tracing::info!(provider = %row.provider, model = %row.model, base_url = %row.base_url,
        api_key_set = row.api_key.is_some(), "LLM settings changed by admin");
    let circuit = circuit_snapshot(&state).await?;
    Ok(HttpResponse::Ok().json(with_other_upstreams(&state, llm_view(&row, circuit)).await?))
}

/// Close the circuit now.
#[utoipa::path(post, path = "/admin/api/llm/circuit/reset", tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The circuit, closed", body = CircuitReply),
        AdminErrors, WriteErrors,
    ))]
pub async fn reset_circuit(_: Admin, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let circuit = state.circuit.send(Reset).await.map_err(|_| ApiError::Internal)?;
    let now = state.clock.now_naive();
    crate::llm::settings::unpark(&state.store, crate::store::llm_config::ID, now).await?;
    Ok(HttpResponse::Ok().json(CircuitReply { circuit }))
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
