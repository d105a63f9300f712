//! The presence actor's gathering window, driven through its own messages with the real Hub and
//! a recording session actor: no server, no socket, no database. Joins and leaves of one window
//! go out as one update, a leave and a rejoin in one window cancel out, and above the list
//! maximum only the count goes out, until the count is back at it and the whole list goes again.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use lorewire::backplane::local::LocalBackplane;
use lorewire::core::metrics::Metrics;
use lorewire::hub::{Connect, Hub, ToSession};
use lorewire::lobby::presence::{Join, Leave, Presence};
use serde_json::{json, Value};

use crate::common::eventually;

const WINDOW: Duration = Duration::from_millis(60);

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

struct Rig {
    hub: Addr<Hub>,
    presence: Addr<Presence>,
    /// The frames of the watching session (session 1, user 1).
    seen: Rc<RefCell<Vec<Value>>>,
}

async fn rig(list_max: usize) -> Rig {
    let metrics = Arc::new(Metrics::new());
    let hub = Hub::new(metrics.clone()).start();
    let presence = Presence::new(hub.clone(), metrics, WINDOW, list_max, "p1".into(), Arc::new(LocalBackplane)).start();
    let seen = Rc::new(RefCell::new(Vec::new()));
    let rig = Rig { hub, presence, seen: seen.clone() };
    rig.hub.send(Connect { id: 1, recipient: Recorder(seen).start().recipient() }).await.unwrap();
    let state = rig.join(1, 1).await;
    assert_eq!(state["online"], json!([{ "user_id": 1, "nickname": "u1" }]));
    // The watcher's own join, told to the lobby (a real session holds it back behind its state).
    rig.frames(1).await;
    assert_eq!(rig.seen.take(), [update(&[1], &[], 1)]);
    rig
}

impl Rig {
    /// Session `session` of user `user_id` joins; answers the `presence:state` it is handed.
    async fn join(&self, session: u64, user_id: i64) -> Value {
        let pending = self.presence.send(Join { session, user_id, nickname: format!("u{user_id}") }).await.unwrap();
        let state = pending.ready().await.expect("a presence state");
        serde_json::from_str(&state).unwrap()
    }

    /// Joins without waiting for the end of the window.
    fn join_now(&self, session: u64, user_id: i64) {
        self.presence.do_send(Join { session, user_id, nickname: format!("u{user_id}") });
    }

    fn leave(&self, session: u64) {
        self.presence.do_send(Leave { session });
    }

    /// The presence frames the watcher got after its own state, once there are `n`; waits a
    /// few windows more to see that no other follows.
    async fn frames(&self, n: usize) -> Vec<Value> {
        let frames = eventually(&format!("{n} presence frames"), || async {
            let seen = self.seen.borrow();
            (seen.len() >= n).then(|| seen.clone())
        })
        .await;
        actix_web::rt::time::sleep(WINDOW * 3).await;
        assert_eq!(*self.seen.borrow(), frames, "no frame beyond {n}");
        frames
    }
}

fn update(joins: &[i64], leaves: &[i64], online_count: usize) -> Value {
    let joins: Vec<Value> = joins.iter().map(|id| json!({ "user_id": id, "nickname": format!("u{id}") })).collect();
    let leaves: Vec<Value> = leaves.iter().map(|id| json!({ "user_id": id })).collect();
    json!({ "type": "presence:update", "joins": joins, "leaves": leaves, "online_count": online_count })
}

#[actix_web::test]
async fn joins_and_leaves_of_one_window_go_out_as_one_update() {
    let rig = rig(10).await;
    let state = rig.join(2, 2).await;
    assert_eq!(state["online_count"], 2);
    rig.join_now(3, 3);
    rig.join_now(4, 4);
    rig.leave(2);
    let frames = rig.frames(2).await;
    assert_eq!(frames, [update(&[2], &[], 2), update(&[3, 4], &[2], 3)]);
}

#[actix_web::test]
async fn a_leave_and_a_rejoin_in_one_window_are_no_news() {
    let rig = rig(10).await;
    rig.join(2, 2).await;
    rig.leave(2);
    rig.join_now(3, 2);
    // A second tab of user 1 is no news either.
    rig.join_now(4, 1);
    rig.join_now(5, 5);
    let frames = rig.frames(2).await;
    assert_eq!(frames, [update(&[2], &[], 2), update(&[5], &[], 3)]);
}

#[actix_web::test]
async fn above_the_list_maximum_only_the_count_goes_out_until_it_is_back() {
    let rig = rig(2).await;
    rig.join(2, 2).await;
    let state = rig.join(3, 3).await;
    assert_eq!((state["online_count"].clone(), state["complete"].clone()), (json!(3), json!(false)));
    assert_eq!(state["online"].as_array().unwrap().len(), 2, "the lowest list_max users only");
    rig.leave(3);
    // Back at the maximum: everyone gets the whole list again, once (at most a second after
    // the last count).
    let frames = rig.frames(3).await;
    assert_eq!(frames[..2], [update(&[2], &[], 2), update(&[], &[], 3)]);
    assert_eq!(
        frames[2],
        json!({ "type": "presence:state", "complete": true, "online_count": 2,
                "online": [{ "user_id": 1, "nickname": "u1" }, { "user_id": 2, "nickname": "u2" }] })
    );
    // Listing again: every change is told, but a join and a leave of one window cancel out.
    rig.join_now(6, 6);
    rig.leave(6);
    rig.leave(2);
    let frames = rig.frames(4).await;
    assert_eq!(frames[3], update(&[], &[2], 1));
}
