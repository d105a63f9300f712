//! The stored LLM settings and upstreams as the admin reads and changes them. Validating a
//! change is the edge's; this file only reads and writes the rows (and stops a removed
//! upstream's circuit).

use chrono::NaiveDateTime;

use super::upstreams::Upstreams;
use crate::store::llm_config::{self, LlmConfigRow, SettingsChange};
use crate::store::upstreams::{self, NewUpstream, UpstreamChange, UpstreamRow};
use crate::store::{Store, StoreResult};

/// The stored settings (`None` only before the migrations seeded them).
pub async fn stored(store: &Store) -> StoreResult<Option<LlmConfigRow>> {
    store.run(llm_config::get).await
}

/// Applies `change` and answers the settings as stored now.
pub async fn change(store: &Store, change: SettingsChange, now: NaiveDateTime) -> StoreResult<LlmConfigRow> {
    store.write(move |conn| llm_config::update_settings(conn, &change, now)).await
}

/// Every upstream, by `priority`, then `id` (PROTOCOL §7).
pub async fn upstreams(store: &Store) -> StoreResult<Vec<UpstreamRow>> {
    store.run(upstreams::all).await
}

pub async fn upstream(store: &Store, id: i64) -> StoreResult<Option<UpstreamRow>> {
    store.run(move |conn| upstreams::find(conn, id)).await
}

pub async fn add_upstream(store: &Store, new: NewUpstream, now: NaiveDateTime) -> StoreResult<UpstreamRow> {
    store.write(move |conn| upstreams::insert(conn, &new, now)).await
}

/// Applies `change` to upstream `id`; `None` when there is none.
pub async fn change_upstream(
    store: &Store,
    id: i64,
    change: UpstreamChange,
    now: NaiveDateTime,
) -> StoreResult<Option<UpstreamRow>> {
    store.write(move |conn| upstreams::update(conn, id, &change, now)).await
}

/// Removes upstream `id` (never the first) and stops its circuit; whether there was one.
pub async fn remove_upstream(store: &Store, circuits: &Upstreams, id: i64) -> StoreResult<bool> {
    let removed = store.write(move |conn| upstreams::delete(conn, id)).await?;
    circuits.forget(id);
    Ok(removed)
}

/// Unparks upstream `id` (its circuit is being reset).
pub async fn unpark(store: &Store, id: i64, now: NaiveDateTime) -> StoreResult<()> {
    store.write(move |conn| upstreams::set_parked(conn, id, None, now)).await
}
