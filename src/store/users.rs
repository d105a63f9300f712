//! Players: rows keyed by the SHA-256 of their token, and the days they were seen. Never sees a
//! token in the clear.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::schema::{user_days, users};
use super::{write_tx, DbConn, StoreResult};
use crate::on_backend;

#[derive(Debug, Clone, Queryable)]
pub struct UserRow {
    pub id: i64,
    pub nickname: String,
    pub token_hash: String,
    pub created_at: NaiveDateTime,
    pub last_seen_at: NaiveDateTime,
}

#[derive(Insertable)]
#[diesel(table_name = users)]
struct NewUser<'a> {
    nickname: &'a str,
    token_hash: &'a str,
    created_at: NaiveDateTime,
    last_seen_at: NaiveDateTime,
}

pub fn find_by_token_hash(conn: &mut DbConn, hash: &str) -> StoreResult<Option<UserRow>> {
    Ok(users::table.filter(users::token_hash.eq(hash)).first(conn).optional()?)
}

/// Resumes the user holding `token_hash` (renaming it to `nickname`) or creates one,
/// and records today as a day this user was seen.
pub fn start_session(
    conn: &mut DbConn,
    token_hash: Option<&str>,
    new_token_hash: &str,
    nickname: &str,
    now: NaiveDateTime,
) -> StoreResult<(UserRow, bool)> {
    write_tx(conn, |conn| {
        let existing = match token_hash {
            Some(hash) => find_by_token_hash(conn, hash)?,
            None => None,
        };
        let (user, resumed) = match existing {
            Some(user) => {
                let user: UserRow = diesel::update(users::table.find(user.id))
                    .set((users::nickname.eq(nickname), users::last_seen_at.eq(now)))
                    .returning(users::all_columns)
                    .get_result(conn)?;
                (user, true)
            }
            None => {
                let user: UserRow = diesel::insert_into(users::table)
                    .values(NewUser { nickname, token_hash: new_token_hash, created_at: now, last_seen_at: now })
                    .returning(users::all_columns)
                    .get_result(conn)?;
                (user, false)
            }
        };
        record_day(conn, user.id, now)?;
        Ok((user, resumed))
    })
}

/// Marks the user as seen now (REST calls count as activity too).
pub fn touch(conn: &mut DbConn, user_id: i64, now: NaiveDateTime) -> StoreResult<()> {
    diesel::update(users::table.find(user_id)).set(users::last_seen_at.eq(now)).execute(conn)?;
    record_day(conn, user_id, now)
}

fn record_day(conn: &mut DbConn, user_id: i64, now: NaiveDateTime) -> StoreResult<()> {
    let day = now.date().format("%Y-%m-%d").to_string();
    let row = (user_days::user_id.eq(user_id), user_days::day.eq(&day));
    on_backend!(conn, |c| diesel::insert_into(user_days::table).values(row).on_conflict_do_nothing().execute(c))?;
    Ok(())
}
