//! The admin summary's store reads (`GET /admin/api/metrics/summary`, polled by the dashboard
//! every 3 s) on a temp SQLite file with LOREWIRE_BENCH_PLAYERS players (default 100,000),
//! each first seen on one of the last 60 days and back on some of the days after (D+1 for
//! two in five, D+7 for about one in three, D+3 for one in three), and a cost event for one
//! player in ten.
//!
//! Times, per call, [`lorewire::insights::read_figures`] (what the handler calls: counts, sums
//! and retention in SQL; retention only for the first days not counted yet: all of them on a
//! process's first call, one on a day's first, none on the others) against the reads it replaced, kept here as they were: every
//! (user, day) row and every cost loaded, retention counted in Rust. Both must give the same
//! figures. `cargo bench --bench admin_summary` (LOREWIRE_BENCH_CALLS calls each, default 5).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{NaiveDate, Utc};
use diesel::prelude::*;
use lorewire::insights::{self, Figures, Settled};
use lorewire::store::schema::{cost_events, user_days};
use lorewire::store::{content, jobs, messages, runs, DbConn, Store, StoreResult};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The players, their days and the cost events, generated in SQL (a million players in seconds).
fn fill(store: &Store, players: usize, today: NaiveDate) {
    let today = today.format("%Y-%m-%d");
    let script = format!(
        "INSERT INTO users (id, nickname, token_hash, created_at, last_seen_at)
            WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {players})
            SELECT i, 'p' || i, 'h' || i, '2026-01-01 00:00:00', '2026-01-01 00:00:00' FROM n;
         CREATE TEMP TABLE firsts AS SELECT id AS user_id, 1 + id % 60 AS back FROM users;
         INSERT INTO user_days (user_id, day) SELECT user_id, date('{today}', '-' || back || ' days') FROM firsts;
         INSERT OR IGNORE INTO user_days (user_id, day)
            SELECT user_id, date('{today}', '-' || (back - 1) || ' days') FROM firsts WHERE user_id % 5 < 2;
         INSERT OR IGNORE INTO user_days (user_id, day)
            SELECT user_id, date('{today}', '-' || (back - 3) || ' days') FROM firsts WHERE user_id % 3 = 0;
         INSERT OR IGNORE INTO user_days (user_id, day)
            SELECT user_id, date('{today}', '-' || (back - 7) || ' days') FROM firsts
            WHERE user_id % 3 = 1 AND back > 7;
         INSERT INTO cost_events (run_id, project_id, model, attempt, input_tokens, output_tokens,
                cache_read_tokens, cache_write_tokens, cost_micros, created_at)
            SELECT 'r' || user_id, 'p' || (user_id % 10), 'm', 1, 100, 100, 0, 0, user_id % 1000,
                '2026-01-01 00:00:00' FROM firsts WHERE user_id % 10 = 0;
         DROP TABLE firsts;"
    );
    store
        .write_blocking(move |conn| {
            use diesel::connection::SimpleConnection;
            conn.batch_execute(&script)?;
            Ok(())
        })
        .expect("the bench data is written");
}

/// Retention at day `n` counted in Rust, as the summary did before.
fn retention_in_rust(days: &[(i64, String)], today: NaiveDate, n: u64) -> messages::Retention {
    let mut seen: BTreeMap<i64, Vec<NaiveDate>> = BTreeMap::new();
    for (user_id, day) in days {
        if let Ok(day) = NaiveDate::parse_from_str(day, "%Y-%m-%d") {
            seen.entry(*user_id).or_default().push(day);
        }
    }
    let mut result = messages::Retention { eligible: 0, retained: 0 };
    for user_days in seen.values() {
        let Some(first) = user_days.iter().min() else { continue };
        let Some(target) = first.checked_add_days(chrono::Days::new(n)) else { continue };
        if target >= today {
            continue;
        }
        result.eligible += 1;
        if user_days.contains(&target) {
            result.retained += 1;
        }
    }
    result
}

/// The summary's reads as they were: every (user, day) row and every cost loaded.
fn figures_before(conn: &mut DbConn, today: NaiveDate) -> StoreResult<Figures> {
    let days: Vec<(i64, String)> = user_days::table
        .order((user_days::user_id.asc(), user_days::day.asc()))
        .select((user_days::user_id, user_days::day))
        .load(conn)?;
    let spent: i64 = cost_events::table.select(cost_events::cost_micros).load::<i64>(conn)?.into_iter().sum();
    Ok(Figures {
        users: messages::user_count(conn)?,
        messages: messages::count(conn)?,
        content: content::count_by_status(conn)?,
        runs: runs::count_by_status(conn)?,
        queue_depth: jobs::depth(conn)?,
        spent_micros: spent,
        d1: retention_in_rust(&days, today, 1),
        d7: retention_in_rust(&days, today, 7),
    })
}

fn time(store: &Store, calls: usize, f: impl Fn(&mut DbConn) -> StoreResult<Figures>) -> (Duration, Figures) {
    let mut last = None;
    let mut times = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        last = Some(store.run_blocking(&f).expect("the figures are read"));
        times.push(started.elapsed());
    }
    times.sort();
    (times[times.len() / 2], last.expect("at least one call"))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let players = env_usize("LOREWIRE_BENCH_PLAYERS", 100_000);
    let calls = env_usize("LOREWIRE_BENCH_CALLS", 5).max(1);
    let dir = tempfile::tempdir().expect("a temp dir");
    let url = dir.path().join("bench.db").display().to_string();
    let store = Store::connect(&url).expect("the database opens");
    store.migrate().expect("migrations run");
    let today = Utc::now().date_naive();
    let started = Instant::now();
    fill(&store, players, today);
    let rows: i64 = store.run_blocking(|c| Ok(user_days::table.count().get_result(c)?)).expect("counted");
    println!("{players} players, {rows} (user, day) rows, filled in {:.1?}", started.elapsed());

    let (before, old) = time(&store, calls, |c| figures_before(c, today));
    // The first call of a process counts every first day; later calls of the same day count none.
    let (cold, new) = time(&store, calls, |c| insights::read_figures(c, today, &mut Settled::default()));
    let mut settled = Settled::default();
    store.run_blocking(|c| insights::read_figures(c, today, &mut settled)).expect("the figures are read");
    let (warm, _) = time(&store, calls, |c| insights::read_figures(c, today, &mut settled.clone()));
    // The first call of a new day counts the one first day that ended.
    let mut yesterday = Settled::default();
    let day_before = today.pred_opt().expect("a day before");
    store.run_blocking(|c| insights::read_figures(c, day_before, &mut yesterday)).expect("the figures are read");
    let (next_day, _) = time(&store, calls, |c| insights::read_figures(c, today, &mut yesterday.clone()));
    println!("summary store reads, median of {calls} calls:");
    println!("  before (rows loaded, retention in Rust):        {:>9.1} ms", ms(before));
    println!("  after, first call of a process (all counted):   {:>9.1} ms", ms(cold));
    println!("  after, first call of a day (one day counted):   {:>9.1} ms", ms(next_day));
    println!("  after, any other call (dashboard polls):        {:>9.1} ms", ms(warm));
    println!("  d1 {:?}  d7 {:?}  spent {} micros", new.d1, new.d7, new.spent_micros);
    assert_eq!((old.d1, old.d7, old.spent_micros, old.users), (new.d1, new.d7, new.spent_micros, new.users));
}
