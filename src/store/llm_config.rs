//! The first upstream's row (id = 1) as the LLM settings: provider settings, the API key, the
//! last upstream error and the persisted circuit breaker (any upstream's circuit is saved here,
//! and announced to the other processes when it opens or closes). The table holds one row per upstream
//! (`store::upstreams`); this file reads and writes only the first. Its Debug output never
//! shows the key.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::notify::{self, Event};
use super::schema::llm_config;
use super::{DbConn, StoreResult};
use crate::core::provider::{Provider, UnknownProvider};
use crate::domain::upstream::CircuitState;
use crate::on_backend;

/// The first upstream: seeded from the environment, never removed.
pub const ID: i64 = 1;

/// The first upstream's settings (the table has more columns: see `store::upstreams`).
#[derive(Clone, Queryable, Selectable)]
#[diesel(table_name = llm_config)]
pub struct LlmConfigRow {
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
}

impl LlmConfigRow {
    /// The provider it names; one this version does not speak (written by a newer version, or
    /// by hand) is an error holding the stored name.
    pub fn provider(&self) -> Result<Provider, UnknownProvider> {
        self.provider.parse()
    }
}

impl std::fmt::Debug for LlmConfigRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmConfigRow")
            .field("provider", &self.provider)
            .field("model", &self.model)
            .field("base_url", &self.base_url)
            .field("api_key_set", &self.api_key.is_some())
            .field("circuit_state", &self.circuit_state)
            .finish_non_exhaustive()
    }
}

/// The circuit breaker's persisted state.
#[derive(Debug, Clone, PartialEq)]
pub struct CircuitRecord {
    pub state: String,
    /// JSON array of failure times (RFC 3339) still inside the window.
    pub failures: String,
    pub opened_at: Option<NaiveDateTime>,
    pub resets_at: Option<NaiveDateTime>,
    pub retry_after_until: Option<NaiveDateTime>,
}

#[derive(Clone, Default, AsChangeset)]
#[diesel(table_name = llm_config)]
pub struct SettingsChange {
    pub provider: Option<String>,
    pub model: Option<String>,
    pub base_url: Option<String>,
    /// `Some(None)` clears the key.
    pub api_key: Option<Option<String>>,
}

/// The key shows only as set, cleared or unchanged.
impl std::fmt::Debug for SettingsChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let api_key = match &self.api_key {
            None => "unchanged",
            Some(None) => "cleared",
            Some(Some(_)) => "[redacted]",
        };
        f.debug_struct("SettingsChange")
            .field("provider", &self.provider)
            .field("model", &self.model)
            .field("base_url", &self.base_url)
            .field("api_key", &api_key)
            .finish()
    }
}

pub fn get(conn: &mut DbConn) -> StoreResult<Option<LlmConfigRow>> {
    Ok(on_backend!(conn, |c| llm_config::table.find(ID).select(LlmConfigRow::as_select()).first(c).optional())?)
}

/// Writes the settings from the environment when nothing is stored yet; returns the stored row.
pub fn seed(
    conn: &mut DbConn,
    provider: Provider,
    model: &str,
    base_url: &str,
    api_key: Option<&str>,
    now: NaiveDateTime,
) -> StoreResult<LlmConfigRow> {
    let row = (
        llm_config::id.eq(ID),
        llm_config::provider.eq(provider.as_str()),
        llm_config::model.eq(model),
        llm_config::base_url.eq(base_url),
        llm_config::api_key.eq(api_key),
        llm_config::circuit_state.eq(CircuitState::Closed.as_str()),
        llm_config::circuit_failures.eq("[]"),
        llm_config::updated_at.eq(now),
    );
    super::memo::changed();
    on_backend!(conn, |c| diesel::insert_into(llm_config::table).values(row).on_conflict_do_nothing().execute(c))?;
    Ok(llm_config::table.find(ID).select(LlmConfigRow::as_select()).first(conn)?)
}

