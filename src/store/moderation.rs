//! The record of moderation flags: one row per flagged text (its surface, its author when a
//! player wrote it, the text, the categories that flagged it), listed newest first.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::schema::moderation_flags;
use super::{DbConn, StoreResult};

#[derive(Debug, Clone, Queryable)]
pub struct FlagRow {
    pub id: i64,
    pub surface: String,
    pub user_id: Option<i64>,
    pub text: String,
    /// A JSON list of strings.
    pub categories: String,
    pub created_at: NaiveDateTime,
}

#[derive(Insertable)]
#[diesel(table_name = moderation_flags)]
pub struct NewFlag<'a> {
    pub surface: &'a str,
    pub user_id: Option<i64>,
    pub text: &'a str,
    pub categories: &'a str,
    pub created_at: NaiveDateTime,
}

pub fn record(conn: &mut DbConn, flag: &NewFlag<'_>) -> StoreResult<()> {
    diesel::insert_into(moderation_flags::table).values(flag).execute(conn)?;
    Ok(())
}

/// How many flags of `user_id` were recorded after `since` (a count in the database).
pub fn count_since(conn: &mut DbConn, user_id: i64, since: NaiveDateTime) -> StoreResult<i64> {
    Ok(moderation_flags::table
        .filter(moderation_flags::user_id.eq(user_id))
        .filter(moderation_flags::created_at.gt(since))
        .count()
        .get_result(conn)?)
}

/// The newest `limit` flags, newest first.
pub fn newest(conn: &mut DbConn, limit: i64) -> StoreResult<Vec<FlagRow>> {
    Ok(moderation_flags::table.order(moderation_flags::id.desc()).limit(limit).load(conn)?)
}
