//! What the writer's batch writes at its end rather than as it goes: the ledger's changes that
//! never refuse (every settlement, and the studio's reservations while it has no limit), the
//! holds of new reservations, and the settlements of content items (their holds taken, for
//! every item of the batch, in one DELETE). Each item settled or reserved would otherwise cost a
//! statement (a round trip on PostgreSQL) for each of them, and hold its ledger rows' locks
//! from then to the commit. Just before the commit ([`flush`]) the holds go in one INSERT and
//! the ledger's changes, summed per row, in one upsert (on PostgreSQL both in one statement with
//! the batch's notifications: [`super::closing`]): the rows are locked only while the batch
//! commits, in one order on every process.
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
use std::rc::Rc;

use chrono::NaiveDateTime;
use diesel::prelude::*;

pub use super::closing::{Change, Hold};
use super::schema::usage_holds;
use super::{closing, DbConn, StoreError, StoreResult};
use crate::domain::limits::Level;

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
    /// Holds taken already (with a content job's end, [`taken`]), by target, for its settlement.
    taken: Log<(String, Vec<HoldRow>)>,
}

thread_local! {
    static KEPT: RefCell<Option<Aside>> = const { RefCell::new(None) };
}

/// Keeping writes aside on this thread until dropped.
pub(super) struct Deferring(());

/// Starts keeping writes aside (the writer, for one batch).
pub(super) fn start() -> Deferring {
    KEPT.set(Some(Aside { days: Log::new(), holds: Log::new(), settles: Log::new(), taken: Log::new() }));
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
    taken: (usize, usize),
}

pub(super) fn mark() -> Mark {
    KEPT.with_borrow(|kept| {
        kept.as_ref().map_or_else(Mark::default, |k| Mark {
            days: k.days.mark(),
            holds: k.holds.mark(),
            settles: k.settles.mark(),
            taken: k.taken.mark(),
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
            kept.taken.truncate(mark.taken);
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
    closing::write_changes(conn, changes)
}

/// Writes now every hold kept, then every settlement: the holds are about to be read.
pub(super) fn write_holds(conn: &mut DbConn) -> StoreResult<()> {
    let holds = KEPT.with_borrow_mut(|kept| match kept {
        Some(kept) => kept.holds.write_where(|_| true),
        None => Vec::new(),
    });
    closing::insert_holds(conn, &holds)?;
    run_settles(conn, |_| true)
}

/// Runs now the settlements of `target`: a new hold of it is about to be kept.
pub(super) fn write_settles_of(conn: &mut DbConn, target: &str) -> StoreResult<()> {
    run_settles(conn, |settle| settle.target == target)
}

/// Keeps `holds`, taken from the table already (with a content job's end), for the settlement
/// of `target` the batch keeps next. Only while this thread keeps writes aside: elsewhere no
/// holds are taken ahead of their settlement.
pub(super) fn taken(target: String, holds: Vec<HoldRow>) {
    KEPT.with_borrow_mut(|kept| {
        if let Some(kept) = kept {
            kept.taken.entries.push(((target, holds), false));
        }
    });
}

/// Runs the settlements `pick` chooses, their holds taken in one DELETE (the holds kept for
/// their targets inserted first; a target whose holds were taken already with its job's end
/// and has none kept needs none), each target's handed to its first settlement (a later one of
/// the same target finds none, as it would have in place).
fn run_settles(conn: &mut DbConn, pick: impl Fn(&Settle) -> bool) -> StoreResult<()> {
    let (holds, settles, ahead) = KEPT.with_borrow_mut(|kept| match kept {
        Some(kept) => {
            let settles = kept.settles.write_where(&pick);
            let holds = kept.holds.write_where(|h| settles.iter().any(|s| s.target == h.target));
            let ahead = kept.taken.write_where(|(target, _)| settles.iter().any(|s| &s.target == target));
            (holds, settles, ahead)
        }
        None => (Vec::new(), Vec::new(), Vec::new()),
    });
    closing::insert_holds(conn, &holds)?;
    if settles.is_empty() {
        return Ok(());
    }
    let targets: Vec<&str> = settles
        .iter()
        .map(|s| s.target.as_str())
        .filter(|t| !ahead.iter().any(|(target, _)| target == t) || holds.iter().any(|h| h.target == *t))
        .collect();
    let mut taken: Vec<HoldRow> = match targets[..] {
        [] => Vec::new(),
        // One target: a statement kept prepared (an `IN` list is prepared again at every call).
        [target] => diesel::delete(usage_holds::table.filter(usage_holds::target.eq(target)))
            .returning(usage_holds::all_columns)
            .get_results(conn)?,
        _ => diesel::delete(usage_holds::table.filter(usage_holds::target.eq_any(&targets)))
            .returning(usage_holds::all_columns)
            .get_results(conn)?,
    };
    taken.extend(ahead.into_iter().flat_map(|(_, holds)| holds));
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
    // Holds taken with a job's end that no settlement took would leave their reservations
    // held for good: the batch does not commit them.
    let unsettled = KEPT.with_borrow_mut(|kept| kept.as_mut().map_or(0, |k| k.taken.write_where(|_| true).len()));
    if unsettled > 0 {
        return Err(StoreError::Corrupt(format!("{unsettled} targets' holds were taken and never settled")));
    }
    let (changes, holds) = KEPT.with_borrow_mut(|kept| match kept {
        Some(kept) => (kept.days.write_where(|_| true), kept.holds.write_where(|_| true)),
        None => (Vec::new(), Vec::new()),
    });
    let wrote = !changes.is_empty();
    closing::write_kept(conn, &holds, changes, payloads)?;
    Ok(wrote)
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