pub fn update_settings(conn: &mut DbConn, change: &SettingsChange, now: NaiveDateTime) -> StoreResult<LlmConfigRow> {
    super::memo::changed();
    diesel::update(llm_config::table.find(ID))
        .set((
            change,
            llm_config::last_error.eq(None::<String>),
            llm_config::parked.eq(None::<String>),
            llm_config::updated_at.eq(now),
        ))
        .execute(conn)?;
    Ok(llm_config::table.find(ID).select(LlmConfigRow::as_select()).first(conn)?)
}

pub fn set_last_error(conn: &mut DbConn, error: Option<&str>, now: NaiveDateTime) -> StoreResult<()> {
    super::memo::changed();
    diesel::update(llm_config::table.find(ID))
        .set((llm_config::last_error.eq(error), llm_config::updated_at.eq(now)))
        .execute(conn)?;
    Ok(())
}

pub fn save_circuit(conn: &mut DbConn, c: &CircuitRecord, now: NaiveDateTime) -> StoreResult<()> {
    save_circuit_of(conn, ID, c, now)
}

/// Persists upstream `id`'s circuit (gone already: nothing to do).
pub fn save_circuit_of(conn: &mut DbConn, id: i64, c: &CircuitRecord, now: NaiveDateTime) -> StoreResult<()> {
    super::memo::changed();
    diesel::update(llm_config::table.find(id))
        .set((
            llm_config::circuit_state.eq(&c.state),
            llm_config::circuit_failures.eq(&c.failures),
            llm_config::circuit_opened_at.eq(c.opened_at),
            llm_config::circuit_resets_at.eq(c.resets_at),
            llm_config::retry_after_until.eq(c.retry_after_until),
            llm_config::updated_at.eq(now),
        ))
        .execute(conn)?;
    Ok(())
}

/// [`save_circuit_of`], and announces the circuit's new state to every other process (it
/// opened, or closed).
pub fn save_circuit_announced(
    conn: &mut DbConn,
    origin: &str,
    id: i64,
    c: &CircuitRecord,
    now: NaiveDateTime,
) -> StoreResult<()> {
    save_circuit_of(conn, id, c, now)?;
    let event = Event::Circuit {
        origin: origin.to_owned(),
        upstream: id,
        state: c.state.clone(),
        opened_at: c.opened_at,
        resets_at: c.resets_at,
    };
    notify::send(conn, &event)
}

impl LlmConfigRow {
    pub fn circuit(&self) -> CircuitRecord {
        CircuitRecord {
            state: self.circuit_state.clone(),
            failures: self.circuit_failures.clone(),
            opened_at: self.circuit_opened_at,
            resets_at: self.circuit_resets_at,
            retry_after_until: self.retry_after_until,
        }
    }
}

/// Writes the singleton row without changing it: a commit that proves the database takes
/// writes (a full disk, a read-only database or a lost connection fails it).
pub fn probe_write(conn: &mut DbConn) -> StoreResult<()> {
    super::memo::changed();
    diesel::update(llm_config::table.find(ID)).set(llm_config::updated_at.eq(llm_config::updated_at)).execute(conn)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_row_names_its_provider_or_says_it_cannot() {
        let t = chrono::DateTime::from_timestamp(0, 0).unwrap().naive_utc();
        let row = |provider: &str| LlmConfigRow {
            id: ID,
            provider: provider.into(),
            model: "m".into(),
            base_url: "http://127.0.0.1:1".into(),
            api_key: None,
            last_error: None,
            circuit_state: CircuitState::Closed.as_str().into(),
            circuit_failures: "[]".into(),
            circuit_opened_at: None,
            circuit_resets_at: None,
            retry_after_until: None,
            updated_at: t,
        };
        for provider in Provider::ALL {
            assert_eq!(row(provider.as_str()).provider(), Ok(provider));
        }
        assert_eq!(row("gemini").provider(), Err(UnknownProvider("gemini".into())));
    }
}
