//! The stored LLM settings as the admin reads and changes them. Validating a change is the
//! edge's; this file only reads and writes the singleton row.

use chrono::NaiveDateTime;

use crate::store::llm_config::{self, LlmConfigRow, SettingsChange};
use crate::store::{Store, StoreResult};

/// The stored settings (`None` only before the migrations seeded them).
pub async fn stored(store: &Store) -> StoreResult<Option<LlmConfigRow>> {
    store.run(llm_config::get).await
}

/// Applies `change` and answers the settings as stored now.
pub async fn change(store: &Store, change: SettingsChange, now: NaiveDateTime) -> StoreResult<LlmConfigRow> {
    store.write(move |conn| llm_config::update_settings(conn, &change, now)).await
}
