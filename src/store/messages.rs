//! Lobby messages: written together with their mood job, read back as history, and settled
//! (mood + the job's deletion) in one transaction by the worker that holds the job.

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;

use super::jobs::{self, Ended, JobKind};
use super::notify;
use super::schema::{jobs as jobs_t, messages, user_days, users};
use super::{write_tx, DbConn, StoreResult};
use crate::domain::events::{Event, MessageChange};
use crate::domain::lobby::{Message, Mood, MoodStatus};

/// What a message's mood holds while its job has not committed one.
pub const MOOD_PENDING: &str = MoodStatus::Pending.as_str();

#[derive(Debug, Clone, Queryable)]
pub struct MessageRow {
    pub id: i64,
    pub user_id: i64,
    pub nickname: String,
    pub text: String,
    pub mood: String,
    pub mood_status: String,
    pub created_at: NaiveDateTime,
}

impl MessageRow {
    /// An unknown stored mood reads as `neutral` / `fallback` rather than failing the history.
    pub fn message(&self) -> Message {
        let mood = Mood::parse(&self.mood);
        let status = MoodStatus::parse(&self.mood_status);
        let (mood, mood_status) = match (mood, status) {
            (Some(m), Some(s)) => (m, s),
            _ => (Mood::Neutral, MoodStatus::Fallback),
        };
        Message {
            id: self.id,
            user_id: self.user_id,
            nickname: self.nickname.clone(),
            text: self.text.clone(),
            mood,
            mood_status,
            created_at: DateTime::from_naive_utc_and_offset(self.created_at, Utc),
        }
    }
}

#[derive(Insertable)]
#[diesel(table_name = messages)]
struct NewMessage<'a> {
    user_id: i64,
    nickname: &'a str,
    text: &'a str,
    mood: &'a str,
    mood_status: &'a str,
    created_at: NaiveDateTime,
}

/// Stores a message (mood `neutral` / `pending`) and its mood job in one transaction; refused
/// with [`StoreError::QueueFull`](super::StoreError::QueueFull) when `queue_limit` player jobs
/// are queued already.
pub fn insert(
    conn: &mut DbConn,
    origin: &str,
    user_id: i64,
    nickname: &str,
    text: &str,
    queue_limit: i64,
    now: NaiveDateTime,
) -> StoreResult<MessageRow> {
    jobs::check_player_queue(conn, queue_limit)?;
    write_tx(conn, |conn| {
        let row: MessageRow = diesel::insert_into(messages::table)
            .values(NewMessage {
                user_id,
                nickname,
                text,
                mood: Mood::Neutral.as_str(),
                mood_status: MOOD_PENDING,
                created_at: now,
            })
            .returning(messages::all_columns)
            .get_result(conn)?;
        jobs::enqueue(conn, JobKind::Mood, row.id, 0, now)?;
        message_changed(conn, origin, MessageChange::New, row.id)?;
        Ok(row)
    })
}

pub fn find(conn: &mut DbConn, id: i64) -> StoreResult<Option<MessageRow>> {
    Ok(messages::table.find(id).first(conn).optional()?)
}

/// The latest `limit` messages, oldest first.
pub fn recent(conn: &mut DbConn, limit: i64) -> StoreResult<Vec<MessageRow>> {
    let mut rows: Vec<MessageRow> = messages::table.order(messages::id.desc()).limit(limit).load(conn)?;
    rows.reverse();
    Ok(rows)
}

/// The end of a mood job: the mood and the job's deletion, committed together, only while the
/// job is this worker's.
pub fn finish_mood(
    conn: &mut DbConn,
    origin: &str,
    job_id: i64,
    worker: &str,
    message_id: i64,
    mood: &str,
    mood_status: &str,
) -> StoreResult<Ended<MessageRow>> {
    write_tx(conn, |conn| {
        if !jobs::complete(conn, job_id, worker)? {
            return Ok(Ended::TakenOver);
        }
        let row = diesel::update(messages::table.find(message_id).filter(messages::mood_status.eq(MOOD_PENDING)))
            .set((messages::mood.eq(mood), messages::mood_status.eq(mood_status)))
            .returning(messages::all_columns)
            .get_result::<MessageRow>(conn)
            .optional()?;
        if let Some(row) = &row {
            message_changed(conn, origin, MessageChange::Mood, row.id)?;
        }
        Ok(Ended::Done(row))
    })
}

pub fn count(conn: &mut DbConn) -> StoreResult<i64> {
    Ok(messages::table.count().get_result(conn)?)
}

/// Messages per user, for the given users.
pub fn count_by_user(conn: &mut DbConn, user_ids: &[i64]) -> StoreResult<Vec<(i64, i64)>> {
    if user_ids.is_empty() {
        return Ok(Vec::new());
    }
    Ok(messages::table
        .filter(messages::user_id.eq_any(user_ids))
        .group_by(messages::user_id)
        .select((messages::user_id, diesel::dsl::count_star()))
        .load(conn)?)
}

/// A page of users, most recently seen first (admin).
pub fn users_page(
    conn: &mut DbConn,
    limit: i64,
    offset: i64,
) -> StoreResult<Vec<(i64, String, NaiveDateTime, NaiveDateTime)>> {
    Ok(users::table
        .order((users::last_seen_at.desc(), users::id.desc()))
        .limit(limit)
        .offset(offset)
        .select((users::id, users::nickname, users::created_at, users::last_seen_at))
        .load(conn)?)
}

pub fn user_count(conn: &mut DbConn) -> StoreResult<i64> {
    Ok(users::table.count().get_result(conn)?)
}

/// Every (user, UTC day seen) row, by user then day (retention).
pub fn user_days(conn: &mut DbConn) -> StoreResult<Vec<(i64, String)>> {
    Ok(user_days::table
        .order((user_days::user_id.asc(), user_days::day.asc()))
        .select((user_days::user_id, user_days::day))
        .load(conn)?)
}

/// Announces a message change to the other processes; call inside the transaction that made it.
fn message_changed(conn: &mut DbConn, origin: &str, change: MessageChange, id: i64) -> StoreResult<()> {
    notify::send(conn, &Event::Message { origin: origin.to_owned(), change, id })
}

/// Gives a mood job to each message whose mood is pending and has none ([`jobs::adopt`]).
pub fn adopt_orphans(conn: &mut DbConn, now: NaiveDateTime) -> StoreResult<usize> {
    let has_job =
        jobs_t::table.filter(jobs_t::kind.eq(JobKind::Mood.as_str())).filter(jobs_t::target_id.eq(messages::id));
    let orphans: Vec<i64> = crate::on_backend!(conn, |c| messages::table
        .filter(messages::mood_status.eq(MOOD_PENDING))
        .filter(diesel::dsl::not(diesel::dsl::exists(has_job)))
        .select(messages::id)
        .limit(jobs::ADOPT_BATCH)
        .load(c))?;
    jobs::adopt(conn, JobKind::Mood, orphans.into_iter().map(|id| (id, 0)), now)
}
