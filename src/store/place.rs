//! New content items and their claimed jobs written in one statement on PostgreSQL, with their
//! calls' reservations when they were planned ([`super::reserving`]): for one request
//! ([`super::content::request`]), or for every request of a writer's batch that would create
//! its item with a job claimed at once ([`super::ahead`]).

use std::collections::HashMap;
use std::sync::OnceLock;

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bool, Nullable, Text, Timestamp};

use super::content_row::{ContentRow, COLUMNS, PENDING};
use super::ending::columns_of;
use super::jobs::{self, JobKind, JobRow, Place};
use super::reserving::Share;
use super::usage::{Reserved, NOBODY, NO_LIMIT};
use super::{Kept, StoreError, StoreResult};
use crate::domain::jobs::JobStatus;

/// An item to find, or create pending with its job claimed by `worker`.
#[derive(Debug, Clone, Copy)]
pub struct Placing<'a> {
    pub kind: &'a str,
    pub subject_id: i64,
    pub owner: i64,
    /// The fields and context of a new item.
    pub fields: &'a str,
    pub context: &'a str,
    /// Whose job it is (its turn).
    pub player: i64,
    pub worker: &'a str,
    pub at: NaiveDateTime,
}

/// What the statement answers for one item: made with its job, or as it was already there.
#[derive(Debug)]
pub enum Placed {
    Made(ContentRow, JobRow),
    There(ContentRow),
}

impl Placing<'_> {
    pub(super) fn key(&self) -> Key {
        (self.kind.to_owned(), self.subject_id, self.owner)
    }
}

/// An item's key: kind, subject id, owner.
pub(super) type Key = (String, i64, i64);

#[derive(QueryableByName)]
struct Answer {
    #[diesel(embed)]
    item: ContentRow,
    #[diesel(sql_type = Bool)]
    written: bool,
    #[diesel(sql_type = Nullable<BigInt>)]
    job_id: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    job_turn: Option<i64>,
    /// The ledger rows the statement reserved at, as a JSON array of [`Reserved`] (the same on
    /// every row).
    #[diesel(sql_type = Nullable<Text>)]
    fitted: Option<String>,
}

/// One account of the reservation of the call of the `item`-th item (from 1) of a statement,
/// should it make the item: reserved with the others at its ledger row, by their sum, where the
/// sum fits ([`super::reserving`]).
#[derive(Debug, Clone)]
pub struct Charging<'a> {
    pub item: i64,
    pub share: &'a Share,
}

