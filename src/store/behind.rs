//! What the writer's batch writes at its end rather than as it goes: the ledger's changes that
//! never refuse (every settlement, and the studio's reservations while it has no limit), the
//! holds of new reservations, and the settlements of content items (their holds taken, for
//! every item of the batch, in one DELETE). Each item settled or reserved would otherwise cost a
//! statement (a round trip on PostgreSQL) for each of them, and hold its ledger rows' locks
//! from then to the commit. Just before the commit ([`flush`]) the holds go in one INSERT and
//! the ledger's changes, summed per row, in one upsert: the rows are locked only while the
//! batch commits, in one order on every process.
//!
//! Whatever reads or decides by what is kept here gets it written first, in the same
//! transaction: a conditional reservation writes the changes of its own rows ([`write_days`]),
//! after the settlements of their player (or all, when it reserves at another level); a read of
//! holds every hold kept and then every settlement ([`write_holds`]); a new hold the settlement
//! of its target ([`super::usage::add_hold`]). So the batch's transaction reads what it would
//! have read had every write gone in at once.
//!
//! Only on the writer's thread while it runs a batch ([`Deferring`]); elsewhere everything is
//! written in place. A request that rolls back drops what it kept, and takes back as unwritten
//! what a write inside it wrote of its predecessors' ([`mark`], [`truncate`]).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use chrono::NaiveDateTime;
use diesel::dsl::case_when;
use diesel::prelude::*;
use diesel::upsert::excluded;

use super::schema::{usage_days, usage_holds};
use super::{closing, notify, DbConn, Kept, StoreResult};
use crate::domain::limits::Level;
use crate::on_backend;

/// One change of the ledger's row (`level`, `owner`) of `day`: `reserve` added to what it
/// holds; `held` released (never below zero) and `charge` spent, as a settlement does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub level: String,
    pub owner: String,
    pub day: String,
    pub reserve: (i64, i64),
    pub held: (i64, i64),
    pub charge: (i64, i64),
    /// When it was made (the row's `updated_at`).
    pub at: NaiveDateTime,
}

impl Change {
    fn key(&self) -> (&str, &str, &str) {
        (&self.level, &self.owner, &self.day)
    }
}

/// The most rows a multi-row statement is kept prepared for (one statement per number of rows:
/// a batch's usual few are prepared once, a rare long one does not stay in the cache).
const KEEP_ROWS: usize = 32;

/// A hold to be inserted ([`super::usage::add_hold`]).
#[derive(Debug, Clone, PartialEq, Eq, Insertable)]
#[diesel(table_name = usage_holds)]
pub struct Hold {
    pub target: String,
    pub user_id: i64,
    pub studio: bool,
    pub day: String,
    pub model: String,
    pub tokens: i64,
    pub micros: i64,
    pub created_at: NaiveDateTime,
    pub project: Option<String>,
}

/// What a call holds until it is settled. The player's level always, the studio's when
/// `studio`, the project's when it names one.
#[derive(Debug, Clone, PartialEq, Eq, Queryable)]
pub struct HoldRow {
    pub id: i64,
    pub target: String,
    pub user_id: i64,
    pub studio: bool,
    pub day: String,
    pub model: String,
    pub tokens: i64,
    pub micros: i64,
    pub created_at: NaiveDateTime,
    pub project: Option<String>,
}

/// What settles one target's holds once they are taken ([`defer_settle`]).
pub type Settling = Rc<dyn Fn(&mut DbConn, Vec<HoldRow>) -> StoreResult<()>>;

/// A settlement kept for the commit: the holds of `target`, taken then, go to `then`.
#[derive(Clone)]
pub struct Settle {
    pub target: String,
    /// The player whose rows it settles (its holds' player): a reservation at that player's row
    /// waits for it, one at another player's row need not.
    pub player: i64,
    pub then: Settling,
}

/// Entries kept in order, each written or not; every early write is recorded, so a rollback
/// takes it back.
struct Log<T> {
    entries: Vec<(T, bool)>,
    /// The entries each early write wrote, in order.
    writes: Vec<Vec<usize>>,
}

impl<T: Clone> Log<T> {
    fn new() -> Self {
        Log { entries: Vec::new(), writes: Vec::new() }
    }

