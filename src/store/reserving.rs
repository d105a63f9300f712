//! The reservations of a writer's batch made ahead of it on PostgreSQL ([`super::ahead`]): the
//! shares of its new items' calls are reserved in the statement that makes the items
//! ([`super::place`]): each ledger row once, by the sum of the shares of the items made, where
//! the sum fits under the row's limits (the conditional UPDATE of [`super::usage::reserve`]
//! with one row per ledger row: the database decides, and a row another transaction changed is
//! checked again as it is then). Whatever fits as a sum fits one reservation after another.
//! What the calls whose rows would not all take it added elsewhere is taken back ([`release`]).

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Text};

use super::StoreResult;

/// One call's share of a ledger row's reservation (summed there with the batch's others).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Share {
    pub level: String,
    pub owner: String,
    pub day: String,
    /// The call's bound: tokens, micro-dollars.
    pub sum: (i64, i64),
    /// The limits (`None`: no limit), and the player whose own limits stand before them.
    pub limits: (Option<i64>, Option<i64>),
    pub own: Option<i64>,
    pub at: NaiveDateTime,
}

const RELEASE: &str = "UPDATE usage_days d SET reserved_tokens = d.reserved_tokens - s.tokens, \
         reserved_micros = d.reserved_micros - s.micros \
     FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::int8[]) AS s(level, owner, day, tokens, micros) \
     WHERE d.level = s.level AND d.owner = s.owner AND d.day = s.day";

/// Takes back `(level, owner, day, tokens, micro-dollars)` reserved ahead (its rows
/// are held by this transaction since).
pub(super) fn release(c: &mut PgConnection, taken_back: &[(&str, &str, &str, i64, i64)]) -> StoreResult<()> {
    diesel::sql_query(RELEASE)
        .bind::<Array<Text>, _>(taken_back.iter().map(|t| t.0).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(taken_back.iter().map(|t| t.1).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(taken_back.iter().map(|t| t.2).collect::<Vec<_>>())
        .bind::<Array<BigInt>, _>(taken_back.iter().map(|t| t.3).collect::<Vec<_>>())
        .bind::<Array<BigInt>, _>(taken_back.iter().map(|t| t.4).collect::<Vec<_>>())
        .execute(c)?;
    Ok(())
}
