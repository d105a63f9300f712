//! Content writes made ahead of a writer's batch on PostgreSQL, many in one statement: the new
//! items (with their claimed jobs) of the requests that create them ([`super::place`]), the
//! reservations of those items' calls ([`super::reserving`]), and the ends of the jobs the
//! batch ends ([`super::ending`]). Each request still runs in its place in the batch and takes
//! what was made for it ([`take_placed`], [`take_reserved`], [`take_ended`]); an item found
//! there already is read again by its request, in its place (unless every write of the batch
//! told what it writes: then nothing but that request touches the item first), and an item
//! two writes of the batch name is left to them, so that what each write sees is what it would
//! have seen. A
//! reservation made ahead counts as made before the batch's other writes (they are
//! concurrent: the batch commits them at once); one that would not fit is left to its request,
//! which decides in its place. A batch that leaves anything made ahead untaken does not commit
//! it ([`left`]).
//!
//! Only PostgreSQL: SQLite's statements cost no round trip, and its one writer keeps them.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use chrono::NaiveDateTime;

use super::behind::HoldRow;
use super::content_row::ContentRow;
use super::ending::{self, Ending};
use super::jobs::{Ended, JobRow};
use super::place::{self, Charging, Key, Placed, Placing};
use super::reserving::{self, Share};
use super::usage::{Account, Reserved};
use super::{DbConn, StoreResult};
use crate::domain::content::{ContentKind, ContentStatus, FallbackReason};

/// What a content write tells the writer's batch of itself before it runs.
#[derive(Debug, Clone)]
pub enum Ahead {
    /// A content request.
    Request(Asked),
    /// The end of a content job.
    Finish(Finishing),
}

/// A content request: its item, and when it would create the item with its job claimed at once
/// (it does not regenerate, a worker has a slot for it), what [`place::place`] needs.
#[derive(Debug, Clone)]
pub struct Asked {
    pub kind: ContentKind,
    pub subject_id: i64,
    pub owner: i64,
    pub fields: String,
    pub context: String,
    pub player: i64,
    /// `None`: the request is not made ahead (it regenerates, or its job queues).
    pub worker: Option<String>,
    pub at: NaiveDateTime,
    /// What a new item's call would reserve, when it may be reserved ahead.
    pub reserving: Option<Reserving>,
}

/// What the reservation of a new item's call would reserve, read on the batch's connection
/// (`None`: it is left to the request).
#[derive(Clone)]
pub struct Reserving(pub Arc<Plan>);

/// What [`Reserving`] runs.
pub type Plan = dyn Fn(&mut DbConn) -> StoreResult<Option<Planned>> + Send + Sync;

impl std::fmt::Debug for Reserving {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reserving")
    }
}

/// A reservation as [`super::usage::reserve`] would make it: its accounts (none twice), its day
/// and its bound (tokens, micro-dollars), made at `at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub accounts: Vec<PlannedAccount>,
    pub day: String,
    pub bound: (i64, i64),
    pub at: NaiveDateTime,
}

/// An [`Account`] of a [`Planned`] reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedAccount {
    pub level: String,
    pub owner: String,
    pub limits: (Option<i64>, Option<i64>),
    pub own: Option<i64>,
}

impl PlannedAccount {
    pub fn of(account: &Account<'_>) -> Self {
        PlannedAccount {
            level: account.level.to_owned(),
            owner: account.owner.to_owned(),
            limits: account.limits,
            own: account.own,
        }
    }

    fn is(&self, account: &Account<'_>) -> bool {
        self.level == account.level
            && self.owner == account.owner
            && self.limits == account.limits
            && self.own == account.own
    }
}

/// The end of a content job: its item (by key too, to be told apart from the batch's requests
/// for it) and the result.
#[derive(Debug, Clone)]
pub struct Finishing {
    pub kind: ContentKind,
    pub subject_id: i64,
    pub owner: i64,
    pub content_id: i64,
    pub job_id: i64,
    pub worker: String,
    pub status: ContentStatus,
    pub fields: String,
    pub model: Option<String>,
    pub reason: Option<FallbackReason>,
    pub at: NaiveDateTime,
    /// The target whose holds the end takes for its settlement ([`super::content::Finish`]).
    pub settles: Option<String>,
}

impl Ahead {
    fn key(&self) -> Key {
        match self {
            Ahead::Request(a) => (a.kind.as_str().to_owned(), a.subject_id, a.owner),
            Ahead::Finish(f) => (f.kind.as_str().to_owned(), f.subject_id, f.owner),
        }
    }
}

impl Asked {
    fn placing(&self) -> Option<Placing<'_>> {
        Some(Placing {
            kind: self.kind.as_str(),
            subject_id: self.subject_id,
            owner: self.owner,
            fields: &self.fields,
            context: &self.context,
            player: self.player,
            worker: self.worker.as_deref()?,
            at: self.at,
        })
    }
}

type EndedAhead = ((String, Option<String>), Ended<ContentRow>, Vec<HoldRow>);

