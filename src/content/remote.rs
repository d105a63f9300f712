//! Content changes made by other processes, as this process hears them on the backplane: the item
//! is read back (it is committed) and pushed to the sessions subscribed here. Never writes.

use actix::Addr;
use futures_util::future::LocalBoxFuture;
use futures_util::FutureExt;

use crate::backplane::{Event, Family, Sink};
use crate::domain::content::ContentKind;
use crate::hub::{ContentTopics, Hub};
use crate::store::content as rows;
use crate::store::Store;

pub struct ContentSink {
    pub store: Store,
    pub hub: Addr<Hub>,
}

impl Sink for ContentSink {
    fn family(&self) -> Family {
        Family::Content
    }

    fn deliver(&self, event: Event) -> LocalBoxFuture<'static, ()> {
        let Event::Content { kind, subject_id, owner, .. } = event else { return async {}.boxed_local() };
        let (store, hub) = (self.store.clone(), self.hub.clone());
        async move {
            let Some(kind) = ContentKind::parse(&kind) else {
                tracing::warn!(kind = %kind, subject_id, "another process announced an unknown content kind");
                return;
            };
            let row = store.run(move |conn| rows::find(conn, kind, subject_id, owner)).await;
            match row.and_then(|r| r.as_ref().map(rows::ContentRow::content).transpose()) {
                Ok(Some(content)) => hub.do_send(super::update_publish(content)),
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(kind = kind.as_str(), subject_id, error = %e, "could not read a changed item")
                }
            }
        }
        .boxed_local()
    }

    /// Changes made meanwhile were not heard: every item subscribed here is read again and
    /// pushed (sessions drop a version they already have).
    fn reconnected(&self) -> LocalBoxFuture<'static, ()> {
        let (store, hub) = (self.store.clone(), self.hub.clone());
        async move {
            let Ok(items) = hub.send(ContentTopics).await else { return };
            if items.is_empty() {
                return;
            }
            let count = items.len();
            let read = store
                .run(move |conn| {
                    let mut rows = Vec::with_capacity(items.len());
                    for (kind, subject_id, owner) in items {
                        let Ok(subject_id) = i64::try_from(subject_id) else { continue };
                        rows.extend(rows::find(conn, kind, subject_id, owner)?);
                    }
                    Ok(rows)
                })
                .await;
            match read {
                Ok(rows) => {
                    for row in rows {
                        match row.content() {
                            Ok(content) => hub.do_send(super::update_publish(content)),
                            Err(e) => tracing::error!(error = %e, "could not read a subscribed item again"),
                        }
                    }
                    tracing::info!(items = count, "subscribed items read again after events were lost");
                }
                Err(e) => tracing::error!(items = count, error = %e, "could not read the subscribed items again"),
            }
        }
        .boxed_local()
    }
}
