//! The reservations of a writer's batch made ahead of it in one statement on PostgreSQL
//! ([`super::ahead`]): each ledger row the batch's new items reserve at is reserved once, by
//! the sum of their bounds, where the sum fits under the row's limits (the conditional UPDATE
//! of [`super::usage::reserve`] with one row per ledger row: the database decides, and a row
//! another transaction changed is checked again as it is then). Whatever fits as a sum fits
//! one reservation after another.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Nullable, Text, Timestamp};

use super::usage::{Reserved, NOBODY, NO_LIMIT};
use super::{Kept, StoreResult};

/// One ledger row's share of the batch's reservations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Share {
    pub level: String,
    pub owner: String,
    pub day: String,
    /// The sum of the bounds reserved there: tokens, micro-dollars.
    pub sum: (i64, i64),
    /// The limits (`None`: no limit), and the player whose own limits stand before them.
    pub limits: (Option<i64>, Option<i64>),
    pub own: Option<i64>,
    pub at: NaiveDateTime,
}

#[derive(QueryableByName)]
struct Fitted {
    #[diesel(sql_type = Text)]
    level: String,
    #[diesel(sql_type = Text)]
    owner: String,
    #[diesel(sql_type = Nullable<BigInt>)]
    own_tokens: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    own_micros: Option<i64>,
}

const RESERVE: &str = "WITH s AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::int8[], \
             $6::int8[], $7::int8[], $8::int8[], $9::timestamp[]) \
             AS s(level, owner, day, tokens, micros, token_limit, micro_limit, own, at)) \
         UPDATE usage_days d SET reserved_tokens = d.reserved_tokens + s.tokens, \
             reserved_micros = d.reserved_micros + s.micros, updated_at = s.at \
         FROM s LEFT JOIN player_limits p ON p.user_id = s.own \
         WHERE d.level = s.level AND d.owner = s.owner AND d.day = s.day \
             AND d.spent_tokens + d.reserved_tokens + s.tokens <= coalesce(p.daily_tokens, s.token_limit) \
             AND d.spent_micros + d.reserved_micros + s.micros <= coalesce(p.daily_micros, s.micro_limit) \
         RETURNING d.level, d.owner, p.daily_tokens AS own_tokens, p.daily_micros AS own_micros";

const RELEASE: &str = "UPDATE usage_days d SET reserved_tokens = d.reserved_tokens - s.tokens, \
         reserved_micros = d.reserved_micros - s.micros \
     FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::int8[]) AS s(level, owner, day, tokens, micros) \
     WHERE d.level = s.level AND d.owner = s.owner AND d.day = s.day";

/// Reserves each share's sum at its row where it fits, in one statement kept prepared. Answers
/// the rows reserved at, as [`super::usage::reserve`] does (a row missing refused, or is not
/// there yet that day).
pub(super) fn reserve(c: &mut PgConnection, shares: &[Share]) -> StoreResult<Vec<Reserved>> {
    let text = |f: fn(&Share) -> &str| shares.iter().map(f).collect::<Vec<_>>();
    let number = |f: fn(&Share) -> i64| shares.iter().map(f).collect::<Vec<_>>();
    let fitted: Vec<Fitted> = Kept(
        diesel::sql_query(RESERVE)
            .bind::<Array<Text>, _>(text(|s| &s.level))
            .bind::<Array<Text>, _>(text(|s| &s.owner))
            .bind::<Array<Text>, _>(text(|s| &s.day))
            .bind::<Array<BigInt>, _>(number(|s| s.sum.0))
            .bind::<Array<BigInt>, _>(number(|s| s.sum.1))
            .bind::<Array<BigInt>, _>(number(|s| s.limits.0.unwrap_or(NO_LIMIT)))
            .bind::<Array<BigInt>, _>(number(|s| s.limits.1.unwrap_or(NO_LIMIT)))
            .bind::<Array<BigInt>, _>(number(|s| s.own.unwrap_or(NOBODY)))
            .bind::<Array<Timestamp>, _>(shares.iter().map(|s| s.at).collect::<Vec<_>>()),
    )
    .load(c)?;
    Ok(fitted.into_iter().map(|f| (f.level, f.owner, f.own_tokens, f.own_micros)).collect())
}

/// Takes back `(level, owner, day, tokens, micro-dollars)` reserved by [`reserve`] (its rows
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
