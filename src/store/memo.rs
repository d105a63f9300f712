//! What the writer's batches read again and again: the upstreams, the prices of models, the
//! stored limits. Every write of a batch that would read them otherwise (a content item's
//! reservation and claim, its settlement) then costs no round trip for them.
//!
//! Only on the writer's threads while they run a batch ([`Memoizing`]); anywhere else every call
//! reads the database. Within a batch what was read is kept until the batch changes any of them
//! ([`changed`]) or rolls back ([`forget`]): what is kept is always what the batch's transaction
//! would read. Between batches it is kept for the whole process, for at most [`KEPT_FOR`], and
//! only while no write of this process changed any of them since it was read: a batch that
//! changed them makes every thread read them again once it committed, before any of its writes
//! is answered. Another process's change is seen within [`KEPT_FOR`] (as a change of the start
//! rate is: `limits::rate`).

use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::StoreResult;

/// How long what was read is kept between batches.
pub const KEPT_FOR: Duration = Duration::from_secs(1);

/// What was read, by what (the reading function's name) and of what (its argument, or "").
type Key = (&'static str, String);
type Value = Arc<dyn Any + Send + Sync>;

/// What the current batch read, whether it changed any of it, and what its store's batches read.
struct Batch {
    kept: HashMap<Key, Value>,
    changed: bool,
    between: Arc<Between>,
}

thread_local! {
    static MEMO: RefCell<Option<Batch>> = const { RefCell::new(None) };
}

/// Bumped by every change of this process: what was read before is not used again.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// What one store's batches read, with at which generation and when (one per store: a process
/// may open several databases, as the tests do).
#[derive(Default)]
pub(super) struct Between(Mutex<HashMap<Key, (Value, u64, Instant)>>);

/// Memoizing on this thread until dropped.
pub(super) struct Memoizing(());

/// Starts memoizing on this thread (a writer of the store whose batches share `between`, for
/// one batch).
pub(super) fn start(between: &Arc<Between>) -> Memoizing {
    MEMO.set(Some(Batch { kept: HashMap::new(), changed: false, between: between.clone() }));
    Memoizing(())
}

impl Drop for Memoizing {
    fn drop(&mut self) {
        MEMO.set(None);
    }
}

/// Forgets what the batch kept: it rolled back what it had read after a change.
pub(super) fn forget() {
    MEMO.with_borrow_mut(|memo| {
        if let Some(batch) = memo {
            batch.kept.clear();
        }
    });
}

/// A write changes upstreams, prices or limits: the batch reads them again from here on (it
/// keeps none between batches), and once it committed nobody uses what was read before
/// ([`committed`]). Outside a batch, what was read before is not used again at once.
pub(super) fn changed() {
    let in_batch = MEMO.with_borrow_mut(|memo| match memo {
        Some(batch) => {
            batch.kept.clear();
            batch.changed = true;
            true
        }
        None => false,
    });
    if !in_batch {
        GENERATION.fetch_add(1, Ordering::SeqCst);
    }
}

/// The batch committed: when it changed upstreams, prices or limits, what any thread read before
/// is not used again. Call before any of its writes is answered.
pub(super) fn committed() {
    if MEMO.with_borrow(|memo| memo.as_ref().is_some_and(|batch| batch.changed)) {
        GENERATION.fetch_add(1, Ordering::SeqCst);
    }
}

/// `read`, or what it answered earlier in this batch, or in an earlier batch of this process
/// within [`KEPT_FOR`] with nothing changed since, for the same `what` and `of`.
pub(super) fn kept<T: Clone + Send + Sync + 'static>(
    what: &'static str,
    of: &str,
    read: impl FnOnce() -> StoreResult<T>,
) -> StoreResult<T> {
    let key = (what, of.to_owned());
    // `None`: not memoizing; else what the batch kept, whether it changed any of it, and what
    // its store's batches read.
    let memoizing = MEMO.with_borrow(|memo| {
        memo.as_ref().map(|batch| (batch.kept.get(&key).cloned(), batch.changed, batch.between.clone()))
    });
    let (changed, between) = match memoizing {
        None => return read(),
        Some((Some(value), _, _)) => return Ok(value.downcast_ref::<T>().cloned().expect("kept with its type")),
        Some((None, changed, between)) => (changed, between),
    };
    let generation = GENERATION.load(Ordering::SeqCst);
    let earlier = if changed { None } else { between.get(&key, generation) };
    let value = match earlier {
        Some(value) => value,
        None => {
            let value: Value = Arc::new(read()?);
            if !changed {
                let mut kept = between.0.lock().unwrap_or_else(|e| e.into_inner());
                kept.insert(key.clone(), (value.clone(), generation, Instant::now()));
            }
            value
        }
    };
    MEMO.with_borrow_mut(|memo| {
        if let Some(batch) = memo {
            batch.kept.insert(key, value.clone());
        }
    });
    Ok(value.downcast_ref::<T>().cloned().expect("kept with its type"))
}

impl Between {
    /// What an earlier batch read for `key` at `generation` within [`KEPT_FOR`].
    fn get(&self, key: &Key, generation: u64) -> Option<Value> {
        let kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let (value, at_generation, at) = kept.get(key)?;
        (*at_generation == generation && at.elapsed() < KEPT_FOR).then(|| value.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_only_while_memoizing_and_until_forgotten() {
        let between = Arc::new(Between::default());
        let reads = std::cell::Cell::new(0);
        let read = || {
            reads.set(reads.get() + 1);
            Ok(Vec::new())
        };
        let prices = || kept::<Vec<i64>>("prices", "", read);
        prices().unwrap();
        prices().unwrap();
        assert_eq!(reads.get(), 2, "not memoizing: every call reads");
        {
            let _memoizing = start(&between);
            prices().unwrap();
            prices().unwrap();
            assert_eq!(reads.get(), 3, "read once in a batch");
            kept::<Vec<i64>>("prices", "of another", read).unwrap();
            assert_eq!(reads.get(), 4, "another argument is another read");
            forget();
            prices().unwrap();
            assert_eq!(reads.get(), 4, "rolled back: what was read between batches stands");
        }
        prices().unwrap();
        assert_eq!(reads.get(), 5, "not memoizing: every call reads");
        {
            let _memoizing = start(&between);
            prices().unwrap();
            assert_eq!(reads.get(), 5, "kept between batches");
            changed();
            prices().unwrap();
            prices().unwrap();
            assert_eq!(reads.get(), 6, "a batch that changed them reads once more, and keeps that");
            committed();
        }
        {
            let _memoizing = start(&between);
            prices().unwrap();
            assert_eq!(reads.get(), 7, "once it committed, nobody uses what was read before");
            prices().unwrap();
            assert_eq!(reads.get(), 7);
        }
        let later = Instant::now() + KEPT_FOR;
        while Instant::now() < later {
            std::thread::sleep(KEPT_FOR / 10);
        }
        let _memoizing = start(&between);
        prices().unwrap();
        assert_eq!(reads.get(), 8, "kept between batches for at most KEPT_FOR");
    }
}