#[derive(Default)]
struct Made {
    /// Items made, with their jobs, by key.
    placed: HashMap<Key, (ContentRow, JobRow)>,
    /// Items found there already, by key, when every write of the batch told what it writes
    /// (nothing else in it can change them before their requests run).
    there: HashMap<Key, ContentRow>,
    /// Jobs ended, by id: the worker that ended it and the target it settles, what the end
    /// found, and the holds it took.
    ended: HashMap<i64, EndedAhead>,
    /// Reservations made, with the rows they reserved at.
    reserved: Vec<(Planned, Vec<Reserved>)>,
}

thread_local! {
    /// What was made ahead of this thread's batch, until its writes take it.
    static MADE: RefCell<Made> = RefCell::new(Made::default());
}

/// Makes ahead of a batch what its writes `asks` (in the batch's order) would write: one
/// statement for the new items with their calls' reservations (for two or more items, or any
/// reservation: a new item's request alone saves its reservation's statement), one for the
/// jobs' ends (for two or more: one end alone costs the same statement). What two writes of
/// the batch name is left to them. `whole`: `asks` are every write of the batch. Answers how
/// many writes it made. PostgreSQL only.
pub(super) fn run(conn: &mut DbConn, asks: &[&Ahead], whole: bool) -> StoreResult<usize> {
    let mut seen = HashSet::new();
    let twice: HashSet<Key> = asks.iter().map(|a| a.key()).filter(|key| !seen.insert(key.clone())).collect();
    let alone = asks.iter().filter(|a| !twice.contains(&a.key()));
    // The requests that would create their item with its job claimed: each has a placing, in
    // the same order (an item's number in the statement is its place here).
    let asked: Vec<&Asked> = alone
        .clone()
        .filter_map(|a| match a {
            Ahead::Request(asked) if asked.worker.is_some() => Some(asked),
            _ => None,
        })
        .collect();
    let finishing: Vec<&Finishing> = alone
        .clone()
        .filter_map(|a| match a {
            Ahead::Finish(f) => Some(f),
            Ahead::Request(_) => None,
        })
        .collect();
    // The reservations of the items the statement makes, as their requests would make them.
    let mut plans: Vec<(usize, Planned)> = Vec::new();
    if matches!(conn, DbConn::Pg(_)) && (asked.len() > 1 || asked.iter().any(|a| a.reserving.is_some())) {
        for (i, asked) in asked.iter().enumerate() {
            if let Some(reserving) = &asked.reserving {
                plans.extend((reserving.0)(conn)?.map(|plan| (i, plan)));
            }
        }
    }
    let items: Vec<Placing<'_>> = asked.iter().filter_map(|a| a.placing()).collect();
    if let (DbConn::Pg(c), true) = (&mut *conn, items.len() > 1 || !plans.is_empty()) {
        let shares = shares_of(&plans);
        let charging: Vec<Charging<'_>> =
            shares.iter().map(|(i, share)| Charging { item: *i as i64 + 1, share }).collect();
        let (placed, fitted) = place::place_charging(c, &items, &charging)?;
        let mut made: Vec<(Key, (ContentRow, JobRow))> = Vec::new();
        for (key, placed) in placed {
            match placed {
                Placed::Made(row, job) => made.push((key, (row, job))),
                // In a batch whose every write told what it writes, nothing but its own request
                // (the only one naming it) touches an item before that request runs.
                Placed::There(row) if whole => {
                    MADE.with_borrow_mut(|kept| kept.there.insert(key, row));
                }
                Placed::There(_) => {}
            }
        }
        let made_plans: Vec<Planned> = plans
            .into_iter()
            .filter(|(i, _)| !shares.is_empty() && made.iter().any(|(key, _)| *key == items[*i].key()))
            .map(|(_, plan)| plan)
            .collect();
        MADE.with_borrow_mut(|kept| kept.placed.extend(made));
        took(c, made_plans, &fitted)?;
    }
    if let (DbConn::Pg(c), true) = (&mut *conn, finishing.len() > 1) {
        let reasons: Vec<Option<String>> = finishing.iter().map(|f| f.reason.map(|r| r.to_string())).collect();
        let jobs: Vec<Ending<'_>> = finishing
            .iter()
            .zip(&reasons)
            .map(|(f, reason)| Ending {
                job_id: f.job_id,
                worker: &f.worker,
                content_id: f.content_id,
                status: f.status.as_str(),
                fields: &f.fields,
                model: f.model.as_deref(),
                reason: reason.as_deref(),
                at: f.at,
                settles: f.settles.as_deref(),
            })
            .collect();
        let ended = ending::end(c, &jobs)?;
        MADE.with_borrow_mut(|kept| {
            let by = finishing.iter().map(|f| (f.worker.clone(), f.settles.clone()));
            kept.ended.extend(ended.into_iter().zip(by).map(|((id, end, holds), by)| (id, (by, end, holds))))
        });
    }
    Ok(left())
}

