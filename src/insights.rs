//! The admin's figures over the store: the summary's counts, sums and retention, and the page
//! of users (README "REST"). Every figure is counted in the database; retention counts only the
//! first days that ended since the last call ([`Settled`]). Read-only; never builds a response.

use std::collections::{BTreeMap, HashMap};

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

/// Retention of the first days already counted, by `n`: the figures of a first day D can no
/// longer change once D+n has ended (a player's days are only ever added on the day they are
/// seen), so each call counts only the first days that ended since the last one.
#[derive(Debug, Clone, Default)]
pub struct Settled {
    /// n -> (first days before this one are counted, their figures).
    by_n: BTreeMap<u64, (NaiveDate, Retention)>,
}

impl Settled {
    fn retention(&mut self, conn: &mut DbConn, today: NaiveDate, n: u64) -> StoreResult<Retention> {
        let Some(to) = today.checked_sub_days(chrono::Days::new(n)) else { return Ok(Retention::default()) };
        let (from, counted) = match self.by_n.get(&n) {
            Some(&(upto, figures)) if upto == to => return Ok(figures),
            Some(&(upto, figures)) if upto < to => (Some(upto), figures),
            // None counted yet, or the clock went back: count them all.
            _ => (None, Retention::default()),
        };
        let more = messages::retention(conn, n, from, to)?;
        let figures =
            Retention { eligible: counted.eligible + more.eligible, retained: counted.retained + more.retained };
        self.by_n.insert(n, (to, figures));
        Ok(figures)
    }
}

/// The summary's figures with `today` as the day not yet ended; `settled` is read and extended.
pub fn read_figures(conn: &mut DbConn, today: NaiveDate, settled: &mut Settled) -> StoreResult<Figures> {
    Ok(Figures {
        users: messages::user_count(conn)?,
        messages: messages::count(conn)?,
        content: content::count_by_status(conn)?,
        runs: runs::count_by_status(conn)?,
        queue_depth: jobs::depth(conn)?,
        spent_micros: billing::total_cost(conn, None)?,
        d1: settled.retention(conn, today, RETENTION_DAYS[0])?,
        d7: settled.retention(conn, today, RETENTION_DAYS[1])?,
    })
}

/// The admin's figures, with the retention already counted by this process.
#[derive(Debug, Default)]
pub struct Insights {
    /// Held across a call: calls that overlap (a slow first count, the dashboard polling) wait
    /// for it rather than count the same days again.
    settled: tokio::sync::Mutex<Settled>,
}

impl Insights {
    pub async fn figures(&self, store: &Store, today: NaiveDate) -> StoreResult<Figures> {
        let mut kept = self.settled.lock().await;
        let mut settled = kept.clone();
        let (figures, settled) = store
            .run(move |conn| {
                let figures = read_figures(conn, today, &mut settled)?;
                Ok((figures, settled))
            })
            .await?;
        *kept = settled;
        Ok(figures)
    }
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

#[cfg(test)]
mod tests {
    use diesel::prelude::*;

    use super::*;
    use crate::store::schema::{user_days, users};

    fn d(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    fn add_days(store: &Store, rows: &'static [(i64, &'static str)]) {
        store
            .write_blocking(move |conn| {
                let now = d("2026-01-01").and_hms_opt(0, 0, 0).unwrap();
                for (user_id, day) in rows {
                    let user = (
                        users::id.eq(user_id),
                        users::nickname.eq("p"),
                        users::token_hash.eq(format!("h{user_id}")),
                        users::created_at.eq(now),
                        users::last_seen_at.eq(now),
                    );
                    crate::on_backend!(conn, |c| diesel::insert_into(users::table)
                        .values(user)
                        .on_conflict_do_nothing()
                        .execute(c))?;
                    diesel::insert_into(user_days::table)
                        .values((user_days::user_id.eq(user_id), user_days::day.eq(day)))
                        .execute(conn)?;
                }
                Ok(())
            })
            .unwrap();
    }

    /// Each call counts only the first days that ended since the one before, and the sums are
    /// those of counting everything at once; a clock that went back counts everything again.
    #[test]
    fn settled_first_days_are_counted_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&dir.path().join("t.db").display().to_string()).unwrap();
        store.migrate().unwrap();
        add_days(&store, &[(1, "2026-11-10"), (1, "2026-11-11"), (2, "2026-11-10")]);
        let mut settled = Settled::default();
        let d1_on =
            |today: &str, settled: &mut Settled| store.run_blocking(|c| read_figures(c, d(today), settled)).unwrap().d1;
        assert_eq!(d1_on("2026-11-12", &mut settled), Retention { eligible: 2, retained: 1 });
        // Day 11-11 has ended: user 3, first seen then and back on 11-12, now counts.
        add_days(&store, &[(3, "2026-11-11"), (3, "2026-11-12")]);
        assert_eq!(d1_on("2026-11-13", &mut settled), Retention { eligible: 3, retained: 2 });
        assert_eq!(d1_on("2026-11-13", &mut Settled::default()), Retention { eligible: 3, retained: 2 });
        assert_eq!(d1_on("2026-11-12", &mut settled), Retention { eligible: 2, retained: 1 });
    }
}
