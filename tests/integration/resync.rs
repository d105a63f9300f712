//! What a feature's backplane sink does when events of the other processes were lost (its
//! listener reconnected, its queue overflowed, or another process dropped what it meant to
//! send): the content sink reads every item subscribed here again and pushes it, with the real
//! Hub, a recording session and a temp SQLite store; no server, no socket, no other process.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use actix::prelude::*;
use lorewire::backplane::Sink;
use lorewire::content::remote::ContentSink;
use lorewire::core::metrics::Metrics;
use lorewire::domain::content::ContentKind;
use lorewire::hub::{Connect, Hub, Subscribe, ToSession, Topic};
use lorewire::store::content::{self, RequestItem};
use lorewire::store::Store;
use serde_json::Value;

use crate::common::{eventually, Db, TestDb};

/// A session that only records the frames the Hub hands it.
struct Recorder(Rc<RefCell<Vec<Value>>>);

impl Actor for Recorder {
    type Context = Context<Self>;
}

impl Handler<ToSession> for Recorder {
    type Result = ();
    fn handle(&mut self, msg: ToSession, _: &mut Context<Self>) {
        if let ToSession::Frame { text, .. } = msg {
            self.0.borrow_mut().push(serde_json::from_str(&text).expect("a JSON frame"));
        }
    }
}

#[actix_web::test]
async fn the_content_sink_pushes_every_item_subscribed_here_again_after_events_were_lost() {
    let db = TestDb::new(Db::Sqlite);
    let store = Store::connect(&db.url).expect("test store");
    store.migrate().expect("migrations");
    let now = chrono::Utc::now().naive_utc();
    store
        .write(move |c| {
            let item = RequestItem {
                origin: "other-process",
                kind: lorewire::domain::content::ContentKind::Quest,
                subject_id: 7,
                owner: 0,
                player: 0,
                context: Some("{}"),
                empty_fields: "{}",
                regenerate: false,
                may_change: true,
                claim_for: None,
                queue_limit: 10_000,
            };
            content::request(c, &item, now).map(|_| ())
        })
        .await
        .expect("an item");

    let hub = Hub::new(Arc::new(Metrics::new())).start();
    let seen = Rc::new(RefCell::new(Vec::new()));
    hub.send(Connect { id: 1, recipient: Recorder(seen.clone()).start().recipient() }).await.unwrap();
    let quest = ContentKind::parse("quest").expect("a kind");
    // Subscribed to the stored item, and to one nobody has requested yet.
    hub.send(Subscribe { id: 1, topic: Topic::Content(quest, 7, 0) }).await.unwrap();
    hub.send(Subscribe { id: 1, topic: Topic::Content(quest, 8, 0) }).await.unwrap();

    let sink = ContentSink { store: store.clone(), hub: hub.clone() };
    sink.reconnected().await;
    let frames = eventually("the item pushed again", || {
        let seen = seen.borrow().clone();
        async move { (!seen.is_empty()).then_some(seen) }
    })
    .await;
    assert_eq!(frames.len(), 1, "only the stored item: {frames:?}");
    assert_eq!(frames[0]["type"], "content:update");
    assert_eq!(frames[0]["content"]["subject_id"], 7);
    assert_eq!(frames[0]["content"]["status"], "pending");
    assert_eq!(frames[0]["content"]["version"], 1);
}
