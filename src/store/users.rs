//! Players: rows keyed by the SHA-256 of their token (anonymous players) or by the (`iss`,
//! `sub`) of the studio's JWT, and the days they were seen. Never sees a token in the clear.

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
    /// The JWT's `iss` and `sub` of a player who logs in with the studio's JWT.
    pub issuer: Option<String>,
    pub subject: Option<String>,
}

#[derive(Insertable)]
#[diesel(table_name = users)]
struct NewUser<'a> {
    nickname: &'a str,
    token_hash: &'a str,
    created_at: NaiveDateTime,
    last_seen_at: NaiveDateTime,
    issuer: Option<&'a str>,
    subject: Option<&'a str>,
}

pub fn find(conn: &mut DbConn, id: i64) -> StoreResult<Option<UserRow>> {
    Ok(users::table.find(id).first(conn).optional()?)
}

/// The nicknames of `ids` (those that exist).
pub fn nicknames(conn: &mut DbConn, ids: &[i64]) -> StoreResult<Vec<(i64, String)>> {
    Ok(users::table.filter(users::id.eq_any(ids)).select((users::id, users::nickname)).load(conn)?)
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
        if let Some(hash) = token_hash {
            if let Some(user) = resume_in_tx(conn, hash, nickname, now)? {
                return Ok((user, true));
            }
        }
        let new = NewUser {
            nickname,
            token_hash: new_token_hash,
            created_at: now,
            last_seen_at: now,
            issuer: None,
            subject: None,
        };
        let user: UserRow =
            diesel::insert_into(users::table).values(new).returning(users::all_columns).get_result(conn)?;
        record_day(conn, user.id, now)?;
        Ok((user, false))
    })
}

/// Resumes the user holding `token_hash`, renamed to `nickname`; `None` when no user holds it.
pub fn resume(conn: &mut DbConn, token_hash: &str, nickname: &str, now: NaiveDateTime) -> StoreResult<Option<UserRow>> {
    write_tx(conn, |conn| resume_in_tx(conn, token_hash, nickname, now))
}

fn resume_in_tx(conn: &mut DbConn, hash: &str, nickname: &str, now: NaiveDateTime) -> StoreResult<Option<UserRow>> {
    let Some(user) = find_by_token_hash(conn, hash)? else { return Ok(None) };
    let user: UserRow = diesel::update(users::table.find(user.id))
        .set((users::nickname.eq(nickname), users::last_seen_at.eq(now)))
        .returning(users::all_columns)
        .get_result(conn)?;
    record_day(conn, user.id, now)?;
    Ok(Some(user))
}

/// The player of the studio's JWT (`issuer`, `subject`), created on its first login with
/// `nickname` (and a token hash nobody holds), renamed when `rename`; records today as seen.
/// Another process creating the same player at once is met by the unique key, not duplicated.
pub fn start_external(
    conn: &mut DbConn,
    issuer: &str,
    subject: &str,
    nickname: &str,
    rename: bool,
    unused_token_hash: &str,
    now: NaiveDateTime,
) -> StoreResult<(UserRow, bool)> {
    write_tx(conn, |conn| {
        let new = NewUser {
            nickname,
            token_hash: unused_token_hash,
            created_at: now,
            last_seen_at: now,
            issuer: Some(issuer),
            subject: Some(subject),
        };
        let created = on_backend!(conn, |c| diesel::insert_into(users::table)
            .values(&new)
            .on_conflict((users::issuer, users::subject))
            .do_nothing()
            .execute(c))?
            > 0;
        let key = users::issuer.eq(issuer).and(users::subject.eq(subject));
        let user: UserRow = if created || !rename {
            diesel::update(users::table.filter(key))
                .set(users::last_seen_at.eq(now))
                .returning(users::all_columns)
                .get_result(conn)?
        } else {
            diesel::update(users::table.filter(key))
                .set((users::nickname.eq(nickname), users::last_seen_at.eq(now)))
                .returning(users::all_columns)
                .get_result(conn)?
        };
        record_day(conn, user.id, now)?;
        Ok((user, !created))
    })
}

/// The player of a JWT's (`issuer`, `subject`), if it ever logged in.
pub fn find_external(conn: &mut DbConn, issuer: &str, subject: &str) -> StoreResult<Option<UserRow>> {
    Ok(users::table.filter(users::issuer.eq(issuer).and(users::subject.eq(subject))).first(conn).optional()?)
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
