//! What the writer's batch reads again and again, read once per batch: the upstreams, the
//! prices of models. Every write of a batch that would read them otherwise (a content item's
//! reservation and claim, its settlement) then costs no round trip for them.
//!
//! Only on the writer's thread while it runs a batch ([`Memoizing`]); anywhere else every call
//! reads the database. A batch that writes upstreams or prices ([`forget`]) or rolls back
//! anything reads them again: what is kept is always what the batch's transaction would read.
//! Reading them once at the batch's start is as if the batch had read them then; another
//! process's change that commits meanwhile is seen by the next batch.
//! Writes of upstreams, prices or limits call [`forget`].

use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;

use super::StoreResult;

/// What was read, by what (the reading function's name) and of what (its argument, or "").
type Memo = HashMap<(&'static str, String), Box<dyn Any>>;

thread_local! {
    static MEMO: RefCell<Option<Memo>> = const { RefCell::new(None) };
}

/// Memoizing on this thread until dropped.
pub(super) struct Memoizing(());

/// Starts memoizing on this thread (the writer, for one batch).
pub(super) fn start() -> Memoizing {
    MEMO.set(Some(Memo::new()));
    Memoizing(())
}

impl Drop for Memoizing {
    fn drop(&mut self) {
        MEMO.set(None);
    }
}

/// Forgets what was kept: the batch changed it, or rolled back what it had read after a change.
pub(super) fn forget() {
    MEMO.with_borrow_mut(|memo| {
        if let Some(memo) = memo {
            memo.clear();
        }
    });
}

/// `read`, or what it answered earlier in this batch for the same `what` and `of`.
pub(super) fn kept<T: Clone + 'static>(
    what: &'static str,
    of: &str,
    read: impl FnOnce() -> StoreResult<T>,
) -> StoreResult<T> {
    let key = (what, of.to_owned());
    let memoizing =
        MEMO.with_borrow(|memo| memo.as_ref().map(|m| m.get(&key).and_then(|v| v.downcast_ref::<T>()).cloned()));
    match memoizing {
        None => read(),
        Some(Some(value)) => Ok(value),
        Some(None) => {
            let value = read()?;
            MEMO.with_borrow_mut(|memo| {
                if let Some(memo) = memo {
                    memo.insert(key, Box::new(value.clone()));
                }
            });
            Ok(value)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_only_while_memoizing_and_until_forgotten() {
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
            let _memoizing = start();
            prices().unwrap();
            prices().unwrap();
            assert_eq!(reads.get(), 3, "read once in a batch");
            kept::<Vec<i64>>("prices", "of another", read).unwrap();
            assert_eq!(reads.get(), 4, "another argument is another read");
            forget();
            prices().unwrap();
            assert_eq!(reads.get(), 5, "read again once forgotten");
        }
        prices().unwrap();
        assert_eq!(reads.get(), 6, "the batch is over");
    }
}
