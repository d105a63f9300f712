//! The admin's reads and settings of runs over the store: the run list and dead letters,
//! what was spent, budgets and prices. The HTTP edge calls these; nothing here builds a
//! response or decides who may call it.

use chrono::NaiveDateTime;

use crate::domain::money::Price;
use crate::domain::runs::RunStatus;
use crate::store::billing::{self, BudgetRow, CostEventRow, PriceRow};
use crate::store::runs::{self as rows, RunRow, Unreadable};
use crate::store::{Store, StoreResult};

/// Runs, newest first, with the rows that could not be read.
pub async fn list(
    store: &Store,
    project: Option<String>,
    status: Option<RunStatus>,
    limit: i64,
) -> StoreResult<(Vec<RunRow>, Vec<Unreadable>)> {
    store.run(move |conn| rows::list_readable(conn, project.as_deref(), status, limit)).await
}

/// Everything spent (by one project, or all), in micro-dollars, and the newest cost events.
pub async fn costs(store: &Store, project: Option<String>, limit: i64) -> StoreResult<(i64, Vec<CostEventRow>)> {
    store
        .run(move |conn| {
            let project = project.as_deref();
            Ok((billing::total_cost(conn, project)?, billing::cost_events(conn, project, limit)?))
        })
        .await
}

/// A project's budget, if it has one, and what it has spent.
pub async fn budget(store: &Store, project: String) -> StoreResult<(Option<BudgetRow>, i64)> {
    store.run(move |conn| Ok((billing::budget(conn, &project)?, billing::total_cost(conn, Some(&project))?))).await
}

/// Sets a project's spending limit (micro-dollars).
pub async fn set_budget(store: &Store, project: String, limit: i64, now: NaiveDateTime) -> StoreResult<BudgetRow> {
    store.write(move |conn| billing::put_budget(conn, &project, limit, now)).await
}

pub async fn prices(store: &Store) -> StoreResult<Vec<PriceRow>> {
    store.run(billing::prices).await
}

/// Sets one model's prices.
pub async fn set_price(store: &Store, model: String, price: Price, now: NaiveDateTime) -> StoreResult<()> {
    store.write(move |conn| billing::put_price(conn, &model, &price, now)).await
}
