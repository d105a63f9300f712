//! Prices, budgets and cost events: money in integer micro-dollars.
//!
//! A budget row keeps `spent + reserved <= limit`: reservations are taken with one conditional
//! UPDATE (the database checks the sum, so concurrent reservations can never overshoot), and
//! every change of a run's reservation happens in the same transaction as the budget's.

use chrono::NaiveDateTime;
use diesel::dsl::case_when;
use diesel::prelude::*;

use super::schema::{budgets, cost_events, prices, runs};
use super::{write_tx, DbConn, StoreResult};
use crate::domain::money::Price;
use crate::domain::runs::RunStatus;
use crate::on_backend;

#[derive(Debug, Clone, Queryable)]
pub struct PriceRow {
    pub model: String,
    pub input_micros: i64,
    pub output_micros: i64,
    pub cache_read_micros: i64,
    pub cache_write_micros: i64,
    pub updated_at: NaiveDateTime,
}

impl PriceRow {
    pub fn price(&self) -> Price {
        Price {
            input: self.input_micros,
            output: self.output_micros,
            cache_read: self.cache_read_micros,
            cache_write: self.cache_write_micros,
        }
    }
}

#[derive(Debug, Clone, Queryable)]
pub struct BudgetRow {
    pub project_id: String,
    pub limit_micros: i64,
    pub spent_micros: i64,
    pub reserved_micros: i64,
    pub updated_at: NaiveDateTime,
}

#[derive(Debug, Clone, Queryable)]
pub struct CostEventRow {
    pub id: i64,
    pub run_id: String,
    pub project_id: String,
    pub model: String,
    pub attempt: i32,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_read_tokens: i64,
    pub cache_write_tokens: i64,
    pub cost_micros: i64,
    pub created_at: NaiveDateTime,
}

#[derive(Insertable)]
#[diesel(table_name = cost_events)]
pub struct NewCostEvent<'a> {
    pub run_id: &'a str,
    pub project_id: &'a str,
    pub model: &'a str,
    pub attempt: i32,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_read_tokens: i64,
    pub cache_write_tokens: i64,
    pub cost_micros: i64,
    pub created_at: NaiveDateTime,
}

pub fn price(conn: &mut DbConn, model: &str) -> StoreResult<Option<Price>> {
    Ok(price_row(conn, model)?.map(|r| r.price()))
}

/// The price of `model` (read once per batch of the writer's: [`super::memo`]).
pub fn price_row(conn: &mut DbConn, model: &str) -> StoreResult<Option<PriceRow>> {
    super::memo::kept("price", model, || Ok(prices::table.find(model).first(conn).optional()?))
}

pub fn prices(conn: &mut DbConn) -> StoreResult<Vec<PriceRow>> {
    Ok(prices::table.order(prices::model.asc()).load(conn)?)
}

pub fn put_price(conn: &mut DbConn, model: &str, p: &Price, now: NaiveDateTime) -> StoreResult<()> {
    super::memo::changed();
    let values = (
        prices::model.eq(model),
        prices::input_micros.eq(p.input),
        prices::output_micros.eq(p.output),
        prices::cache_read_micros.eq(p.cache_read),
        prices::cache_write_micros.eq(p.cache_write),
        prices::updated_at.eq(now),
    );
    let change = (
        prices::input_micros.eq(p.input),
        prices::output_micros.eq(p.output),
        prices::cache_read_micros.eq(p.cache_read),
        prices::cache_write_micros.eq(p.cache_write),
        prices::updated_at.eq(now),
    );
    on_backend!(conn, |c| diesel::insert_into(prices::table)
        .values(values)
        .on_conflict(prices::model)
        .do_update()
        .set(change)
        .execute(c))?;
    Ok(())
}

pub fn budget(conn: &mut DbConn, project_id: &str) -> StoreResult<Option<BudgetRow>> {
    Ok(budgets::table.find(project_id).first(conn).optional()?)
}

/// Sets a project's limit. A new budget starts from what the project has already spent and
/// what its unfinished runs hold, so it covers history, not only what comes after. Two
/// first PUTs at once (PostgreSQL): the later insert becomes an update of the limit.
pub fn put_budget(conn: &mut DbConn, project_id: &str, limit: i64, now: NaiveDateTime) -> StoreResult<BudgetRow> {
    write_tx(conn, |conn| {
        if budget(conn, project_id)?.is_some() {
            return Ok(diesel::update(budgets::table.find(project_id))
                .set((budgets::limit_micros.eq(limit), budgets::updated_at.eq(now)))
                .returning(budgets::all_columns)
                .get_result(conn)?);
        }
        let spent: i64 = cost_events::table
            .filter(cost_events::project_id.eq(project_id))
            .select(cost_events::cost_micros)
            .load::<i64>(conn)?
            .into_iter()
            .sum();
        let reserved = active_reservations(conn, Some(project_id))?.into_iter().map(|(_, r)| r).sum::<i64>();
        let values = (
            budgets::project_id.eq(project_id),
            budgets::limit_micros.eq(limit),
            budgets::spent_micros.eq(spent),
            budgets::reserved_micros.eq(reserved),
            budgets::updated_at.eq(now),
        );
        let change = (budgets::limit_micros.eq(limit), budgets::updated_at.eq(now));
        Ok(on_backend!(conn, |c| diesel::insert_into(budgets::table)
            .values(values)
            .on_conflict(budgets::project_id)
            .do_update()
            .set(change)
            .returning(budgets::all_columns)
            .get_result(c))?)
    })
}

