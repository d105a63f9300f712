//! The studio's ledger row of the day, written once per batch of the writer's while the studio
//! has no limit: every content item, mood and run reserves and settles there, so a transaction
//! that wrote it at each would hold that one row's lock from its first item to its commit, and
//! every other writer (another process's) would wait on it for the whole batch. With no limit
//! the studio never refuses, so its changes are kept aside as the batch runs and added in one
//! upsert just before the commit ([`flush`]): the row is locked only while the batch commits.
//!
//! Only on the writer's thread while it runs a batch ([`Deferring`]); elsewhere, and whenever
//! the studio has a limit, the ledger writes the studio's row in place. A request that rolls
//! back drops what it kept aside ([`mark`], [`truncate`]).

use std::cell::RefCell;
use std::collections::BTreeMap;

use chrono::NaiveDateTime;
use diesel::dsl::case_when;
use diesel::prelude::*;

use super::schema::usage_days;
use super::{DbConn, StoreResult};
use crate::on_backend;

/// One change of the studio's row (`level`, `owner`) of `day`: `reserve` added to what it
/// holds; `held` released (never below zero) and `charge` spent, as a settlement does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub level: &'static str,
    pub owner: &'static str,
    pub day: String,
    pub reserve: (i64, i64),
    pub held: (i64, i64),
    pub charge: (i64, i64),
}

thread_local! {
    static KEPT: RefCell<Option<Vec<Change>>> = const { RefCell::new(None) };
}

/// Keeping the studio's changes aside on this thread until dropped.
pub(super) struct Deferring(());

/// Starts keeping the studio's changes aside (the writer, for one batch).
pub(super) fn start() -> Deferring {
    KEPT.set(Some(Vec::new()));
    Deferring(())
}

impl Drop for Deferring {
    fn drop(&mut self) {
        KEPT.set(None);
    }
}

/// Keeps `change` aside for the batch's commit; `false` when this thread does not (the caller
/// writes it in place).
pub fn defer(change: Change) -> bool {
    KEPT.with_borrow_mut(|kept| match kept {
        Some(kept) => {
            kept.push(change);
            true
        }
        None => false,
    })
}

/// Whether this thread keeps the studio's changes aside.
pub fn deferring() -> bool {
    KEPT.with_borrow(Option::is_some)
}

/// How much is kept aside now.
pub(super) fn mark() -> usize {
    KEPT.with_borrow(|kept| kept.as_ref().map_or(0, Vec::len))
}

/// Drops what was kept aside after `mark` (rolled back).
pub(super) fn truncate(mark: usize) {
    KEPT.with_borrow_mut(|kept| {
        if let Some(kept) = kept {
            kept.truncate(mark);
        }
    });
}

/// Writes what was kept aside, one upsert per row, and keeps nothing more; call just before
/// the batch's commit. `true` when it wrote.
pub(super) fn flush(conn: &mut DbConn, now: NaiveDateTime) -> StoreResult<bool> {
    let kept = KEPT.with_borrow_mut(|kept| kept.as_mut().map(std::mem::take).unwrap_or_default());
    let mut days: BTreeMap<(&str, &str, String), Change> = BTreeMap::new();
    for change in kept {
        let sum = days.entry((change.level, change.owner, change.day.clone())).or_insert_with(|| Change {
            reserve: (0, 0),
            held: (0, 0),
            charge: (0, 0),
            ..change.clone()
        });
        let add = |a: (i64, i64), b: (i64, i64)| (a.0.saturating_add(b.0), a.1.saturating_add(b.1));
        sum.reserve = add(sum.reserve, change.reserve);
        sum.held = add(sum.held, change.held);
        sum.charge = add(sum.charge, change.charge);
    }
    for change in days.values() {
        add_to_day(conn, change, now)?;
    }
    Ok(!days.is_empty())
}

/// Applies a change kept aside to its row, which is created when it is the day's first: one
/// upsert.
fn add_to_day(conn: &mut DbConn, change: &Change, now: NaiveDateTime) -> StoreResult<()> {
    let net = |reserve: i64, held: i64| reserve.saturating_sub(held);
    let (tokens, micros) = (net(change.reserve.0, change.held.0), net(change.reserve.1, change.held.1));
    let row = (
        usage_days::level.eq(change.level),
        usage_days::owner.eq(change.owner),
        usage_days::day.eq(&change.day),
        usage_days::spent_tokens.eq(change.charge.0),
        usage_days::spent_micros.eq(change.charge.1),
        usage_days::reserved_tokens.eq(tokens.max(0)),
        usage_days::reserved_micros.eq(micros.max(0)),
        usage_days::updated_at.eq(now),
    );
    // What it holds never goes below zero, as a settlement in place leaves it.
    let reserved_tokens =
        case_when((usage_days::reserved_tokens + tokens).gt(0_i64), usage_days::reserved_tokens + tokens)
            .otherwise(0_i64);
    let reserved_micros =
        case_when((usage_days::reserved_micros + micros).gt(0_i64), usage_days::reserved_micros + micros)
            .otherwise(0_i64);
    let change = (
        usage_days::spent_tokens.eq(usage_days::spent_tokens + change.charge.0),
        usage_days::spent_micros.eq(usage_days::spent_micros + change.charge.1),
        usage_days::reserved_tokens.eq(reserved_tokens),
        usage_days::reserved_micros.eq(reserved_micros),
        usage_days::updated_at.eq(now),
    );
    on_backend!(conn, |c| diesel::insert_into(usage_days::table)
        .values(row)
        .on_conflict((usage_days::level, usage_days::owner, usage_days::day))
        .do_update()
        .set(change)
        .execute(c))?;
    Ok(())
}
