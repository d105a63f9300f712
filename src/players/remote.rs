//! Players blocked on other processes, as this process hears them on the backplane: their
//! sessions here are closed with 4003 "blocked". After events were lost, the players with a
//! session here are read back and those blocked meanwhile are closed. Never writes.

use actix::Addr;
use futures_util::future::LocalBoxFuture;
use futures_util::FutureExt;

use crate::backplane::{Event, Family, Sink};
use crate::hub::{CloseTopic, Hub, PlayerTopics};
use crate::store::usage;
use crate::store::Store;

pub struct PlayersSink {
    pub store: Store,
    pub hub: Addr<Hub>,
}

impl Sink for PlayersSink {
    fn family(&self) -> Family {
        Family::Players
    }

    fn deliver(&self, event: Event) -> LocalBoxFuture<'static, ()> {
        if let Event::PlayerBlocked { user_id, .. } = event {
            self.hub.do_send(CloseTopic::blocked(user_id));
        }
        async {}.boxed_local()
    }

    /// Blocks announced meanwhile were lost: the players with a session here that are blocked
    /// now have those sessions closed.
    fn reconnected(&self) -> LocalBoxFuture<'static, ()> {
        let (store, hub) = (self.store.clone(), self.hub.clone());
        async move {
            let Ok(here) = hub.send(PlayerTopics).await else { return };
            if here.is_empty() {
                return;
            }
            match store.run(move |conn| usage::blocked_among(conn, &here)).await {
                Ok(blocked) => {
                    for user_id in blocked {
                        tracing::info!(user = user_id, "closing the sessions of a player blocked meanwhile");
                        hub.do_send(CloseTopic::blocked(user_id));
                    }
                }
                Err(e) => tracing::error!(error = %e, "could not read which players are blocked"),
            }
        }
        .boxed_local()
    }
}