/// The statement: the items' rows inserted (a conflict leaves the one there), each new one's
/// job claimed, with its player's turn at priority 0 as [`jobs::insert_taking_turn`] decides it
/// (the same rule written out: the turn after the player's last job queued or running, never
/// before the one served; a player with none takes the running jobs' turn when it is before the
/// served one). A player's second and later jobs in the statement take the turns one after
/// another, as one statement each would; different players' jobs in one statement are
/// concurrent enqueues. The items are inserted in the order of their keys, the same on every
/// process: two batches inserting some of the same items wait on each other, never in a circle.
/// The shares of the calls of the items made are summed per ledger row, and each row reserved
/// once where the sum fits (the rows reserved at answered on every row, as JSON). Every value
/// is a bound parameter (arrays, one per column).
fn sql() -> &'static str {
    static SQL: OnceLock<String> = OnceLock::new();
    SQL.get_or_init(|| {
        let (m, c) = (columns_of("m"), columns_of("c"));
        format!(
            "WITH v AS (SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[], $4::text[], $5::text[], \
                 $6::int8[], $7::text[], $8::timestamp[]) WITH ORDINALITY \
                 AS v(kind, subject_id, owner_id, fields, context, player_id, worker, made_at, ord)), \
             made AS (INSERT INTO content (kind, subject_id, status, fields, context, version, created_at, \
                 updated_at, owner_id) SELECT kind, subject_id, $9, fields, context, 1, made_at, made_at, owner_id \
                 FROM v ORDER BY kind, subject_id, owner_id ON CONFLICT (kind, subject_id, owner_id) DO NOTHING \
                 RETURNING {COLUMNS}), \
             at_zero AS MATERIALIZED (SELECT (SELECT min(turn) FROM jobs WHERE priority = 0 AND status = $11) AS serving, \
                 (SELECT max(turn) FROM jobs WHERE priority = 0 AND status = $12) AS running), \
             mine AS (SELECT m.id AS target_id, v.player_id, v.worker, v.made_at, v.ord, \
                 row_number() OVER (PARTITION BY v.player_id ORDER BY v.ord) AS n \
                 FROM made m JOIN v ON v.kind = m.kind AND v.subject_id = m.subject_id AND v.owner_id = m.owner_id), \
             firsts AS (SELECT mine.*, z.serving, coalesce(\
                     CASE WHEN l.last IS NOT NULL THEN CASE WHEN z.serving > l.last + 1 THEN z.serving \
                         ELSE l.last + 1 END END, \
                     CASE WHEN z.running < z.serving THEN z.running ELSE coalesce(z.serving, z.running) END, \
                     0) AS first \
                 FROM mine CROSS JOIN at_zero z LEFT JOIN LATERAL (SELECT max(turn) AS last FROM jobs \
                     WHERE priority = 0 AND player_id = mine.player_id AND (status = $11 OR status = $12)) l ON true), \
             job AS (INSERT INTO jobs (kind, target_id, priority, status, attempts, run_after, locked_by, \
                 locked_at, created_at, updated_at, player_id, turn) \
                 SELECT $10, target_id, 0, $12, 1, made_at, worker, made_at, made_at, made_at, player_id, \
                     CASE WHEN n = 1 THEN first ELSE greatest(serving + n - 2, first + n - 1) END \
                 FROM firsts ORDER BY ord RETURNING id, target_id, turn), \
             acc AS (SELECT * FROM unnest($13::int8[], $14::text[], $15::text[], $16::text[], $17::int8[], \
                 $18::int8[], $19::int8[], $20::int8[], $21::int8[], $22::timestamp[]) \
                 AS acc(ord, level, owner, day, tokens, micros, token_limit, micro_limit, own, at)), \
             shares AS (SELECT acc.level, acc.owner, acc.day, sum(acc.tokens)::int8 AS tokens, \
                 sum(acc.micros)::int8 AS micros, min(acc.token_limit) AS token_limit, \
                 min(acc.micro_limit) AS micro_limit, min(acc.own) AS own, max(acc.at) AS at \
                 FROM acc JOIN mine ON mine.ord = acc.ord GROUP BY acc.level, acc.owner, acc.day), \
             fitted AS (UPDATE usage_days d SET reserved_tokens = d.reserved_tokens + s.tokens, \
                 reserved_micros = d.reserved_micros + s.micros, updated_at = s.at \
                 FROM shares s LEFT JOIN player_limits p ON p.user_id = s.own \
                 WHERE d.level = s.level AND d.owner = s.owner AND d.day = s.day \
                 AND d.spent_tokens + d.reserved_tokens + s.tokens <= coalesce(p.daily_tokens, s.token_limit) \
                 AND d.spent_micros + d.reserved_micros + s.micros <= coalesce(p.daily_micros, s.micro_limit) \
                 RETURNING d.level, d.owner, p.daily_tokens AS own_tokens, p.daily_micros AS own_micros), \
             answers AS (SELECT {m}, true AS written, job.id AS job_id, job.turn AS job_turn \
                 FROM made m JOIN job ON job.target_id = m.id \
             UNION ALL SELECT {c}, false AS written, NULL AS job_id, NULL AS job_turn \
                 FROM content c JOIN v ON c.kind = v.kind AND c.subject_id = v.subject_id AND c.owner_id = v.owner_id \
                 WHERE NOT EXISTS (SELECT 1 FROM made m WHERE m.kind = v.kind AND m.subject_id = v.subject_id \
                     AND m.owner_id = v.owner_id)) \
             SELECT a.*, (SELECT json_agg(json_build_array(f.level, f.owner, f.own_tokens, f.own_micros)) \
                 FROM fitted f)::text AS fitted FROM answers a"
        )
    })
}

/// Finds or creates every item of `items` (no two with the same key) in one statement, kept
/// prepared (one text for any number of items). An item answered with nothing was created by
/// another transaction that committed after the statement began: a read now finds it.
pub(super) fn place<'a>(c: &mut diesel::PgConnection, items: &[Placing<'a>]) -> StoreResult<Vec<(Key, Placed)>> {
    Ok(place_charging(c, items, &[])?.0)
}