    /// The unwritten entries `pick` chooses, now counted as written.
    fn write_where(&mut self, pick: impl Fn(&T) -> bool) -> Vec<T> {
        let mut written = Vec::new();
        let mut taken = Vec::new();
        for (i, (entry, done)) in self.entries.iter_mut().enumerate() {
            if !*done && pick(entry) {
                *done = true;
                written.push(i);
                taken.push(entry.clone());
            }
        }
        if !written.is_empty() {
            self.writes.push(written);
        }
        taken
    }

    fn mark(&self) -> (usize, usize) {
        (self.entries.len(), self.writes.len())
    }

    fn truncate(&mut self, (entries, writes): (usize, usize)) {
        for written in self.writes.drain(writes.min(self.writes.len())..) {
            for i in written {
                if let Some(entry) = self.entries.get_mut(i) {
                    entry.1 = false;
                }
            }
        }
        self.entries.truncate(entries);
    }
}

struct Aside {
    days: Log<Change>,
    holds: Log<Hold>,
    settles: Log<Settle>,
}

thread_local! {
    static KEPT: RefCell<Option<Aside>> = const { RefCell::new(None) };
}

/// Keeping writes aside on this thread until dropped.
pub(super) struct Deferring(());

/// Starts keeping writes aside (the writer, for one batch).
pub(super) fn start() -> Deferring {
    KEPT.set(Some(Aside { days: Log::new(), holds: Log::new(), settles: Log::new() }));
    Deferring(())
}

impl Drop for Deferring {
    fn drop(&mut self) {
        KEPT.set(None);
    }
}

/// Whether this thread keeps writes aside.
pub fn deferring() -> bool {
    KEPT.with_borrow(Option::is_some)
}

/// Keeps `change` aside for the batch's commit; `false` when this thread does not (the caller
/// writes it in place).
pub fn defer(change: Change) -> bool {
    KEPT.with_borrow_mut(|kept| match kept {
        Some(kept) => {
            kept.days.entries.push((change, false));
            true
        }
        None => false,
    })
}

/// Keeps `hold` aside for the batch's commit; hands it back when this thread does not.
pub(super) fn defer_hold(hold: Hold) -> Option<Hold> {
    KEPT.with_borrow_mut(|kept| match kept {
        Some(kept) => {
            kept.holds.entries.push((hold, false));
            None
        }
        None => Some(hold),
    })
}

/// Keeps `settle` aside for the batch's commit; hands it back when this thread does not.
pub fn defer_settle(settle: Settle) -> Option<Settle> {
    KEPT.with_borrow_mut(|kept| match kept {
        Some(kept) => {
            kept.settles.entries.push((settle, false));
            None
        }
        None => Some(settle),
    })
}

/// Where the requests of the batch stand: what a rollback to here takes back.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Mark {
    days: (usize, usize),
    holds: (usize, usize),
    settles: (usize, usize),
}

pub(super) fn mark() -> Mark {
    KEPT.with_borrow(|kept| {
        kept.as_ref().map_or_else(Mark::default, |k| Mark {
            days: k.days.mark(),
            holds: k.holds.mark(),
            settles: k.settles.mark(),
        })
    })
}

/// Drops what was kept after `mark`, and counts as unwritten again what was written since (rolled back).
pub(super) fn truncate(mark: Mark) {
    KEPT.with_borrow_mut(|kept| {
        if let Some(kept) = kept {
            kept.days.truncate(mark.days);
            kept.holds.truncate(mark.holds);
            kept.settles.truncate(mark.settles);
        }
    });
}

/// Writes now the changes kept for the rows of `day` whose (level, owner) `rows` names: a
/// reservation there is to decide by them.
pub(super) fn write_days(conn: &mut DbConn, rows: &[(&str, &str)], day: &str) -> StoreResult<()> {
    // The settlements that may change these rows first: at another level than a player's,
    // every one; else those of the players named.
    let players: Option<Vec<i64>> = rows
        .iter()
        .map(|&(level, owner)| (level == Level::Player.as_str()).then(|| owner.parse().ok()).flatten())
        .collect();
    run_settles(conn, |settle| players.as_ref().is_none_or(|players| players.contains(&settle.player)))?;
    let changes = KEPT.with_borrow_mut(|kept| match kept {
        Some(kept) => {
            kept.days.write_where(|c| c.day == day && rows.iter().any(|&(l, o)| c.level == l && c.owner == o))
        }
        None => Vec::new(),
    });
    write_changes(conn, changes)
}

