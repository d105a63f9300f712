//! Lobby messages: written together with their mood job, read back as the recent messages sent on join, and settled
//! (mood + the job's deletion) in one transaction by the worker that holds the job.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use diesel::prelude::*;

use super::jobs::{self, Ended, JobKind};
use super::notify;
use super::schema::{jobs as jobs_t, messages, user_days, users};
use super::{write_whole, DbConn, StoreResult};
use crate::domain::events::{Event, MessageChange};
use crate::domain::lobby::{Message, Mood, MoodStatus};

/// What a message's mood holds while its job has not committed one.
const MOOD_PENDING: &str = MoodStatus::Pending.as_str();

#[derive(Debug, Clone, Queryable)]
pub struct MessageRow {
    pub id: i64,
    pub user_id: i64,
    pub nickname: String,
    pub text: String,
    pub mood: String,
    pub mood_status: String,
    pub created_at: NaiveDateTime,
    /// Stored with its listed words masked (LOREWIRE_MODERATION_CHAT=mask).
    pub masked: bool,
}

impl MessageRow {
    /// Whether its mood job has yet to commit a mood.
    pub fn mood_is_pending(&self) -> bool {
        self.mood_status == MOOD_PENDING
    }
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
            masked: self.masked,
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
    masked: bool,
}

/// Stores a message (mood `neutral` / `pending`) and its mood job in one transaction; refused
/// with [`StoreError::QueueFull`](super::StoreError::QueueFull) when `queue_limit` player jobs
/// are queued already.
/// A chat line to store.
#[derive(Debug, Clone, Copy)]
pub struct ChatLine<'a> {
    pub user_id: i64,
    pub nickname: &'a str,
    pub text: &'a str,
    /// Its listed words were masked.
    pub masked: bool,
}

impl<'a> ChatLine<'a> {
    /// A line as its player wrote it.
    pub fn plain(user_id: i64, nickname: &'a str, text: &'a str) -> Self {
        ChatLine { user_id, nickname, text, masked: false }
    }
}

