//! The upstreams (PROTOCOL §7): one row each in `llm_config`, row 1 the first (the LLM
//! settings of `store::llm_config`). Each holds its provider settings, its write-only key, its
//! routing (`weight`, `priority`, `enabled`), its persisted circuit, its `retry-after`, whether
//! a 401/403 parked it and its last error. Reads and writes rows only; its Debug output never
//! shows a key.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::llm_config::{CircuitRecord, LlmConfigRow, ID as FIRST};
use super::schema::llm_config;
use super::{DbConn, StoreResult};
use crate::domain::upstream::CircuitState;

/// One upstream as stored.
#[derive(Clone, Queryable, Selectable)]
#[diesel(table_name = llm_config)]
pub struct UpstreamRow {
    pub id: i64,
    pub provider: String,
    pub model: String,
    pub base_url: String,
    pub api_key: Option<String>,
    pub last_error: Option<String>,
    pub circuit_state: String,
    pub circuit_failures: String,
    pub circuit_opened_at: Option<NaiveDateTime>,
    pub circuit_resets_at: Option<NaiveDateTime>,
    pub retry_after_until: Option<NaiveDateTime>,
    pub updated_at: NaiveDateTime,
    pub weight: i32,
    pub priority: i32,
    pub enabled: bool,
    /// The failure (`api_error_401`, `api_error_403`) that parked it, until its key or URL
    /// changes or its circuit is reset.
    pub parked: Option<String>,
}

impl UpstreamRow {
    /// The first upstream is the one `/admin/api/llm` shows; it cannot be removed.
    pub fn is_first(&self) -> bool {
        self.id == FIRST
    }

    /// Its provider settings, as the LLM settings row reads them.
    pub fn config(&self) -> LlmConfigRow {
        LlmConfigRow {
            id: self.id,
            provider: self.provider.clone(),
            model: self.model.clone(),
            base_url: self.base_url.clone(),
            api_key: self.api_key.clone(),
            last_error: self.last_error.clone(),
            circuit_state: self.circuit_state.clone(),
            circuit_failures: self.circuit_failures.clone(),
            circuit_opened_at: self.circuit_opened_at,
            circuit_resets_at: self.circuit_resets_at,
            retry_after_until: self.retry_after_until,
            updated_at: self.updated_at,
        }
    }

    pub fn circuit(&self) -> CircuitRecord {
        self.config().circuit()
    }
}

impl std::fmt::Debug for UpstreamRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamRow")
            .field("id", &self.id)
            .field("provider", &self.provider)
            .field("model", &self.model)
            .field("base_url", &self.base_url)
            .field("api_key_set", &self.api_key.is_some())
            .field("weight", &self.weight)
            .field("priority", &self.priority)
            .field("enabled", &self.enabled)
            .field("parked", &self.parked)
            .finish_non_exhaustive()
    }
}

/// A new upstream; its circuit starts closed.
#[derive(Clone)]
pub struct NewUpstream {
    pub provider: String,
    pub model: String,
    pub base_url: String,
    pub api_key: Option<String>,
    pub weight: i32,
    pub priority: i32,
    pub enabled: bool,
}

/// What an admin changes; a field left `None` keeps its value.
#[derive(Clone, Default, AsChangeset)]
#[diesel(table_name = llm_config)]
pub struct UpstreamChange {
    pub provider: Option<String>,
    pub model: Option<String>,
    pub base_url: Option<String>,
    /// `Some(None)` clears the key.
    pub api_key: Option<Option<String>>,
    pub weight: Option<i32>,
    pub priority: Option<i32>,
    pub enabled: Option<bool>,
}

impl UpstreamChange {
    /// A new key, URL or provider may cure what parked it.
    fn unparks(&self) -> bool {
        self.api_key.is_some() || self.base_url.is_some() || self.provider.is_some()
    }
}

