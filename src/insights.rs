//! The admin's figures over the store: the summary's counts, sums and retention, and the page
//! of users (README "REST"). Every figure is counted in the database, so a call costs a few
//! grouped queries whatever the number of players. Read-only; never builds a response.

use std::collections::HashMap;

use chrono::{NaiveDate, NaiveDateTime};

use crate::store::messages::{self, Retention};
use crate::store::{billing, content, jobs, runs, DbConn, Store, StoreResult};

/// The days after the first a player is counted as back on (D1 and D7).
pub const RETENTION_DAYS: [u64; 2] = [1, 7];

/// What the summary reads from the store.
#[derive(Debug, Clone)]
pub struct Figures {
    pub users: i64,
    pub messages: i64,
    /// Content items by stored status.
    pub content: Vec<(String, i64)>,
    /// Runs by stored status.
    pub runs: Vec<(String, i64)>,
    pub queue_depth: i64,
    /// Everything spent, in micro-dollars.
    pub spent_micros: i64,
    pub d1: Retention,
    pub d7: Retention,
}

/// The summary's figures with `today` as the day not yet ended.
pub fn read_figures(conn: &mut DbConn, today: NaiveDate) -> StoreResult<Figures> {
    let retention = messages::retention(conn, today, &RETENTION_DAYS)?;
    let at = |i: usize| retention.get(i).copied().unwrap_or_default();
    Ok(Figures {
        users: messages::user_count(conn)?,
        messages: messages::count(conn)?,
        content: content::count_by_status(conn)?,
        runs: runs::count_by_status(conn)?,
        queue_depth: jobs::depth(conn)?,
        spent_micros: billing::total_cost(conn, None)?,
        d1: at(0),
        d7: at(1),
    })
}

pub async fn figures(store: &Store, today: NaiveDate) -> StoreResult<Figures> {
    store.run(move |conn| read_figures(conn, today)).await
}

/// A user as the admin's list shows them (who is online is the lobby's to say).
#[derive(Debug, Clone)]
pub struct UserLine {
    pub user_id: i64,
    pub nickname: String,
    pub created_at: NaiveDateTime,
    pub last_seen_at: NaiveDateTime,
    pub message_count: i64,
}

/// Every user there is, and a page of them, most recently seen first.
pub async fn users_page(store: &Store, limit: i64, offset: i64) -> StoreResult<(i64, Vec<UserLine>)> {
    store
        .run(move |conn| {
            let total = messages::user_count(conn)?;
            let page = messages::users_page(conn, limit, offset)?;
            let ids: Vec<i64> = page.iter().map(|u| u.0).collect();
            let counts: HashMap<i64, i64> = messages::count_by_user(conn, &ids)?.into_iter().collect();
            let lines = page
                .into_iter()
                .map(|(user_id, nickname, created_at, last_seen_at)| UserLine {
                    message_count: counts.get(&user_id).copied().unwrap_or(0),
                    user_id,
                    nickname,
                    created_at,
                    last_seen_at,
                })
                .collect();
            Ok((total, lines))
        })
        .await
}

/// Jobs waiting to run (the dashboard's history and `/metrics`).
pub async fn queue_depth(store: &Store) -> StoreResult<i64> {
    store.run(jobs::depth).await
}
