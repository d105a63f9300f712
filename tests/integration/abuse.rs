//! What one anonymous client can do to the studio with lorewire's default settings (the
//! attacks of the players-and-limits issue, read against `LOREWIRE_NEW_PLAYERS_RATE` 60/1h and
//! `LOREWIRE_PLAYER_LLM_RATE` 60/1m): new identities, new content items and runs under made-up
//! projects all stop at the defaults, and nothing is stored for what is refused.

use serde_json::json;

use crate::common::{spawn_with, Db, Setup};
use lorewire::core::config::Config;

async fn one_anonymous_client_is_bounded_by_the_defaults(db: Db) {
    let defaults = Config::with_database("unused");
    let app = spawn_with(Setup::new(db), |c| {
        c.identity.new_players_rate = defaults.identity.new_players_rate;
        c.identity.player_unwatched_runs = defaults.identity.player_unwatched_runs;
        c.usage = defaults.usage;
    })
    .await;

    // 300 content:request for new subject_ids on one socket: 60 items and 60 upstream calls.
    let mut ws = app.ws().await;
    ws.send(json!({"type": "session:start", "nickname": "p0"})).await;
    assert_eq!(ws.recv().await["type"], "session:ack");
    // One at a time, read as they come (a client that does not read is closed as a slow consumer).
    let (mut items, mut refused) = (0, 0);
    for id in 0..300 {
        ws.send(json!({"type": "content:request", "kind": "npc", "subject_id": 1000 + id, "ref": id})).await;
        loop {
            let frame = ws.recv().await;
            if frame["ref"] != json!(id) {
                continue;
            }
            match frame["type"].as_str() {
                Some("error:rate_limited") => refused += 1,
                _ if frame["content"].is_object() => items += 1,
                _ => panic!("unexpected answer {frame}"),
            }
            break;
        }
    }
    assert_eq!((items, refused), (60, 240));
    crate::common::eventually("the 60 items' calls", || async { (app.fake.request_count() == 60).then_some(()) }).await;

    // 40 generate:start, each under a new made-up project: the player's starts are spent.
    for i in 0..40 {
        ws.send(json!({"type": "generate:start", "project_id": format!("made-up-{i}"), "action": "WRITE",
                       "input": "a bell", "ref": 1000 + i}))
            .await;
        let refused = loop {
            let frame = ws.recv().await;
            if frame["ref"] == json!(1000 + i) {
                break frame;
            }
        };
        assert_eq!((refused["type"].as_str(), refused["level"].as_str()), (Some("error:rate_limited"), Some("player")));
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(app.fake.request_count(), 60, "no run called the upstream");
    drop(ws);

    // 299 more session:start without a token from the same address: 60 new players in all.
    let mut answers = std::collections::BTreeMap::<String, usize>::new();
    for i in 1..300 {
        let mut ws = app.ws().await;
        ws.send(json!({"type": "session:start", "nickname": format!("p{i}")})).await;
        let answer = ws.recv().await;
        *answers.entry(answer["type"].as_str().unwrap_or_default().to_owned()).or_default() += 1;
    }
    assert_eq!(answers.get("session:ack"), Some(&59), "{answers:?}");
    assert_eq!(answers.get("error:rate_limited"), Some(&240), "{answers:?}");
}

crate::both_backends!(one_anonymous_client_is_bounded_by_the_defaults);
