//! How what a writer's batch kept aside ([`super::behind`]) is written: the holds, and the
//! ledger rows' changes summed per row, in the rows' order; just before the batch's commit on
//! PostgreSQL all of them with its notifications in one statement ([`write`]: arrays, one per
//! column; one prepared text for any number of each, an empty array writing nothing).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use chrono::NaiveDateTime;
use diesel::dsl::case_when;
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bool, Nullable, Text, Timestamp};
use diesel::upsert::excluded;

use super::notify::{self, CHANNEL};
use super::schema::{usage_days, usage_holds};
use super::{DbConn, Kept, StoreResult};
use crate::on_backend;

/// One change of the ledger's row (`level`, `owner`) of `day`: `reserve` added to what it
/// holds; `held` released (never below zero) and `charge` spent, as a settlement does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub level: String,
    pub owner: String,
    pub day: String,
    pub reserve: (i64, i64),
    pub held: (i64, i64),
    pub charge: (i64, i64),
    /// When it was made (the row's `updated_at`).
    pub at: NaiveDateTime,
}

impl Change {
    fn key(&self) -> (&str, &str, &str) {
        (&self.level, &self.owner, &self.day)
    }
}

/// The most rows a multi-row statement is kept prepared for (one statement per number of rows:
/// a batch's usual few are prepared once, a rare long one does not stay in the cache).
const KEEP_ROWS: usize = 32;

/// A hold to be inserted ([`super::usage::add_hold`]).
#[derive(Debug, Clone, PartialEq, Eq, Insertable)]
#[diesel(table_name = usage_holds)]
pub struct Hold {
    pub target: String,
    pub user_id: i64,
    pub studio: bool,
    pub day: String,
    pub model: String,
    pub tokens: i64,
    pub micros: i64,
    pub created_at: NaiveDateTime,
    pub project: Option<String>,
}

/// Writes `holds` and `changes` kept and not yet written, and sends `payloads` (serialized
/// events, in order; PostgreSQL only): on PostgreSQL in one statement ([`write`]).
pub(super) fn write_kept(
    conn: &mut DbConn,
    holds: &[Hold],
    changes: Vec<Change>,
    payloads: &[String],
) -> StoreResult<()> {
    let DbConn::Pg(c) = conn else {
        insert_holds(conn, holds)?;
        write_changes(conn, changes)?;
        return notify::announce(conn, payloads);
    };
    if holds.is_empty() && changes.is_empty() && payloads.is_empty() {
        return Ok(());
    }
    let rows = nets(&changes);
    for (level, owner, day) in write(c, holds, &rows, payloads)? {
        not_below_zero(c, level, owner, day)?;
    }
    Ok(())
}

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
fn write(
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

pub(super) fn insert_holds(conn: &mut DbConn, holds: &[Hold]) -> StoreResult<()> {
    match conn {
        // One statement for all, kept prepared for each number of rows up to [`KEEP_ROWS`].
        DbConn::Pg(c) if holds.len() > 1 => {
            let insert = diesel::insert_into(usage_holds::table).values(holds).returning(usage_holds::id);
            if holds.len() <= KEEP_ROWS {
                Kept(insert).get_results::<i64>(c)?;
            } else {
                insert.get_results::<i64>(c)?;
            }
        }
        _ => {
            // Kept prepared (run for its RETURNING row: Diesel keeps no statement `execute` ran).
            for hold in holds {
                on_backend!(conn, |c| Kept(
                    diesel::insert_into(usage_holds::table).values(hold).returning(usage_holds::id)
                )
                .get_result::<i64>(c))?;
            }
        }
    }
    Ok(())
}

/// A row's key and the net change of its reservations and spend, and when it was last changed.
struct Net<'a> {
    level: &'a str,
    owner: &'a str,
    day: &'a str,
    reserved: (i64, i64),
    spent: (i64, i64),
    at: NaiveDateTime,
}

/// `changes` summed per row, in the rows' order.
fn nets(changes: &[Change]) -> Vec<Net<'_>> {
    let mut rows: BTreeMap<(&str, &str, &str), Net<'_>> = BTreeMap::new();
    for change in changes {
        let (level, owner, day) = change.key();
        let net = rows.entry((level, owner, day)).or_insert(Net {
            level,
            owner,
            day,
            reserved: (0, 0),
            spent: (0, 0),
            at: change.at,
        });
        let add = |a: (i64, i64), b: (i64, i64)| (a.0.saturating_add(b.0), a.1.saturating_add(b.1));
        let sub = |a: (i64, i64), b: (i64, i64)| (a.0.saturating_sub(b.0), a.1.saturating_sub(b.1));
        net.reserved = add(net.reserved, sub(change.reserve, change.held));
        net.spent = add(net.spent, change.charge);
        net.at = net.at.max(change.at);
    }
    rows.into_values().collect()
}

/// Sums `changes` per row and writes them, in the rows' order: on PostgreSQL in one upsert, else
/// one upsert per row.
pub(super) fn write_changes(conn: &mut DbConn, changes: Vec<Change>) -> StoreResult<()> {
    let rows = nets(&changes);
    match conn {
        DbConn::Pg(c) if rows.len() > 1 => upsert_all(c, &rows),
        _ => rows.iter().try_for_each(|row| upsert(conn, row)),
    }
}

