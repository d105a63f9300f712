//! The backplane of a process that is alone (SQLite): there is nobody to tell and nobody to hear.
//! Never sends or receives anything.

use futures_util::future::LocalBoxFuture;
use futures_util::FutureExt;

use super::{Backplane, BackplaneError, Event, Sinks};

pub struct LocalBackplane;

impl Backplane for LocalBackplane {
    fn name(&self) -> &'static str {
        "local"
    }
    fn shared(&self) -> bool {
        false
    }
    fn publish(&self, _events: Vec<Event>) -> LocalBoxFuture<'static, Result<(), BackplaneError>> {
        async { Ok(()) }.boxed_local()
    }
    fn listen(&self, _sinks: Sinks) {}
    fn is_up(&self) -> bool {
        true
    }
    fn stop(&self) {}
}
