//! Run text held back until moderation has checked it (PROTOCOL §6): the stream's deltas wait
//! here, and one checker at a time takes what waits (at most a window's characters, cut after
//! a sentence's end when one is in it), checks it together with the end of the text already
//! released (so a word cut between two windows is seen whole), and releases it. The first
//! delta is checked as soon as it arrives, so moderation adds about one check's latency to the
//! time to the first delta. A flag stops the release: nothing unchecked ever reaches a client.

use std::cell::RefCell;
use std::rc::Rc;

use tokio::sync::Notify;

use crate::domain::moderation::Surface;
use crate::moderation::Moderation;

/// Characters of released text checked again with the next window.
const CONTEXT_CHARS: usize = 64;

#[derive(Default)]
struct State {
    waiting: String,
    /// The end of the released text, for the next window's context.
    released_tail: String,
    /// The stream has ended: what waits is all there will be.
    closed: bool,
}

/// The text of one attempt, between the stream and its release.
#[derive(Clone, Default)]
pub struct Held {
    state: Rc<RefCell<State>>,
    arrived: Rc<Notify>,
}

impl Held {
    /// A delta of the stream (from its synchronous callback).
    pub fn push(&self, delta: &str) {
        self.state.borrow_mut().waiting.push_str(delta);
        self.arrived.notify_one();
    }

    /// The stream has ended.
    pub fn close(&self) {
        self.state.borrow_mut().closed = true;
        self.arrived.notify_one();
    }

    /// Checks and releases what arrives until the stream has ended and everything is released
    /// (`false`), or until moderation flags a window (`true`; `stop` is called, what waits and
    /// what arrives after it is never released).
    pub async fn release_checked(
        &self,
        moderation: &Moderation,
        user_id: Option<i64>,
        window: usize,
        mut release: impl FnMut(&str),
        stop: impl FnOnce(),
    ) -> bool {
        loop {
            let (next, context) = loop {
                let taken = {
                    let mut state = self.state.borrow_mut();
                    if state.waiting.is_empty() && state.closed {
                        return false;
                    }
                    take_window(&mut state.waiting, window).map(|w| (w, state.released_tail.clone()))
                };
                match taken {
                    Some(taken) => break taken,
                    None => self.arrived.notified().await,
                }
            };
            let checked = format!("{context}{next}");
            if moderation.check(Surface::Run, user_id, &checked).await.flagged {
                stop();
                return true;
            }
            release(&next);
            let mut state = self.state.borrow_mut();
            state.released_tail.push_str(&next);
            let keep_from = state.released_tail.char_indices().rev().nth(CONTEXT_CHARS - 1).map_or(0, |(i, _)| i);
            state.released_tail.drain(..keep_from);
        }
    }
}

/// The next window of `waiting`: at most `window` characters, ending after the last sentence
/// end in it when the window is full; `None` when nothing waits.
fn take_window(waiting: &mut String, window: usize) -> Option<String> {
    if waiting.is_empty() {
        return None;
    }
    let Some((limit, _)) = waiting.char_indices().nth(window) else {
        return Some(std::mem::take(waiting));
    };
    let cut = waiting[..limit].rfind(['.', '!', '?', '\n']).map_or(limit, |i| i + 1);
    let rest = waiting.split_off(cut);
    Some(std::mem::replace(waiting, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_is_what_waits_up_to_its_size_cut_after_a_sentence() {
        let mut w = "Hello".to_owned();
        assert_eq!(take_window(&mut w, 10).as_deref(), Some("Hello"));
        assert_eq!(take_window(&mut w, 10), None);
        let mut w = "One. Two three four".to_owned();
        assert_eq!(take_window(&mut w, 10).as_deref(), Some("One."));
        assert_eq!(w, " Two three four");
        let mut w = "abcdefghijkl".to_owned();
        assert_eq!(take_window(&mut w, 5).as_deref(), Some("abcde"));
        let mut w = "ééééééé".to_owned();
        assert_eq!(take_window(&mut w, 3).as_deref(), Some("ééé"), "cut on characters");
    }
}