/// One row's change: the row is created when it is the day's first. One upsert, kept prepared.
fn upsert(conn: &mut DbConn, net: &Net<'_>) -> StoreResult<()> {
    let row = (
        usage_days::level.eq(net.level),
        usage_days::owner.eq(net.owner),
        usage_days::day.eq(net.day),
        usage_days::spent_tokens.eq(net.spent.0),
        usage_days::spent_micros.eq(net.spent.1),
        usage_days::reserved_tokens.eq(net.reserved.0.max(0)),
        usage_days::reserved_micros.eq(net.reserved.1.max(0)),
        usage_days::updated_at.eq(net.at),
    );
    // What it holds never goes below zero, as a settlement in place leaves it.
    let (tokens, micros) = net.reserved;
    let reserved_tokens =
        case_when((usage_days::reserved_tokens + tokens).gt(0_i64), usage_days::reserved_tokens + tokens)
            .otherwise(0_i64);
    let reserved_micros =
        case_when((usage_days::reserved_micros + micros).gt(0_i64), usage_days::reserved_micros + micros)
            .otherwise(0_i64);
    let change = (
        usage_days::spent_tokens.eq(usage_days::spent_tokens + net.spent.0),
        usage_days::spent_micros.eq(usage_days::spent_micros + net.spent.1),
        usage_days::reserved_tokens.eq(reserved_tokens),
        usage_days::reserved_micros.eq(reserved_micros),
        usage_days::updated_at.eq(net.at),
    );
    on_backend!(conn, |c| Kept(
        diesel::insert_into(usage_days::table)
            .values(row)
            .on_conflict((usage_days::level, usage_days::owner, usage_days::day))
            .do_update()
            .set(change)
            .returning(usage_days::level)
    )
    .get_results::<String>(c))?;
    Ok(())
}

/// Every row's change in one upsert (PostgreSQL; kept prepared for each number of rows up to
/// [`KEEP_ROWS`]).
fn upsert_all<'a>(conn: &mut PgConnection, rows: &[Net<'a>]) -> StoreResult<()> {
    let values: Vec<_> = rows
        .iter()
        .map(|net| {
            (
                usage_days::level.eq(net.level),
                usage_days::owner.eq(net.owner),
                usage_days::day.eq(net.day),
                usage_days::spent_tokens.eq(net.spent.0),
                usage_days::spent_micros.eq(net.spent.1),
                usage_days::reserved_tokens.eq(net.reserved.0),
                usage_days::reserved_micros.eq(net.reserved.1),
                usage_days::updated_at.eq(net.at),
            )
        })
        .collect();
    // What a row holds never goes below zero, as a settlement in place leaves it.
    let tokens = usage_days::reserved_tokens + excluded(usage_days::reserved_tokens);
    let micros = usage_days::reserved_micros + excluded(usage_days::reserved_micros);
    let change = (
        usage_days::spent_tokens.eq(usage_days::spent_tokens + excluded(usage_days::spent_tokens)),
        usage_days::spent_micros.eq(usage_days::spent_micros + excluded(usage_days::spent_micros)),
        usage_days::reserved_tokens.eq(case_when(tokens.gt(0_i64), tokens).otherwise(0_i64)),
        usage_days::reserved_micros.eq(case_when(micros.gt(0_i64), micros).otherwise(0_i64)),
        usage_days::updated_at.eq(excluded(usage_days::updated_at)),
    );
    let upsert = diesel::insert_into(usage_days::table)
        .values(&values)
        .on_conflict((usage_days::level, usage_days::owner, usage_days::day))
        .do_update()
        .set(change)
        .returning((
            usage_days::level,
            usage_days::owner,
            usage_days::day,
            usage_days::reserved_tokens,
            usage_days::reserved_micros,
        ));
    type Written = (String, String, String, i64, i64);
    let written: Vec<Written> =
        if rows.len() <= KEEP_ROWS { Kept(upsert).get_results(conn)? } else { upsert.get_results(conn)? };
    // A row whose reservations fall is there already (a reservation made it): it was updated,
    // and never holds less than zero. Should one not have been there, it was created as the
    // change stands.
    for (level, owner, day, _, _) in written.into_iter().filter(|w| w.3 < 0 || w.4 < 0) {
        not_below_zero(conn, level, owner, day)?;
    }
    Ok(())
}

/// Sets what a ledger row holds to zero where it is below, as a settlement in place leaves it.
fn not_below_zero(conn: &mut PgConnection, level: String, owner: String, day: String) -> StoreResult<()> {
    let (tokens, micros) = (usage_days::reserved_tokens, usage_days::reserved_micros);
    diesel::update(usage_days::table.find((level, owner, day)))
        .set((
            tokens.eq(case_when(tokens.gt(0_i64), tokens).otherwise(0_i64)),
            micros.eq(case_when(micros.gt(0_i64), micros).otherwise(0_i64)),
        ))
        .execute(conn)?;
    Ok(())
}