pub fn insert(
    conn: &mut DbConn,
    origin: &str,
    line: ChatLine<'_>,
    queue_limit: i64,
    now: NaiveDateTime,
) -> StoreResult<MessageRow> {
    let ChatLine { user_id, nickname, text, masked } = line;
    jobs::check_player_queue(conn, queue_limit)?;
    write_whole(conn, |conn| {
        let row: MessageRow = diesel::insert_into(messages::table)
            .values(NewMessage {
                user_id,
                nickname,
                text,
                mood: Mood::Neutral.as_str(),
                mood_status: MOOD_PENDING,
                created_at: now,
                masked,
            })
            .returning(messages::all_columns)
            .get_result(conn)?;
        jobs::enqueue_for(conn, JobKind::Mood, row.id, jobs::Place::new(0, row.user_id), now)?;
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
    mood: Mood,
    mood_status: MoodStatus,
) -> StoreResult<Ended<MessageRow>> {
    write_whole(conn, |conn| {
        if !jobs::complete(conn, job_id, worker)? {
            return Ok(Ended::TakenOver);
        }
        let row = diesel::update(messages::table.find(message_id).filter(messages::mood_status.eq(MOOD_PENDING)))
            .set((messages::mood.eq(mood.as_str()), messages::mood_status.eq(mood_status.as_str())))
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

/// A user's days seen, as counted for retention (README "Retention").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retention {
    /// Users first seen on a day D whose day D+n has ended.
    pub eligible: i64,
    /// Of those, the users seen on day D+n.
    pub retained: i64,
}

/// Retention at day `n` of the users first seen (their earliest row) on a UTC day D with
/// `from` <= D < `to` (README "Retention"), counted in the database: eligible are those users,
/// retained those of them with a row for D+n. Call with `to` <= today - n, so that every D+n
/// counted has ended.
pub fn retention(conn: &mut DbConn, n: u64, from: Option<NaiveDate>, to: NaiveDate) -> StoreResult<Retention> {
    use diesel::dsl::{exists, not, sql};
    use diesel::sql_types::Text;
    diesel::alias!(user_days as first: FirstDay, user_days as earlier: EarlierDay, user_days as later: LaterDay);
    let day = |d: NaiveDate| d.format("%Y-%m-%d").to_string();
    let (from, to) = (from.map(day).unwrap_or_default(), day(to));
    let first_day = first.field(user_days::day);
    let first_user = first.field(user_days::user_id);
    // The user's earliest row: none of theirs is earlier.
    let first_rows = || {
        first.filter(first_day.ge(from.clone())).filter(first_day.lt(to.clone())).filter(not(exists(
            earlier
                .filter(earlier.field(user_days::user_id).eq(first_user))
                .filter(earlier.field(user_days::day).lt(first_day)),
        )))
    };
    // D+n in SQL: the DSL has no date arithmetic, and each backend spells it its own way.
    let back_on =
        |plus: String| {
            exists(
                later
                    .filter(later.field(user_days::user_id).eq(first_user))
                    .filter(later.field(user_days::day).eq(sql::<Text>(&plus))),
            )
        };
    if from.is_empty() {
        return whole_retention(conn, n, &to);
    }
    let retained: i64 = match conn {
        DbConn::Sqlite(c) => {
            first_rows().filter(back_on(format!("date(\"first\".\"day\", '+{n} days')"))).count().get_result(c)?
        }
        DbConn::Pg(c) => first_rows()
            .filter(back_on(format!("to_char(CAST(\"first\".\"day\" AS date) + {n}, 'YYYY-MM-DD')")))
            .count()
            .get_result(c)?,
    };
    // A few first days: only their rows are read.
    let eligible: i64 = crate::on_backend!(conn, |c| first_rows().count().get_result(c))?;
    Ok(Retention { eligible, retained })
}

/// [`retention`] of every first day before `to` at once: each user's first day found in one
/// pass over the rows in key order (`GROUP BY user_id`), then one look-up of its D+n, instead
/// of looking for an earlier day of every row (a process's first summary counts them all).
/// A derived table and date arithmetic are beyond the DSL: SQL with bound parameters.
fn whole_retention(conn: &mut DbConn, n: u64, to: &str) -> StoreResult<Retention> {
    use diesel::sql_types::{BigInt, Text};

    #[derive(QueryableByName)]
    struct Counted {
        #[diesel(sql_type = BigInt)]
        eligible: i64,
        #[diesel(sql_type = BigInt)]
        retained: i64,
    }

    let n = i64::try_from(n).unwrap_or(i64::MAX);
    let counted: Counted = match conn {
        DbConn::Sqlite(c) => diesel::sql_query(
            "SELECT COUNT(*) AS eligible, \
               COALESCE(SUM(EXISTS (SELECT 1 FROM user_days l \
                 WHERE l.user_id = f.user_id AND l.day = date(f.first, '+' || ? || ' days'))), 0) AS retained \
             FROM (SELECT user_id, MIN(day) AS first FROM user_days GROUP BY user_id) f \
             WHERE f.first < ?",
        )
        .bind::<BigInt, _>(n)
        .bind::<Text, _>(to)
        .get_result(c)?,
        DbConn::Pg(c) => diesel::sql_query(
            "SELECT COUNT(*) AS eligible, \
               COUNT(*) FILTER (WHERE EXISTS (SELECT 1 FROM user_days l WHERE l.user_id = f.user_id \
                 AND l.day = to_char(CAST(f.first AS date) + CAST($1 AS integer), 'YYYY-MM-DD'))) AS retained \
             FROM (SELECT user_id, MIN(day) AS first FROM user_days GROUP BY user_id) f \
             WHERE f.first < $2",
        )
        .bind::<BigInt, _>(n)
        .bind::<Text, _>(to)
        .get_result(c)?,
    };
    Ok(Retention { eligible: counted.eligible, retained: counted.retained })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn d(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    /// A temp SQLite store holding these (user, day) rows (and their users).
    fn store_with(rows: &[(i64, &str)]) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&dir.path().join("t.db").display().to_string()).unwrap();
        store.migrate().unwrap();
        let rows: Vec<(i64, String)> = rows.iter().map(|(u, day)| (*u, day.to_string())).collect();
        store
            .write_blocking(move |conn| {
                let now = d("2026-01-01").and_hms_opt(0, 0, 0).unwrap();
                let mut ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
                ids.dedup();
                for id in ids {
                    let token = format!("h{id}");
                    diesel::insert_into(users::table)
                        .values((
                            users::id.eq(id),
                            users::nickname.eq("p"),
                            users::token_hash.eq(&token),
                            users::created_at.eq(now),
                            users::last_seen_at.eq(now),
                        ))
                        .execute(conn)?;
                }
                for (user_id, day) in &rows {
                    diesel::insert_into(user_days::table)
                        .values((user_days::user_id.eq(*user_id), user_days::day.eq(day)))
                        .execute(conn)?;
                }
                Ok(())
            })
            .unwrap();
        (dir, store)
    }

    fn retention_at(store: &Store, today: &str, n: u64) -> Retention {
        let to = d(today).checked_sub_days(chrono::Days::new(n)).unwrap();
        store.run_blocking(|conn| retention(conn, n, None, to)).unwrap()
    }

    #[test]
    fn a_row_reads_its_mood_or_falls_back() {
        let t = d("2026-01-01").and_hms_opt(0, 0, 0).unwrap();
        let row = |mood: &str, status: &str| MessageRow {
            id: 1,
            user_id: 2,
            nickname: "Ada".into(),
            text: "hi".into(),
            mood: mood.into(),
            mood_status: status.into(),
            created_at: t,
            masked: false,
        };
        for mood in Mood::ALL {
            for status in MoodStatus::ALL {
                let r = row(mood.as_str(), status.as_str());
                assert_eq!((r.message().mood, r.message().mood_status), (mood, status));
                assert_eq!(r.mood_is_pending(), status == MoodStatus::Pending);
            }
        }
        let odd = row("furious", "ready");
        assert_eq!((odd.message().mood, odd.message().mood_status), (Mood::Neutral, MoodStatus::Fallback));
        assert!(!row("happy", "PENDING").mood_is_pending());
    }

    #[test]
    fn no_eligible_user_means_no_rate() {
        let (_dir, empty) = store_with(&[]);
        assert_eq!(retention_at(&empty, "2026-11-23", 1), Retention { eligible: 0, retained: 0 });
        // First seen yesterday: D+1 is today, not ended yet.
        let (_dir, store) = store_with(&[(1, "2026-11-22"), (1, "2026-11-23")]);
        assert_eq!(retention_at(&store, "2026-11-23", 1), Retention { eligible: 0, retained: 0 });
    }

    #[test]
    fn d1_and_d7_count_the_exact_day() {
        let (_dir, store) = store_with(&[
            // Eligible for D1 and D7; retained at D1 (11-11) and D7 (11-17).
            (1, "2026-11-10"),
            (1, "2026-11-11"),
            (1, "2026-11-17"),
            // Eligible for both; seen on D+2 only: retained at neither.
            (2, "2026-11-10"),
            (2, "2026-11-12"),
            // Eligible for D1 only (D+7 = 11-27 not ended); retained at D1.
            (3, "2026-11-20"),
            (3, "2026-11-21"),
        ]);
        assert_eq!(retention_at(&store, "2026-11-23", 1), Retention { eligible: 3, retained: 2 });
        assert_eq!(retention_at(&store, "2026-11-23", 7), Retention { eligible: 2, retained: 1 });
        // Counted by ranges of first days, the parts add up to the whole.
        let part = |from: &str, to: &str| store.run_blocking(|c| retention(c, 1, Some(d(from)), d(to))).unwrap();
        assert_eq!(part("2026-11-10", "2026-11-11"), Retention { eligible: 2, retained: 1 });
        assert_eq!(part("2026-11-11", "2026-11-22"), Retention { eligible: 1, retained: 1 });
    }
}