/// The accounts of `plans` ((item, plan)), one share each, when they may be reserved together:
/// one day, and one set of limits per ledger row (else none: each is left to its request).
fn shares_of(plans: &[(usize, Planned)]) -> Vec<(usize, Share)> {
    type Rule = ((Option<i64>, Option<i64>), Option<i64>);
    let mut rules: BTreeMap<(&str, &str), Rule> = BTreeMap::new();
    let mut shares = Vec::new();
    for (i, plan) in plans {
        if plan.day != plans[0].1.day {
            return Vec::new();
        }
        for a in &plan.accounts {
            if *rules.entry((&a.level, &a.owner)).or_insert((a.limits, a.own)) != (a.limits, a.own) {
                return Vec::new();
            }
            let share = Share {
                level: a.level.clone(),
                owner: a.owner.clone(),
                day: plan.day.clone(),
                sum: plan.bound,
                limits: a.limits,
                own: a.own,
                at: plan.at,
            };
            shares.push((*i, share));
        }
    }
    shares
}

/// Keeps the reservations of the items made (`plans`) whose rows all took the sum (`fitted`);
/// what the others added at a row that took it is taken back, and they are left to their
/// requests.
fn took(c: &mut diesel::PgConnection, plans: Vec<Planned>, fitted: &[Reserved]) -> StoreResult<()> {
    type Row<'a> = (&'a str, &'a str, &'a str);
    let row_of = |a: &PlannedAccount| fitted.iter().find(|r| r.0 == a.level && r.1 == a.owner);
    let mut made = Vec::new();
    let mut taken_back: BTreeMap<Row<'_>, (i64, i64)> = BTreeMap::new();
    for plan in &plans {
        let rows: Option<Vec<Reserved>> = plan.accounts.iter().map(|a| row_of(a).cloned()).collect();
        match rows {
            Some(rows) => made.push((plan.clone(), rows)),
            None => {
                for a in plan.accounts.iter().filter(|a| row_of(a).is_some()) {
                    let back = taken_back.entry((&a.level, &a.owner, &plan.day)).or_default();
                    *back = (back.0 + plan.bound.0, back.1 + plan.bound.1);
                }
            }
        }
    }
    if !taken_back.is_empty() {
        let rows: Vec<_> = taken_back.iter().map(|(&(l, o, d), &(t, m))| (l, o, d, t, m)).collect();
        reserving::release(c, &rows)?;
    }
    MADE.with_borrow_mut(|kept| kept.reserved.extend(made));
    Ok(())
}

/// Whether a batch of `ahead` alone is run with its writes made ahead: a new item's request
/// whose call is reserved (its item, job and reservation then take one statement).
pub(super) fn worth_alone(ahead: &Ahead) -> bool {
    matches!(ahead, Ahead::Request(asked) if asked.worker.is_some() && asked.reserving.is_some())
}

/// The rows reserved at ahead for a reservation of `accounts` on `day` of `bound` made at `at`,
/// when one was (and is now taken).
pub fn take_reserved(
    accounts: &[Account<'_>],
    day: &str,
    bound: (i64, i64),
    at: NaiveDateTime,
) -> Option<Vec<Reserved>> {
    MADE.with_borrow_mut(|kept| {
        let i = kept.reserved.iter().position(|(plan, _)| {
            plan.day == day
                && plan.bound == bound
                && plan.at == at
                && plan.accounts.len() == accounts.len()
                && plan.accounts.iter().zip(accounts).all(|(p, a)| p.is(a))
        })?;
        Some(kept.reserved.remove(i).1)
    })
}

/// The item made ahead for `placing`'s request, with its job, when it was (for the same worker
/// and player); or, when every write of the batch told what it writes, the item as the
/// statement found it there.
pub(super) fn take_placed(placing: &Placing<'_>) -> Option<Placed> {
    MADE.with_borrow_mut(|kept| {
        let key = placing.key();
        if let Some(row) = kept.there.remove(&key) {
            return Some(Placed::There(row));
        }
        match kept.placed.get(&key) {
            Some((_, job)) if job.locked_by.as_deref() == Some(placing.worker) && job.player_id == placing.player => {
                kept.placed.remove(&key).map(|(row, job)| Placed::Made(row, job))
            }
            _ => None,
        }
    })
}

/// What the end of job `job_id` by `worker` settling `settles` found, and the holds it took,
/// when it was made ahead.
pub(super) fn take_ended(
    job_id: i64,
    worker: &str,
    settles: Option<&str>,
) -> Option<(Ended<ContentRow>, Vec<HoldRow>)> {
    MADE.with_borrow_mut(|kept| match kept.ended.get(&job_id) {
        Some(((by, target), _, _)) if by == worker && target.as_deref() == settles => {
            kept.ended.remove(&job_id).map(|(_, end, holds)| (end, holds))
        }
        _ => None,
    })
}

/// How many writes made ahead no write took (the batch must not commit them).
pub(super) fn left() -> usize {
    MADE.with_borrow(|kept| kept.placed.len() + kept.there.len() + kept.ended.len() + kept.reserved.len())
}

/// Forgets what was made ahead (its transaction ended or was rolled back).
pub(super) fn forget() {
    MADE.with_borrow_mut(|kept| *kept = Made::default());
}