/// Writes now every hold kept, then every settlement: the holds are about to be read.
pub(super) fn write_holds(conn: &mut DbConn) -> StoreResult<()> {
    let holds = KEPT.with_borrow_mut(|kept| match kept {
        Some(kept) => kept.holds.write_where(|_| true),
        None => Vec::new(),
    });
    insert_holds(conn, &holds)?;
    run_settles(conn, |_| true)
}

/// Runs now the settlements of `target`: a new hold of it is about to be kept.
pub(super) fn write_settles_of(conn: &mut DbConn, target: &str) -> StoreResult<()> {
    run_settles(conn, |settle| settle.target == target)
}

/// Runs the settlements `pick` chooses, their holds taken in one DELETE (the holds kept for
/// their targets inserted first), each target's handed to its first settlement (a later one of
/// the same target finds none, as it would have in place).
fn run_settles(conn: &mut DbConn, pick: impl Fn(&Settle) -> bool) -> StoreResult<()> {
    let (holds, settles) = KEPT.with_borrow_mut(|kept| match kept {
        Some(kept) => {
            let settles = kept.settles.write_where(&pick);
            let holds = kept.holds.write_where(|h| settles.iter().any(|s| s.target == h.target));
            (holds, settles)
        }
        None => (Vec::new(), Vec::new()),
    });
    insert_holds(conn, &holds)?;
    if settles.is_empty() {
        return Ok(());
    }
    let targets: Vec<&str> = settles.iter().map(|s| s.target.as_str()).collect();
    let mut taken: Vec<HoldRow> = match targets[..] {
        // One target: a statement kept prepared (an `IN` list is prepared again at every call).
        [target] => diesel::delete(usage_holds::table.filter(usage_holds::target.eq(target)))
            .returning(usage_holds::all_columns)
            .get_results(conn)?,
        _ => diesel::delete(usage_holds::table.filter(usage_holds::target.eq_any(&targets)))
            .returning(usage_holds::all_columns)
            .get_results(conn)?,
    };
    taken.sort_by_key(|h| h.id);
    for settle in settles {
        let (mine, rest) = taken.into_iter().partition(|h| h.target == settle.target);
        taken = rest;
        (settle.then)(conn, mine)?;
    }
    Ok(())
}

/// Writes everything kept and not yet written, and sends `payloads` (serialized events, in
/// order; PostgreSQL only); call just before the batch's commit. On PostgreSQL the holds, the
/// ledger's rows and the notifications go in one statement ([`closing`]). `true` when it wrote a
/// ledger row.
pub(super) fn flush(conn: &mut DbConn, payloads: &[String]) -> StoreResult<bool> {
    run_settles(conn, |_| true)?;
    let (changes, holds) = KEPT.with_borrow_mut(|kept| match kept {
        Some(kept) => (kept.days.write_where(|_| true), kept.holds.write_where(|_| true)),
        None => (Vec::new(), Vec::new()),
    });
    let wrote = !changes.is_empty();
    let DbConn::Pg(c) = conn else {
        insert_holds(conn, &holds)?;
        write_changes(conn, changes)?;
        return notify::announce(conn, payloads).map(|()| wrote);
    };
    if holds.is_empty() && changes.is_empty() && payloads.is_empty() {
        return Ok(false);
    }
    let rows = nets(&changes);
    for (level, owner, day) in closing::write(c, &holds, &rows, payloads)? {
        not_below_zero(c, level, owner, day)?;
    }
    Ok(wrote)
}

