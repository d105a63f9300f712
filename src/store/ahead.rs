//! Content writes made ahead of a writer's batch on PostgreSQL, many in one statement: the new
//! items (with their claimed jobs) of the requests that create them ([`super::place`]), and
//! the ends of the jobs the batch ends ([`super::ending`]). Each request still runs in its
//! place in the batch and takes what was made for it ([`take_placed`], [`take_ended`]); an item
//! found there already is read again by its request, in its place, and an item two writes of
//! the batch name is left to them, so that what each write sees is what it would have seen.
//! A batch that leaves anything made ahead untaken does not commit it ([`left`]).
//!
//! Only PostgreSQL: SQLite's statements cost no round trip, and its one writer keeps them.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

use chrono::NaiveDateTime;

use super::content_row::ContentRow;
use super::ending::{self, Ending};
use super::jobs::{Ended, JobRow};
use super::place::{self, Key, Placed, Placing};
use super::StoreResult;
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

#[derive(Default)]
struct Made {
    /// Items made, with their jobs, by key.
    placed: HashMap<Key, (ContentRow, JobRow)>,
    /// Jobs ended, by id: the worker that ended it and what the end found.
    ended: HashMap<i64, (String, Ended<ContentRow>)>,
}

thread_local! {
    /// What was made ahead of this thread's batch, until its writes take it.
    static MADE: RefCell<Made> = RefCell::new(Made::default());
}

/// Makes ahead of a batch what its writes `asks` (in the batch's order) would write: one
/// statement for the new items, one for the jobs' ends, each only for two or more (one write
/// alone costs the same statement). What two writes of the batch name is left to them.
/// Answers how many writes it made.
pub(super) fn run(c: &mut diesel::PgConnection, asks: &[&Ahead]) -> StoreResult<usize> {
    let mut seen = HashSet::new();
    let twice: HashSet<Key> = asks.iter().map(|a| a.key()).filter(|key| !seen.insert(key.clone())).collect();
    let alone = asks.iter().filter(|a| !twice.contains(&a.key()));
    let items: Vec<Placing<'_>> = alone
        .clone()
        .filter_map(|a| match a {
            Ahead::Request(asked) => asked.placing(),
            Ahead::Finish(_) => None,
        })
        .collect();
    let finishing: Vec<&Finishing> = alone
        .filter_map(|a| match a {
            Ahead::Finish(f) => Some(f),
            Ahead::Request(_) => None,
        })
        .collect();
    if items.len() > 1 {
        let made = place::place(c, &items)?;
        MADE.with_borrow_mut(|kept| {
            kept.placed.extend(made.into_iter().filter_map(|(key, placed)| match placed {
                Placed::Made(row, job) => Some((key, (row, job))),
                Placed::There(_) => None,
            }))
        });
    }
    if finishing.len() > 1 {
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
            })
            .collect();
        let ended = ending::end(c, &jobs)?;
        MADE.with_borrow_mut(|kept| {
            let workers = finishing.iter().map(|f| f.worker.clone());
            kept.ended.extend(ended.into_iter().zip(workers).map(|((id, end), worker)| (id, (worker, end))))
        });
    }
    Ok(left())
}

/// The item made ahead for `placing`'s request, with its job, when it was (for the same worker
/// and player).
pub(super) fn take_placed(placing: &Placing<'_>) -> Option<(ContentRow, JobRow)> {
    MADE.with_borrow_mut(|kept| {
        let key = placing.key();
        match kept.placed.get(&key) {
            Some((_, job)) if job.locked_by.as_deref() == Some(placing.worker) && job.player_id == placing.player => {
                kept.placed.remove(&key)
            }
            _ => None,
        }
    })
}

/// What the end of job `job_id` by `worker` found, when it was made ahead.
pub(super) fn take_ended(job_id: i64, worker: &str) -> Option<Ended<ContentRow>> {
    MADE.with_borrow_mut(|kept| match kept.ended.get(&job_id) {
        Some((by, _)) if by == worker => kept.ended.remove(&job_id).map(|(_, end)| end),
        _ => None,
    })
}

/// How many writes made ahead no write took (the batch must not commit them).
pub(super) fn left() -> usize {
    MADE.with_borrow(|kept| kept.placed.len() + kept.ended.len())
}

/// Forgets what was made ahead (its transaction ended or was rolled back).
pub(super) fn forget() {
    MADE.with_borrow_mut(|kept| *kept = Made::default());
}
