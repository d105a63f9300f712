//! Content jobs ended in one statement on PostgreSQL: each job's removal, only while its worker
//! holds it, its item's result, and the holds its settlement will take (in the writer's batch:
//! [`super::behind::taken`]), for one job ([`super::content::finish`]) or for every job a
//! writer's batch ends ([`super::ahead`]).

use std::sync::OnceLock;

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bool, Nullable, Text, Timestamp};

use super::behind::HoldRow;
use super::content_row::{ContentRow, COLUMNS, PENDING};
use super::jobs::Ended;
use super::{Kept, StoreError, StoreResult};

/// One job's end: its result for the item `content_id`.
#[derive(Debug, Clone, Copy)]
pub struct Ending<'a> {
    pub job_id: i64,
    pub worker: &'a str,
    pub content_id: i64,
    pub status: &'a str,
    pub fields: &'a str,
    pub model: Option<&'a str>,
    pub reason: Option<&'a str>,
    pub at: NaiveDateTime,
    /// The target whose holds are taken with the end, for its settlement later in the batch.
    pub settles: Option<&'a str>,
}

#[derive(QueryableByName)]
struct Answer {
    #[diesel(embed)]
    item: ContentRow,
    #[diesel(sql_type = Bool)]
    written: bool,
    #[diesel(sql_type = BigInt)]
    job_id: i64,
    /// The holds taken, as a JSON array of rows (in id order).
    #[diesel(sql_type = Nullable<Text>)]
    holds: Option<String>,
}

/// What a job's end found: its id, the end, the holds it took.
pub(super) type JobEnded = (i64, Ended<ContentRow>, Vec<HoldRow>);

/// A hold as the statement answers it: a JSON array of its columns.
type HeldJson = (i64, String, i64, bool, String, String, i64, i64, NaiveDateTime, Option<String>);

/// `COLUMNS` of the table named `alias`.
pub(super) fn columns_of(alias: &str) -> String {
    COLUMNS.split(", ").map(|c| format!("{alias}.{c}")).collect::<Vec<_>>().join(", ")
}

/// The statement: the jobs removed where their workers hold them; their items finished where
/// pending; the holds of the targets named of the jobs removed taken; answered per job: the
/// item finished, else (the job removed, the item no longer pending) the item as it is, else
/// nothing (another worker's job). Content rows are never deleted. Every value is a bound
/// parameter (arrays, one per column).
fn sql() -> &'static str {
    static SQL: OnceLock<String> = OnceLock::new();
    SQL.get_or_init(|| {
        let (c, f) = (columns_of("c"), columns_of("f"));
        format!(
            "WITH v AS (SELECT * FROM unnest($1::int8[], $2::text[], $3::int8[], $4::text[], $5::text[], \
                 $6::text[], $7::text[], $8::timestamp[], $10::text[]) \
                 AS v(job_id, worker, content_id, status, fields, model, reason, ended_at, settles)), \
             done AS (DELETE FROM jobs j USING v WHERE j.id = v.job_id AND j.locked_by = v.worker RETURNING j.id), \
             finished AS (UPDATE content c SET status = v.status, fields = v.fields, model = v.model, \
                 reason = v.reason, version = c.version + 1, updated_at = v.ended_at \
                 FROM v WHERE c.id = v.content_id AND c.status = $9 AND v.job_id IN (SELECT id FROM done) \
                 RETURNING {c}, v.job_id), \
             held AS (DELETE FROM usage_holds h USING v WHERE h.target = v.settles \
                 AND v.job_id IN (SELECT id FROM done) \
                 RETURNING h.id, h.target, h.user_id, h.studio, h.day, h.model, h.tokens, h.micros, \
                     h.created_at, h.project), \
             answers AS (SELECT {f}, true AS written, f.job_id FROM finished f \
                 UNION ALL SELECT {c}, false AS written, v.job_id FROM content c JOIN v ON c.id = v.content_id \
                 WHERE v.job_id IN (SELECT id FROM done) \
                 AND NOT EXISTS (SELECT 1 FROM finished f WHERE f.job_id = v.job_id)) \
             SELECT a.*, (SELECT json_agg(json_build_array(h.id, h.target, h.user_id, h.studio, h.day, \
                     h.model, h.tokens, h.micros, h.created_at, h.project) ORDER BY h.id) \
                 FROM held h WHERE h.target = v.settles)::text AS holds \
                 FROM answers a JOIN v ON v.job_id = a.job_id"
        )
    })
}

/// Ends every job of `jobs` (no two for the same item) in one statement, kept prepared (one
/// text for any number of jobs): what each job's end found, by job id, with the holds taken of
/// the target it names (in id order; none when the job was another worker's).
pub(super) fn end<'a>(c: &mut diesel::PgConnection, jobs: &[Ending<'a>]) -> StoreResult<Vec<JobEnded>> {
    let text = |f: fn(&Ending<'a>) -> &'a str| jobs.iter().map(f).collect::<Vec<_>>();
    let maybe = |f: fn(&Ending<'a>) -> Option<&'a str>| jobs.iter().map(f).collect::<Vec<_>>();
    let number = |f: fn(&Ending<'a>) -> i64| jobs.iter().map(f).collect::<Vec<_>>();
    let answers: Vec<Answer> = Kept(
        diesel::sql_query(sql())
            .bind::<Array<BigInt>, _>(number(|e| e.job_id))
            .bind::<Array<Text>, _>(text(|e| e.worker))
            .bind::<Array<BigInt>, _>(number(|e| e.content_id))
            .bind::<Array<Text>, _>(text(|e| e.status))
            .bind::<Array<Text>, _>(text(|e| e.fields))
            .bind::<Array<Nullable<Text>>, _>(maybe(|e| e.model))
            .bind::<Array<Nullable<Text>>, _>(maybe(|e| e.reason))
            .bind::<Array<Timestamp>, _>(jobs.iter().map(|e| e.at).collect::<Vec<_>>())
            .bind::<Text, _>(PENDING)
            .bind::<Array<Nullable<Text>>, _>(maybe(|e| e.settles)),
    )
    .load(c)?;
    let mut ended: Vec<JobEnded> = jobs.iter().map(|e| (e.job_id, Ended::TakenOver, Vec::new())).collect();
    for Answer { item, written, job_id, holds } in answers {
        if let Some((_, end, taken)) = ended.iter_mut().find(|(id, _, _)| *id == job_id) {
            *end = Ended::Done(written.then_some(item));
            *taken = holds_of(holds.as_deref())?;
        }
    }
    Ok(ended)
}

fn holds_of(json: Option<&str>) -> StoreResult<Vec<HoldRow>> {
    let Some(json) = json else { return Ok(Vec::new()) };
    let rows: Vec<HeldJson> =
        serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("holds taken with a job's end: {e}")))?;
    Ok(rows
        .into_iter()
        .map(|(id, target, user_id, studio, day, model, tokens, micros, created_at, project)| HoldRow {
            id,
            target,
            user_id,
            studio,
            day,
            model,
            tokens,
            micros,
            created_at,
            project,
        })
        .collect())
}