fn insert_holds(conn: &mut DbConn, holds: &[Hold]) -> StoreResult<()> {
    match conn {
        // One statement for all, kept prepared for each number of rows up to [`KEEP_ROWS`].
        DbConn::Pg(c) if holds.len() > 1 => {
            let insert = diesel::insert_into(usage_holds::table).values(holds).returning(usage_holds::id);
            if holds.len() <= KEEP_ROWS {
                Kept(insert).get_results::<i64>(c)?;
            } else {
                insert.get_results::<i64>(c)?;
            }
        }
        _ => {
            // Kept prepared (run for its RETURNING row: Diesel keeps no statement `execute` ran).
            for hold in holds {
                on_backend!(conn, |c| Kept(
                    diesel::insert_into(usage_holds::table).values(hold).returning(usage_holds::id)
                )
                .get_result::<i64>(c))?;
            }
        }
    }
    Ok(())
}

/// A row's key and the net change of its reservations and spend, and when it was last changed.
pub(super) struct Net<'a> {
    pub level: &'a str,
    pub owner: &'a str,
    pub day: &'a str,
    pub reserved: (i64, i64),
    pub spent: (i64, i64),
    pub at: NaiveDateTime,
}

/// `changes` summed per row, in the rows' order.
fn nets(changes: &[Change]) -> Vec<Net<'_>> {
    let mut rows: BTreeMap<(&str, &str, &str), Net<'_>> = BTreeMap::new();
    for change in changes {
        let (level, owner, day) = change.key();
        let net = rows.entry((level, owner, day)).or_insert(Net {
            level,
            owner,
            day,
            reserved: (0, 0),
            spent: (0, 0),
            at: change.at,
        });
        let add = |a: (i64, i64), b: (i64, i64)| (a.0.saturating_add(b.0), a.1.saturating_add(b.1));
        let sub = |a: (i64, i64), b: (i64, i64)| (a.0.saturating_sub(b.0), a.1.saturating_sub(b.1));
        net.reserved = add(net.reserved, sub(change.reserve, change.held));
        net.spent = add(net.spent, change.charge);
        net.at = net.at.max(change.at);
    }
    rows.into_values().collect()
}

/// Sums `changes` per row and writes them, in the rows' order: on PostgreSQL in one upsert, else
/// one upsert per row.
fn write_changes(conn: &mut DbConn, changes: Vec<Change>) -> StoreResult<()> {
    let rows = nets(&changes);
    match conn {
        DbConn::Pg(c) if rows.len() > 1 => upsert_all(c, &rows),
        _ => rows.iter().try_for_each(|row| upsert(conn, row)),
    }
}

/// One row's change: the row is created when it is the day's first. One upsert, kept prepared.
fn upsert(conn: &mut DbConn, net: &Net<'_>) -> StoreResult<()> {
    let row = (
        usage_days::level.eq(net.level),
        usage_days::owner.eq(net.owner),
        usage_days::day.eq(net.day),
        usage_days::spent_tokens.eq(net.spent.0),
        usage_days::spent_micros.eq(net.spent.1),
        usage_days::reserved_tokens.eq(net.reserved.0.max(0)),
        usage_days::reserved_micros.eq(net.reserved.1.max(0)),
        usage_days::updated_at.eq(net.at),
    );
    // What it holds never goes below zero, as a settlement in place leaves it.
    let (tokens, micros) = net.reserved;
    let reserved_tokens =
        case_when((usage_days::reserved_tokens + tokens).gt(0_i64), usage_days::reserved_tokens + tokens)
            .otherwise(0_i64);
    let reserved_micros =
        case_when((usage_days::reserved_micros + micros).gt(0_i64), usage_days::reserved_micros + micros)
            .otherwise(0_i64);
    let change = (
        usage_days::spent_tokens.eq(usage_days::spent_tokens + net.spent.0),
        usage_days::spent_micros.eq(usage_days::spent_micros + net.spent.1),
        usage_days::reserved_tokens.eq(reserved_tokens),
        usage_days::reserved_micros.eq(reserved_micros),
        usage_days::updated_at.eq(net.at),
    );
    on_backend!(conn, |c| Kept(
        diesel::insert_into(usage_days::table)
            .values(row)
            .on_conflict((usage_days::level, usage_days::owner, usage_days::day))
            .do_update()
            .set(change)
            .returning(usage_days::level)
    )
    .get_results::<String>(c))?;
    Ok(())
}