/// The key shows only as set, cleared or unchanged.
impl std::fmt::Debug for UpstreamChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let api_key = match &self.api_key {
            None => "unchanged",
            Some(None) => "cleared",
            Some(Some(_)) => "[redacted]",
        };
        f.debug_struct("UpstreamChange")
            .field("provider", &self.provider)
            .field("model", &self.model)
            .field("base_url", &self.base_url)
            .field("api_key", &api_key)
            .field("weight", &self.weight)
            .field("priority", &self.priority)
            .field("enabled", &self.enabled)
            .finish()
    }
}

/// Every upstream, by `priority`, then `id`.
/// Every upstream, by priority (read once per batch of the writer's: [`super::memo`]).
pub fn all(conn: &mut DbConn) -> StoreResult<Vec<UpstreamRow>> {
    super::memo::kept("upstreams", "", || {
        Ok(llm_config::table
            .order((llm_config::priority.asc(), llm_config::id.asc()))
            .select(UpstreamRow::as_select())
            .load(conn)?)
    })
}

pub fn find(conn: &mut DbConn, id: i64) -> StoreResult<Option<UpstreamRow>> {
    Ok(llm_config::table.find(id).select(UpstreamRow::as_select()).first(conn).optional()?)
}

pub fn insert(conn: &mut DbConn, new: &NewUpstream, now: NaiveDateTime) -> StoreResult<UpstreamRow> {
    super::memo::changed();
    let row = (
        llm_config::provider.eq(&new.provider),
        llm_config::model.eq(&new.model),
        llm_config::base_url.eq(&new.base_url),
        llm_config::api_key.eq(new.api_key.as_deref()),
        llm_config::circuit_state.eq(CircuitState::Closed.as_str()),
        llm_config::circuit_failures.eq("[]"),
        llm_config::updated_at.eq(now),
        llm_config::weight.eq(new.weight),
        llm_config::priority.eq(new.priority),
        llm_config::enabled.eq(new.enabled),
    );
    let id: i64 = diesel::insert_into(llm_config::table).values(row).returning(llm_config::id).get_result(conn)?;
    Ok(llm_config::table.find(id).select(UpstreamRow::as_select()).first(conn)?)
}

/// Applies `change` (a new key, URL or provider unparks it and clears its last error);
/// `None` when there is no such upstream.
pub fn update(
    conn: &mut DbConn,
    id: i64,
    change: &UpstreamChange,
    now: NaiveDateTime,
) -> StoreResult<Option<UpstreamRow>> {
    super::memo::changed();
    if find(conn, id)?.is_none() {
        return Ok(None);
    }
    if change.unparks() {
        diesel::update(llm_config::table.find(id))
            .set((llm_config::parked.eq(None::<String>), llm_config::last_error.eq(None::<String>)))
            .execute(conn)?;
    }
    diesel::update(llm_config::table.find(id)).set((change, llm_config::updated_at.eq(now))).execute(conn)?;
    find(conn, id)
}

/// Removes upstream `id` (never the first); whether there was one.
pub fn delete(conn: &mut DbConn, id: i64) -> StoreResult<bool> {
    super::memo::changed();
    if id == FIRST {
        return Ok(false);
    }
    Ok(diesel::delete(llm_config::table.find(id)).execute(conn)? > 0)
}

/// Stores upstream `id`'s last error (`None` clears it); already redacted.
pub fn set_last_error(conn: &mut DbConn, id: i64, error: Option<&str>, now: NaiveDateTime) -> StoreResult<()> {
    super::memo::changed();
    diesel::update(llm_config::table.find(id))
        .set((llm_config::last_error.eq(error), llm_config::updated_at.eq(now)))
        .execute(conn)?;
    Ok(())
}

/// Parks upstream `id` for `failure` with its last error, or (`None`) unparks it.
pub fn set_parked(conn: &mut DbConn, id: i64, failure: Option<&str>, now: NaiveDateTime) -> StoreResult<()> {
    super::memo::changed();
    diesel::update(llm_config::table.find(id))
        .set((llm_config::parked.eq(failure), llm_config::updated_at.eq(now)))
        .execute(conn)?;
    Ok(())
}
