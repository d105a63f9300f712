//! The lobby as other processes change it, heard on the backplane: their players' presence goes
//! to the [`Presence`] actor, their messages and moods are read back (they are committed) and pushed
//! to the lobby's sessions here. Never writes.

use actix::Addr;
use futures_util::future::LocalBoxFuture;
use futures_util::FutureExt;

use super::frames::{mood_publish, new_message_publish};
use super::presence::{ListenerReady, Presence, Remote};
use crate::backplane::{Event, Family, Sink};
use crate::domain::events::MessageChange;
use crate::hub::Hub;
use crate::store::messages;
use crate::store::Store;

pub struct LobbySink {
    pub store: Store,
    pub hub: Addr<Hub>,
    pub presence: Addr<Presence>,
}

impl Sink for LobbySink {
    fn family(&self) -> Family {
        Family::Lobby
    }

    fn deliver(&self, event: Event) -> LocalBoxFuture<'static, ()> {
        let Event::Message { change, id, .. } = event else {
            self.presence.do_send(Remote(event));
            return async {}.boxed_local();
        };
        let (store, hub) = (self.store.clone(), self.hub.clone());
        async move {
            let message = match store.run(move |conn| messages::find(conn, id)).await {
                Ok(Some(row)) => row.message(),
                Ok(None) => return,
                Err(e) => {
                    tracing::error!(message = id, error = %e, "could not read a changed message");
                    return;
                }
            };
            hub.do_send(match change {
                MessageChange::New => new_message_publish(message),
                MessageChange::Mood => mood_publish(&message),
            });
        }
        .boxed_local()
    }

    /// Presence is asked of the others again. Messages and moods sent meanwhile are not
    /// replayed: a session sees new ones from now on (the next join's `lobby:history` has them).
    fn reconnected(&self) -> LocalBoxFuture<'static, ()> {
        self.presence.do_send(ListenerReady);
        async {}.boxed_local()
    }
}