/// The ledger rows a statement reserved at.
pub(super) type Fitted = Vec<Reserved>;

/// [`place`], reserving in the same statement the `charging` of the items it makes (each ledger
/// row once, by the sum of its shares of the items made, where it fits): also the rows it
/// reserved at.
pub(super) fn place_charging<'a>(
    c: &mut diesel::PgConnection,
    items: &[Placing<'a>],
    charging: &[Charging<'_>],
) -> StoreResult<(Vec<(Key, Placed)>, Fitted)> {
    let column = |f: fn(&Placing<'a>) -> &'a str| items.iter().map(f).collect::<Vec<_>>();
    let number = |f: fn(&Placing<'a>) -> i64| items.iter().map(f).collect::<Vec<_>>();
    let share = |f: fn(&Share) -> &str| charging.iter().map(|ch| f(ch.share)).collect::<Vec<_>>();
    let amount = |f: fn(&Share) -> i64| charging.iter().map(|ch| f(ch.share)).collect::<Vec<_>>();
    let answers: Vec<Answer> = Kept(
        diesel::sql_query(sql())
            .bind::<Array<Text>, _>(column(|p| p.kind))
            .bind::<Array<BigInt>, _>(number(|p| p.subject_id))
            .bind::<Array<BigInt>, _>(number(|p| p.owner))
            .bind::<Array<Text>, _>(column(|p| p.fields))
            .bind::<Array<Text>, _>(column(|p| p.context))
            .bind::<Array<BigInt>, _>(number(|p| p.player))
            .bind::<Array<Text>, _>(column(|p| p.worker))
            .bind::<Array<Timestamp>, _>(items.iter().map(|p| p.at).collect::<Vec<_>>())
            .bind::<Text, _>(PENDING)
            .bind::<Text, _>(JobKind::Content.as_str())
            .bind::<Text, _>(JobStatus::Queued.as_str())
            .bind::<Text, _>(JobStatus::Running.as_str())
            .bind::<Array<BigInt>, _>(charging.iter().map(|ch| ch.item).collect::<Vec<_>>())
            .bind::<Array<Text>, _>(share(|s| &s.level))
            .bind::<Array<Text>, _>(share(|s| &s.owner))
            .bind::<Array<Text>, _>(share(|s| &s.day))
            .bind::<Array<BigInt>, _>(amount(|s| s.sum.0))
            .bind::<Array<BigInt>, _>(amount(|s| s.sum.1))
            .bind::<Array<BigInt>, _>(amount(|s| s.limits.0.unwrap_or(NO_LIMIT)))
            .bind::<Array<BigInt>, _>(amount(|s| s.limits.1.unwrap_or(NO_LIMIT)))
            .bind::<Array<BigInt>, _>(amount(|s| s.own.unwrap_or(NOBODY)))
            .bind::<Array<Timestamp>, _>(charging.iter().map(|ch| ch.share.at).collect::<Vec<_>>()),
    )
    .load(c)?;
    let fitted: Vec<Reserved> = match answers.first().and_then(|a| a.fitted.as_deref()) {
        Some(json) => serde_json::from_str(json)
            .map_err(|e| StoreError::Corrupt(format!("the rows a statement reserved at: {e}")))?,
        None => Vec::new(),
    };
    let by_key: HashMap<Key, &Placing<'_>> = items.iter().map(|p| (p.key(), p)).collect();
    let placed = answers
        .into_iter()
        .filter_map(|Answer { item, written, job_id, job_turn, .. }| {
            let key = (item.kind.clone(), item.subject_id, item.owner_id);
            let placing = by_key.get(&key)?;
            let placed = match (written, job_id, job_turn) {
                (true, Some(id), Some(turn)) => {
                    let place = Place::new(0, placing.player);
                    let job = jobs::claimed_row(id, JobKind::Content, item.id, place, placing.worker, turn, placing.at);
                    Placed::Made(item, job)
                }
                _ => Placed::There(item),
            };
            Some((key, placed))
        })
        .collect();
    Ok((placed, fitted))
}