/// Every row's change in one upsert (PostgreSQL; kept prepared for each number of rows up to
/// [`KEEP_ROWS`]).
fn upsert_all<'a>(conn: &mut PgConnection, rows: &[Net<'a>]) -> StoreResult<()> {
    let values: Vec<_> = rows
        .iter()
        .map(|net| {
            (
                usage_days::level.eq(net.level),
                usage_days::owner.eq(net.owner),
                usage_days::day.eq(net.day),
                usage_days::spent_tokens.eq(net.spent.0),
                usage_days::spent_micros.eq(net.spent.1),
                usage_days::reserved_tokens.eq(net.reserved.0),
                usage_days::reserved_micros.eq(net.reserved.1),
                usage_days::updated_at.eq(net.at),
            )
        })
        .collect();
    // What a row holds never goes below zero, as a settlement in place leaves it.
    let tokens = usage_days::reserved_tokens + excluded(usage_days::reserved_tokens);
    let micros = usage_days::reserved_micros + excluded(usage_days::reserved_micros);
    let change = (
        usage_days::spent_tokens.eq(usage_days::spent_tokens + excluded(usage_days::spent_tokens)),
        usage_days::spent_micros.eq(usage_days::spent_micros + excluded(usage_days::spent_micros)),
        usage_days::reserved_tokens.eq(case_when(tokens.gt(0_i64), tokens).otherwise(0_i64)),
        usage_days::reserved_micros.eq(case_when(micros.gt(0_i64), micros).otherwise(0_i64)),
        usage_days::updated_at.eq(excluded(usage_days::updated_at)),
    );
    let upsert = diesel::insert_into(usage_days::table)
        .values(&values)
        .on_conflict((usage_days::level, usage_days::owner, usage_days::day))
        .do_update()
        .set(change)
        .returning((
            usage_days::level,
            usage_days::owner,
            usage_days::day,
            usage_days::reserved_tokens,
            usage_days::reserved_micros,
        ));
    type Written = (String, String, String, i64, i64);
    let written: Vec<Written> =
        if rows.len() <= KEEP_ROWS { Kept(upsert).get_results(conn)? } else { upsert.get_results(conn)? };
    // A row whose reservations fall is there already (a reservation made it): it was updated,
    // and never holds less than zero. Should one not have been there, it was created as the
    // change stands.
    for (level, owner, day, _, _) in written.into_iter().filter(|w| w.3 < 0 || w.4 < 0) {
        not_below_zero(conn, level, owner, day)?;
    }
    Ok(())
}

/// Sets what a ledger row holds to zero where it is below, as a settlement in place leaves it.
fn not_below_zero(conn: &mut PgConnection, level: String, owner: String, day: String) -> StoreResult<()> {
    let (tokens, micros) = (usage_days::reserved_tokens, usage_days::reserved_micros);
    diesel::update(usage_days::table.find((level, owner, day)))
        .set((
            tokens.eq(case_when(tokens.gt(0_i64), tokens).otherwise(0_i64)),
            micros.eq(case_when(micros.gt(0_i64), micros).otherwise(0_i64)),
        ))
        .execute(conn)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Log;

    #[test]
    fn a_rollback_drops_what_was_kept_after_its_mark_and_takes_back_what_was_written_since() {
        let mut log = Log::new();
        log.entries.push(("a", false));
        log.entries.push(("b", false));
        let before = log.mark();
        log.entries.push(("c", false));
        // A write inside the request writes "a" and "c" early.
        assert_eq!(log.write_where(|e| *e != "b"), ["a", "c"]);
        assert_eq!(log.write_where(|e| *e != "b"), Vec::<&str>::new(), "written once");
        log.truncate(before);
        // "c" is gone with its request; "a" is to be written again, "b" still is.
        assert_eq!(log.write_where(|_| true), ["a", "b"]);
    }

    #[test]
    fn what_was_written_before_a_mark_stays_written_after_a_rollback_to_it() {
        let mut log = Log::new();
        log.entries.push(("a", false));
        assert_eq!(log.write_where(|_| true), ["a"]);
        let mark = log.mark();
        log.entries.push(("b", false));
        log.truncate(mark);
        assert_eq!(log.write_where(|_| true), Vec::<&str>::new());
    }
}
