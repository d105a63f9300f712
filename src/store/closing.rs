//! What a writer's batch writes just before its commit, in one statement on PostgreSQL
//! ([`super::behind::flush`]): the holds it kept, its ledger rows' changes (one upsert, in
//! the rows' order) and its notifications, in order. One prepared text for any number of
//! each (arrays, one per column; an empty array writes nothing).

use std::sync::OnceLock;

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bool, Nullable, Text, Timestamp};

use super::behind::{Hold, Net};
use super::notify::CHANNEL;
use super::{Kept, StoreResult};

/// A ledger row the upsert left holding less than zero (created by it: see [`write`]).
#[derive(QueryableByName)]
struct Below {
    #[diesel(sql_type = BigInt)]
    sent: i64,
    #[diesel(sql_type = Nullable<Text>)]
    level: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    owner: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    day: Option<String>,
}

/// The statement. A row's reservations never go below zero where it was there already; the
/// notifications go out in the order given (one row each, always sent: the statement's one
/// answer row counts them).
fn sql() -> &'static str {
    static SQL: OnceLock<String> = OnceLock::new();
    SQL.get_or_init(|| {
        let clamp = |column: &str| {
            format!(
                "{column} = CASE WHEN usage_days.{column} + excluded.{column} > 0 \
                 THEN usage_days.{column} + excluded.{column} ELSE 0 END"
            )
        };
        format!(
            "WITH held AS (INSERT INTO usage_holds (target, user_id, studio, day, model, tokens, micros, \
                 created_at, project) \
                 SELECT * FROM unnest($1::text[], $2::int8[], $3::bool[], $4::text[], $5::text[], $6::int8[], \
                     $7::int8[], $8::timestamp[], $9::text[])), \
             days AS (INSERT INTO usage_days (level, owner, day, spent_tokens, spent_micros, reserved_tokens, \
                 reserved_micros, updated_at) \
                 SELECT * FROM unnest($10::text[], $11::text[], $12::text[], $13::int8[], $14::int8[], \
                     $15::int8[], $16::int8[], $17::timestamp[]) \
                 ON CONFLICT (level, owner, day) DO UPDATE SET \
                     spent_tokens = usage_days.spent_tokens + excluded.spent_tokens, \
                     spent_micros = usage_days.spent_micros + excluded.spent_micros, \
                     {tokens}, {micros}, updated_at = excluded.updated_at \
                 RETURNING level, owner, day, reserved_tokens, reserved_micros), \
             told AS (SELECT pg_notify($18, payload) FROM unnest($19::text[]) AS payload), \
             sent AS (SELECT count(*) AS sent FROM told) \
             SELECT sent.sent, days.level, days.owner, days.day FROM sent LEFT JOIN days \
                 ON days.reserved_tokens < 0 OR days.reserved_micros < 0",
            tokens = clamp("reserved_tokens"),
            micros = clamp("reserved_micros"),
        )
    })
}

/// Inserts `holds` (in order), upserts `rows` (in order: one key once) and sends `payloads` on
/// [`CHANNEL`], in one statement kept prepared. Answers the rows it created holding less than
/// zero (a change whose reservations fall finds its row there: a reservation made it; should
/// one not be, the caller sets what it holds to zero, as a settlement in place leaves it).
pub(super) fn write(
    c: &mut PgConnection,
    holds: &[Hold],
    rows: &[Net<'_>],
    payloads: &[String],
) -> StoreResult<Vec<(String, String, String)>> {
    let hold = |f: fn(&Hold) -> i64| holds.iter().map(f).collect::<Vec<_>>();
    let day = |f: fn(&Net<'_>) -> i64| rows.iter().map(f).collect::<Vec<_>>();
    let answers: Vec<Below> = Kept(
        diesel::sql_query(sql())
            .bind::<Array<Text>, _>(holds.iter().map(|h| h.target.as_str()).collect::<Vec<_>>())
            .bind::<Array<BigInt>, _>(hold(|h| h.user_id))
            .bind::<Array<Bool>, _>(holds.iter().map(|h| h.studio).collect::<Vec<_>>())
            .bind::<Array<Text>, _>(holds.iter().map(|h| h.day.as_str()).collect::<Vec<_>>())
            .bind::<Array<Text>, _>(holds.iter().map(|h| h.model.as_str()).collect::<Vec<_>>())
            .bind::<Array<BigInt>, _>(hold(|h| h.tokens))
            .bind::<Array<BigInt>, _>(hold(|h| h.micros))
            .bind::<Array<Timestamp>, _>(holds.iter().map(|h| h.created_at).collect::<Vec<NaiveDateTime>>())
            .bind::<Array<Nullable<Text>>, _>(holds.iter().map(|h| h.project.as_deref()).collect::<Vec<_>>())
            .bind::<Array<Text>, _>(rows.iter().map(|r| r.level).collect::<Vec<_>>())
            .bind::<Array<Text>, _>(rows.iter().map(|r| r.owner).collect::<Vec<_>>())
            .bind::<Array<Text>, _>(rows.iter().map(|r| r.day).collect::<Vec<_>>())
            .bind::<Array<BigInt>, _>(day(|r| r.spent.0))
            .bind::<Array<BigInt>, _>(day(|r| r.spent.1))
            .bind::<Array<BigInt>, _>(day(|r| r.reserved.0))
            .bind::<Array<BigInt>, _>(day(|r| r.reserved.1))
            .bind::<Array<Timestamp>, _>(rows.iter().map(|r| r.at).collect::<Vec<_>>())
            .bind::<Text, _>(CHANNEL)
            .bind::<Array<Text>, _>(payloads),
    )
    .load(c)?;
    debug_assert!(answers.first().is_some_and(|a| a.sent == payloads.len() as i64));
    Ok(answers.into_iter().filter_map(|Below { level, owner, day, .. }| Some((level?, owner?, day?))).collect())
}