/// Reserves `amount` if the project's budget has room: one conditional UPDATE, so the database
/// decides and concurrent reservations cannot overshoot. `false` when it does not fit.
pub fn reserve(conn: &mut DbConn, project_id: &str, amount: i64, now: NaiveDateTime) -> StoreResult<bool> {
    let updated = diesel::update(
        budgets::table
            .filter(budgets::project_id.eq(project_id))
            .filter((budgets::spent_micros + budgets::reserved_micros + amount).le(budgets::limit_micros)),
    )
    .set((budgets::reserved_micros.eq(budgets::reserved_micros + amount), budgets::updated_at.eq(now)))
    .execute(conn)?;
    Ok(updated == 1)
}

/// Moves a finished attempt's money: `charge` becomes spent, `held` is no longer reserved.
/// `reserved` saturates at zero: a budget that drifted from its runs (edited by hand) must not
/// fail the settlement, which would hand the job back and run it again uncharged.
pub fn settle(conn: &mut DbConn, project_id: &str, held: i64, charge: i64, now: NaiveDateTime) -> StoreResult<()> {
    let released = case_when(budgets::reserved_micros.gt(held), budgets::reserved_micros - held).otherwise(0_i64);
    diesel::update(budgets::table.filter(budgets::project_id.eq(project_id)))
        .set((
            budgets::spent_micros.eq(budgets::spent_micros + charge),
            budgets::reserved_micros.eq(released),
            budgets::updated_at.eq(now),
        ))
        .execute(conn)?;
    Ok(())
}

pub fn add_cost_event(conn: &mut DbConn, event: &NewCostEvent<'_>) -> StoreResult<()> {
    diesel::insert_into(cost_events::table).values(event).execute(conn)?;
    Ok(())
}

pub fn cost_events(conn: &mut DbConn, project_id: Option<&str>, limit: i64) -> StoreResult<Vec<CostEventRow>> {
    let mut query = cost_events::table.order(cost_events::id.desc()).limit(limit).into_boxed();
    if let Some(p) = project_id {
        query = query.filter(cost_events::project_id.eq(p.to_owned()));
    }
    Ok(query.load(conn)?)
}

pub fn total_cost(conn: &mut DbConn, project_id: Option<&str>) -> StoreResult<i64> {
    // PostgreSQL's SUM of a BIGINT is a NUMERIC, which the DSL cannot cast back: cast in SQL.
    let total = diesel::dsl::sql::<diesel::sql_types::Nullable<diesel::sql_types::BigInt>>(
        "CAST(SUM(cost_events.cost_micros) AS BIGINT)",
    );
    let mut query = cost_events::table.select(total).into_boxed();
    if let Some(p) = project_id {
        query = query.filter(cost_events::project_id.eq(p.to_owned()));
    }
    Ok(query.first::<Option<i64>>(conn)?.unwrap_or(0))
}

/// (project, reservation) of every unfinished run that holds one.
fn active_reservations(conn: &mut DbConn, project_id: Option<&str>) -> StoreResult<Vec<(String, i64)>> {
    let mut query = runs::table
        .filter(runs::status.eq_any(RunStatus::ACTIVE.map(RunStatus::as_str)))
        .filter(runs::reserved_micros.gt(0))
        .select((runs::project_id, runs::reserved_micros))
        .into_boxed();
    if let Some(p) = project_id {
        query = query.filter(runs::project_id.eq(p.to_owned()));
    }
    Ok(query.load(conn)?)
}

/// At start: releases reservations that finished runs still hold (a crash between an
/// attempt's end and its settlement cannot happen, the two share a transaction, but a budget
/// edited by hand can drift) and sets every budget's `reserved` to what its unfinished runs
/// hold. Returns how many budgets changed.
///
/// Other processes may be reserving and settling meanwhile (PostgreSQL): the budget rows are
/// locked first, so every transaction that changes a run's reservation (it updates its budget
/// row first) has committed before the sum is read, and none can commit until this one has.
/// On SQLite `write_tx` holds the database's write lock from the start.
pub fn reconcile(conn: &mut DbConn, now: NaiveDateTime) -> StoreResult<usize> {
    write_tx(conn, |conn| {
        let all: Vec<BudgetRow> = match conn {
            DbConn::Pg(c) => budgets::table.order(budgets::project_id.asc()).for_update().load(c)?,
            DbConn::Sqlite(c) => budgets::table.order(budgets::project_id.asc()).load(c)?,
        };
        diesel::update(
            runs::table
                .filter(runs::status.ne_all(RunStatus::ACTIVE.map(RunStatus::as_str)))
                .filter(runs::reserved_micros.ne(0)),
        )
        .set(runs::reserved_micros.eq(0))
        .execute(conn)?;
        let mut held = std::collections::HashMap::<String, i64>::new();
        for (project, amount) in active_reservations(conn, None)? {
            *held.entry(project).or_default() += amount;
        }
        let mut changed = 0;
        for b in all {
            let want = held.get(&b.project_id).copied().unwrap_or(0);
            if b.reserved_micros != want {
                diesel::update(budgets::table.find(&b.project_id))
                    .set((budgets::reserved_micros.eq(want), budgets::updated_at.eq(now)))
                    .execute(conn)?;
                changed += 1;
            }
        }
        Ok(changed)
    })
}
