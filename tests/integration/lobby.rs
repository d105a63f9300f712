//! The lobby: frames after the ack, presence over tabs and its gathering window, the presence
//! list maximum (capped state, paging, count-only updates, full lists again), chat rules, rate
//! limit, history, moods (ready, fallback, recovered after a restart).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{spawn_with, Db, Event, Mode, Setup, TestApp, WsClient};

/// A started session that has read its `lobby:history` and `presence:state`.
struct Joined {
    ws: WsClient,
    ack: Value,
    history: Value,
    online: Value,
    /// The whole `presence:state` frame.
    state: Value,
}

impl Joined {
    fn user_id(&self) -> i64 {
        self.ack["user_id"].as_i64().unwrap()
    }
    fn token(&self) -> String {
        self.ack["token"].as_str().unwrap().to_owned()
    }
}

async fn join(app: &TestApp, nickname: &str, token: Option<&str>) -> Joined {
    let mut ws = app.ws().await;
    ws.lobby_frames = true;
    let mut start = json!({"type": "session:start", "nickname": nickname});
    if let Some(token) = token {
        start["token"] = json!(token);
    }
    ws.send(start).await;
    // The spec's order: ack, history, presence state.
    let ack = ws.recv().await;
    assert_eq!(ack["type"], "session:ack", "{ack}");
    let history = ws.recv().await;
    assert_eq!(history["type"], "lobby:history", "{history}");
    let online = ws.recv().await;
    assert_eq!(online["type"], "presence:state", "{online}");
    Joined { ws, ack, history: history["messages"].clone(), online: online["online"].clone(), state: online }
}

fn ids(list: &Value) -> Vec<i64> {
    list.as_array().unwrap().iter().map(|u| u["user_id"].as_i64().unwrap()).collect()
}

/// Every presence:update within `wait`, merged: (joined ids, left ids).
async fn presence_within(ws: &mut WsClient, wait: Duration) -> (Vec<i64>, Vec<i64>, usize) {
    let until = tokio::time::Instant::now() + wait;
    let (mut joins, mut leaves, mut frames) = (Vec::new(), Vec::new(), 0);
    loop {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        match ws.next_event(left).await {
            Some(Event::Json(v)) if v["type"] == "presence:update" => {
                frames += 1;
                joins.extend(ids(&v["joins"]));
                leaves.extend(ids(&v["leaves"]));
            }
            Some(Event::Json(_)) => {}
            None => return (joins, leaves, frames),
            other => panic!("unexpected {other:?}"),
        }
    }
}

async fn lobby_app(db: Db, configure: impl FnOnce(&mut lorewire::core::config::Config)) -> TestApp {
    spawn_with(Setup::new(db), configure).await
}

async fn presence_state_then_updates(db: Db) {
    let app = lobby_app(db, |_| {}).await;
    let mut ada = join(&app, "Ada", None).await;
    assert_eq!(ada.history, json!([]));
    assert_eq!(
        ada.state,
        json!({"type": "presence:state", "online": [{"user_id": ada.user_id(), "nickname": "Ada"}], "online_count": 1, "complete": true})
    );
    // Ada's own join is broadcast too (to Ada as well, after her state); let it pass.
    let (joins, _, _) = presence_within(&mut ada.ws, Duration::from_millis(300)).await;
    assert_eq!(joins, vec![ada.user_id()]);

    let bo = join(&app, "Bo", None).await;
    // Everyone online now, Bo included, once each.
    let mut online = ids(&bo.online);
    online.sort();
    assert_eq!(online, vec![ada.user_id(), bo.user_id()]);

    assert_eq!((bo.state["online_count"].as_i64(), bo.state["complete"].as_bool()), (Some(2), Some(true)));

    let joined = ada.ws.recv_type("presence:update").await;
    assert_eq!(
        joined,
        json!({"type": "presence:update", "joins": [{"user_id": bo.user_id(), "nickname": "Bo"}], "leaves": [], "online_count": 2})
    );

    let bo_id = bo.user_id();
    bo.ws.close().await;
    let left = ada.ws.recv_type("presence:update").await;
    assert_eq!(
        left,
        json!({"type": "presence:update", "joins": [], "leaves": [{"user_id": bo_id}], "online_count": 1})
    );
}

async fn two_tabs_leave_when_the_last_closes(db: Db) {
    let app = lobby_app(db, |_| {}).await;
    let mut watcher = join(&app, "Watcher", None).await;
    presence_within(&mut watcher.ws, Duration::from_millis(300)).await;
    let tab1 = join(&app, "Ada", None).await;
    let ada = tab1.user_id();
    let tab2 = join(&app, "Ada", Some(&tab1.token())).await;
    assert_eq!(tab2.user_id(), ada);
    assert_eq!(ids(&tab2.online).iter().filter(|id| **id == ada).count(), 1, "{}", tab2.online);
    let (joins, leaves, _) = presence_within(&mut watcher.ws, Duration::from_millis(400)).await;
    assert_eq!(joins, vec![ada]);
    assert!(leaves.is_empty());

    tab1.ws.close().await;
    let (joins, leaves, _) = presence_within(&mut watcher.ws, Duration::from_millis(400)).await;
    assert!(joins.is_empty() && leaves.is_empty(), "one tab is still open: {joins:?} {leaves:?}");

    tab2.ws.close().await;
    let (joins, leaves, _) = presence_within(&mut watcher.ws, Duration::from_millis(400)).await;
    assert!(joins.is_empty());
    assert_eq!(leaves, vec![ada]);
}

async fn presence_is_gathered_and_cancels_within_the_window(db: Db) {
    // A wide window makes "within the window" certain on a busy machine.
    let app = lobby_app(db, |c| c.presence_window = Duration::from_millis(600)).await;
    let mut watcher = join(&app, "Watcher", None).await;
    let (_, _, _) = presence_within(&mut watcher.ws, Duration::from_millis(800)).await;

    // Two joins inside one window: one update with both. (A join is answered at the end of its
    // window, so the two go at once.)
    let (a, b) = futures_util::future::join(join(&app, "A", None), join(&app, "B", None)).await;
    let (mut joins, leaves, frames) = presence_within(&mut watcher.ws, Duration::from_millis(1000)).await;
    joins.sort();
    let mut both = vec![a.user_id(), b.user_id()];
    both.sort();
    assert_eq!(joins, both);
    assert!(leaves.is_empty());
    assert_eq!(frames, 1, "the joins were gathered into one presence:update");

    // A leaves and comes back inside the window: in neither list.
    let token = a.token();
    let a_id = a.user_id();
    a.ws.close().await;
    actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    let a_again = join(&app, "A", Some(&token)).await;
    assert!(ids(&a_again.online).contains(&a_id));
    let (joins, leaves, _) = presence_within(&mut watcher.ws, Duration::from_millis(1000)).await;
    assert!(!joins.contains(&a_id) && !leaves.contains(&a_id), "joins {joins:?} leaves {leaves:?}");

    // A session that joins while a change is being gathered still ends up right: B leaves,
    // C joins, B comes back inside the same window.
    let b_token = b.token();
    let b_id = b.user_id();
    b.ws.close().await;
    actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    let (mut c, b_again) = futures_util::future::join(join(&app, "C", None), join(&app, "B", Some(&b_token))).await;
    let mut online: std::collections::BTreeSet<i64> = ids(&c.online).into_iter().collect();
    let (joins, leaves, _) = presence_within(&mut c.ws, Duration::from_millis(1000)).await;
    online.extend(joins);
    for id in leaves {
        online.remove(&id);
    }
    assert!(online.contains(&b_id), "C must see B online: {online:?}");
    assert!(online.contains(&a_id) && online.contains(&c.user_id()));
    drop(b_again);
}

/// Pages through everyone online from `ws` with `presence:list`, checking each page: the ids in
/// order, and how many pages it took.
async fn page_through(ws: &mut WsClient, list_max: usize) -> (Vec<i64>, usize) {
    let (mut seen, mut after, mut pages) = (Vec::new(), 0, 0);
    loop {
        ws.send(json!({"type": "presence:list", "after_user_id": after, "ref": format!("p{pages}")})).await;
        let page = ws.recv_type("presence:page").await;
        assert_eq!(page["ref"], format!("p{pages}"), "{page}");
        pages += 1;
        let got = ids(&page["online"]);
        assert!(got.len() <= list_max, "{page}");
        assert!(page["online"].as_array().unwrap().iter().all(|u| u["nickname"].is_string()), "{page}");
        assert!(got.iter().all(|id| *id > after), "only ids after {after}: {page}");
        seen.extend(&got);
        match &page["next_after_user_id"] {
            Value::Null => return (seen, pages),
            next => {
                assert_eq!(next.as_i64(), got.last().copied(), "the last listed id: {page}");
                after = next.as_i64().unwrap();
            }
        }
        assert!(pages < 100, "paging never ended");
    }
}

async fn presence_state_is_capped_and_pages_through_everyone(db: Db) {
    let app = lobby_app(db, |c| c.presence_list_max = 3).await;
    let mut everyone = Vec::new();
    for i in 0..7 {
        let player = join(&app, &format!("P{i}"), None).await;
        everyone.push((player.user_id(), player));
    }
    // At the maximum the list is everyone; above it, the lowest ids and the whole count.
    assert_eq!(
        (everyone[2].1.state["online_count"].as_i64(), everyone[2].1.state["complete"].as_bool()),
        (Some(3), Some(true))
    );
    assert_eq!(ids(&everyone[2].1.online).len(), 3);
    let mut last = join(&app, "Last", None).await;
    let mut all: Vec<i64> = everyone.iter().map(|(id, _)| *id).chain([last.user_id()]).collect();
    all.sort_unstable();
    assert_eq!(last.state["online_count"], 8, "{}", last.state);
    assert_eq!(last.state["complete"], false);
    assert_eq!(ids(&last.online), all[..3], "the lowest user_ids first");

    let (seen, pages) = page_through(&mut last.ws, 3).await;
    assert_eq!(seen, all, "every user once, ascending, none missing");
    assert_eq!(pages, 3);
    // Going on from where presence:state stopped gives the rest.
    last.ws.send(json!({"type": "presence:list", "after_user_id": all[2], "ref": "rest"})).await;
    let rest = last.ws.recv_type("presence:page").await;
    assert_eq!(ids(&rest["online"]), all[3..6]);
    assert_eq!(rest["next_after_user_id"], all[5]);
    // Past everyone: an empty last page.
    last.ws.send(json!({"type": "presence:list", "after_user_id": all[7], "ref": "end"})).await;
    assert_eq!(
        last.ws.recv_type("presence:page").await,
        json!({"type": "presence:page", "ref": "end", "online": [], "next_after_user_id": null})
    );
    // A player who leaves is no longer listed.
    let (gone, player) = everyone.remove(0);
    player.ws.close().await;
    let until = tokio::time::Instant::now() + crate::common::WAIT;
    while page_through(&mut last.ws, 3).await.0.contains(&gone) {
        assert!(tokio::time::Instant::now() < until, "the leave never reached the pages");
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }

    for (bad, reference) in [
        (json!({"type": "presence:list", "ref": "missing"}), "missing"),
        (json!({"type": "presence:list", "after_user_id": -1, "ref": "negative"}), "negative"),
        (json!({"type": "presence:list", "after_user_id": "0", "ref": "string"}), "string"),
        (json!({"type": "presence:list", "after_user_id": 2.5, "ref": "fraction"}), "fraction"),
    ] {
        last.ws.send(bad).await;
        let err = last.ws.recv_type("error:invalid_payload").await;
        assert_eq!(err["ref"], reference, "{err}");
        assert!(err["message"].as_str().unwrap().contains("after_user_id"), "{err}");
    }
    // Before session:start it is unauthorized, like every other frame.
    let mut early = app.ws().await;
    early.lobby_frames = true;
    early.send(json!({"type": "presence:list", "after_user_id": 0, "ref": 1})).await;
    assert_eq!(
        early.recv().await,
        json!({"type": "error:unauthorized", "ref": 1, "message": "the first frame must be session:start"})
    );
}

/// Above the maximum, updates carry only the count and come at most once a second; back at it,
/// the lobby gets the whole list once and every change is listed again.
async fn count_only_above_the_cap_then_lists_again(db: Db) {
    let app = lobby_app(db, |c| c.presence_list_max = 3).await;
    let mut watcher = join(&app, "Watcher", None).await;
    assert_eq!(watcher.state["online_count"], 1);
    let own = watcher.ws.recv_type("presence:update").await;
    assert_eq!(own["online_count"], 1, "{own}");
    let mut below = Vec::new();
    for (name, count) in [("A", 2), ("B", 3)] {
        let player = join(&app, name, None).await;
        let update = watcher.ws.recv_type("presence:update").await;
        assert_eq!(
            update,
            json!({"type": "presence:update", "joins": [{"user_id": player.user_id(), "nickname": name}], "leaves": [], "online_count": count})
        );
        below.push(player);
    }

    // Twelve joins, one window after another, while the watcher reads what comes.
    const MORE: i64 = 12;
    let started = tokio::time::Instant::now();
    let joining = async {
        let mut players = Vec::new();
        for i in 0..MORE {
            players.push(join(&app, &format!("P{i}"), None).await);
        }
        players
    };
    let watching = async {
        let mut counts = Vec::new();
        let until = started + crate::common::WAIT;
        while counts.last() != Some(&(3 + MORE)) {
            match watcher.ws.next_event(until.saturating_duration_since(tokio::time::Instant::now())).await {
                Some(Event::Json(v)) if v["type"] == "presence:update" => {
                    assert_eq!((&v["joins"], &v["leaves"]), (&json!([]), &json!([])), "count only above the cap: {v}");
                    counts.push(v["online_count"].as_i64().unwrap());
                }
                Some(Event::Json(v)) => panic!("unexpected {v}"),
                other => panic!("the count never reached {}: {counts:?}, then {other:?}", 3 + MORE),
            }
        }
        counts
    };
    let (players, counts) = futures_util::future::join(joining, watching).await;
    let took = started.elapsed().as_secs_f64();
    assert!(counts.iter().all(|c| *c > 3) && counts.windows(2).all(|w| w[0] < w[1]), "{counts:?}");
    assert!(
        (counts.len() as f64) <= took.ceil() + 1.0,
        "at most one count a second: {} frames in {took:.1} s ({counts:?}) for {MORE} joins",
        counts.len()
    );
    // No change, no frame.
    let (joins, leaves, frames) = presence_within(&mut watcher.ws, Duration::from_millis(1500)).await;
    assert_eq!((joins.len(), leaves.len(), frames), (0, 0, 0));

    // Back down to the maximum: the whole list again, once, then every change listed.
    for player in players {
        player.ws.close().await;
    }
    let state = loop {
        let frame = watcher.ws.recv().await;
        match frame["type"].as_str() {
            Some("presence:update") => {
                assert_eq!((&frame["joins"], &frame["leaves"]), (&json!([]), &json!([])), "{frame}");
                assert!(frame["online_count"].as_i64().unwrap() > 3, "{frame}");
            }
            Some("presence:state") => break frame,
            _ => panic!("unexpected {frame}"),
        }
    };
    let mut expected = vec![watcher.user_id(), below[0].user_id(), below[1].user_id()];
    expected.sort_unstable();
    assert_eq!(ids(&state["online"]), expected, "{state}");
    assert_eq!((state["online_count"].as_i64(), state["complete"].as_bool()), (Some(3), Some(true)));
    let b = below.pop().unwrap();
    let b_id = b.user_id();
    b.ws.close().await;
    let update = watcher.ws.recv_type("presence:update").await;
    assert_eq!(
        update,
        json!({"type": "presence:update", "joins": [], "leaves": [{"user_id": b_id}], "online_count": 2})
    );
    let (_, _, frames) = presence_within(&mut watcher.ws, Duration::from_millis(500)).await;
    assert_eq!(frames, 0, "the full list went out once");
}

async fn chat_reaches_everyone_and_history_is_bounded(db: Db) {
    let app = lobby_app(db, |c| {
        c.lobby_recent = 3;
        c.chat_rate = "100/1s".parse().unwrap();
    })
    .await;
    let mut ada = join(&app, "Ada", None).await;
    let mut bo = join(&app, "Bo", None).await;
    let ada_id = ada.user_id();
    for i in 1..=5 {
        ada.ws.send(json!({"type": "message:send", "text": format!("  hello {i}\nsecond line "), "ref": i})).await;
        for ws in [&mut ada.ws, &mut bo.ws] {
            let new = ws.recv_type("message:new").await;
            let m = &new["message"];
            assert_eq!(m["text"], format!("hello {i}\nsecond line"));
            assert_eq!(m["user_id"], ada_id);
            assert_eq!(m["nickname"], "Ada");
            assert!(m["id"].as_i64().is_some());
            assert!(chrono::DateTime::parse_from_rfc3339(m["created_at"].as_str().unwrap()).is_ok());
            assert!(m["mood_status"] == "pending" || m["mood_status"] == "ready", "{m}");
        }
    }
    let late = join(&app, "Late", None).await;
    let texts: Vec<&str> = late.history.as_array().unwrap().iter().map(|m| m["text"].as_str().unwrap()).collect();
    assert_eq!(texts, vec!["hello 3\nsecond line", "hello 4\nsecond line", "hello 5\nsecond line"]);
    let ids: Vec<i64> = late.history.as_array().unwrap().iter().map(|m| m["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "oldest first: {ids:?}");
}

async fn bad_messages_are_refused_and_not_stored(db: Db) {
    let app = lobby_app(db, |_| {}).await;
    // Before session:start, message:send is unauthorized and stores nothing.
    let mut early = app.ws().await;
    early.lobby_frames = true;
    early.send(json!({"type": "message:send", "text": "sneaky", "ref": "e"})).await;
    let err = early.recv().await;
    assert_eq!(err["type"], "error:unauthorized");
    assert_eq!(err["ref"], "e");

    let mut ada = join(&app, "Ada", None).await;
    // Her own join comes right after her state.
    assert_eq!(ids(&ada.ws.recv_type("presence:update").await["joins"]), vec![ada.user_id()]);
    let long = "x".repeat(501);
    let cases = [
        json!({"type": "message:send", "text": "", "ref": "empty"}),
        json!({"type": "message:send", "text": "   \n ", "ref": "blank"}),
        json!({"type": "message:send", "text": long, "ref": "long"}),
        json!({"type": "message:send", "text": "ding\u{7}", "ref": "bell"}),
        json!({"type": "message:send", "text": "a\tb", "ref": "tab"}),
        json!({"type": "message:send", "text": 42, "ref": "number"}),
        json!({"type": "message:send", "ref": "missing"}),
    ];
    for case in cases {
        ada.ws.send(case.clone()).await;
        let err = ada.ws.recv().await;
        assert_eq!(err["type"], "error:invalid_payload", "{case}: {err}");
        assert_eq!(err["ref"], case["ref"]);
        assert!(!err["message"].as_str().unwrap().is_empty());
    }
    // Exactly 500 characters is fine.
    ada.ws.send(json!({"type": "message:send", "text": "é".repeat(500)})).await;
    let new = ada.ws.recv_type("message:new").await;
    assert_eq!(new["message"]["text"].as_str().unwrap().chars().count(), 500);
    let later = join(&app, "Later", None).await;
    assert_eq!(later.history.as_array().unwrap().len(), 1, "only the valid message was stored");
}

async fn rate_limit_is_per_user_across_tabs(db: Db) {
    let app = lobby_app(db, |c| c.chat_rate = "3/60s".parse().unwrap()).await;
    let mut tab1 = join(&app, "Ada", None).await;
    let mut tab2 = join(&app, "Ada", Some(&tab1.token())).await;
    let mut bo = join(&app, "Bo", None).await;
    for (i, text) in ["one", "two", "three"].into_iter().enumerate() {
        let ws = if i == 1 { &mut tab2.ws } else { &mut tab1.ws };
        ws.send(json!({"type": "message:send", "text": text})).await;
        assert_eq!(bo.ws.recv_type("message:new").await["message"]["text"], text);
    }
    // A flood from both tabs: every one refused, none stored or broadcast.
    for i in 0..10 {
        let ws = if i % 2 == 0 { &mut tab1.ws } else { &mut tab2.ws };
        ws.send(json!({"type": "message:send", "text": format!("flood {i}"), "ref": i})).await;
        let err = ws.recv_type("error:rate_limited").await;
        assert_eq!(err["ref"], i);
    }
    let until = tokio::time::Instant::now() + Duration::from_millis(500);
    while let Some(event) = bo.ws.next_event(until.saturating_duration_since(tokio::time::Instant::now())).await {
        if let Event::Json(v) = event {
            assert_ne!(v["type"], "message:new", "a refused message was broadcast: {v}");
        }
    }
    // Another user has a budget of their own.
    bo.ws.send(json!({"type": "message:send", "text": "mine"})).await;
    assert_eq!(bo.ws.recv_type("message:new").await["message"]["text"], "mine");
    let later = join(&app, "Later", None).await;
    let texts: Vec<&str> = later.history.as_array().unwrap().iter().map(|m| m["text"].as_str().unwrap()).collect();
    assert_eq!(texts, vec!["one", "two", "three", "mine"]);
    let metrics = metrics_text(&app).await;
    assert!(metrics.contains("lorewire_lobby_rate_limited_total 10"), "{metrics}");
}

async fn mood_is_classified_or_falls_back(db: Db) {
    let app = lobby_app(db, |c| c.chat_rate = "100/1s".parse().unwrap()).await;
    let mut ada = join(&app, "Ada", None).await;
    ada.ws.send(json!({"type": "message:send", "text": "What a wonderful day!"})).await;
    let new = ada.ws.recv_type("message:new").await;
    let id = new["message"]["id"].clone();
    let mood = ada.ws.recv_type("message:mood_updated").await;
    assert_eq!(mood, json!({"type": "message:mood_updated", "id": id, "mood": "happy", "mood_status": "ready"}));
    // The classification went through the provider with the mood schema and the text in its block.
    let request = app.fake.requests().into_iter().find(|r| r.raw_body.contains("chat_message")).expect("mood call");
    assert!(request.raw_body.contains("What a wonderful day!"));

    // Any upstream failure: neutral, fallback.
    app.fake.set_mode(Mode::Status(500));
    ada.ws.send(json!({"type": "message:send", "text": "hmm"})).await;
    let new = ada.ws.recv_type("message:new").await;
    let mood = ada.ws.recv_type("message:mood_updated").await;
    assert_eq!(mood["id"], new["message"]["id"]);
    assert_eq!(mood["mood"], "neutral");
    assert_eq!(mood["mood_status"], "fallback");

    app.fake.set_mode(Mode::NotJsonText);
    ada.ws.send(json!({"type": "message:send", "text": "again"})).await;
    let mood = ada.ws.recv_type("message:mood_updated").await;
    assert_eq!(mood["mood_status"], "fallback");

    let later = join(&app, "Later", None).await;
    let moods: Vec<(&str, &str)> = later
        .history
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["mood"].as_str().unwrap(), m["mood_status"].as_str().unwrap()))
        .collect();
    assert_eq!(moods, vec![("happy", "ready"), ("neutral", "fallback"), ("neutral", "fallback")]);
    let metrics = metrics_text(&app).await;
    assert!(metrics.contains("lorewire_moods_finished_total{status=\"ready\"} 1"), "{metrics}");
    assert!(metrics.contains("lorewire_lobby_messages_total 3"), "{metrics}");
}

/// Moods go through the same circuit breaker as content: failed classifications open it, and
/// while it is open a message gets its fallback mood without an upstream call. The request
/// carries the strict schema of the six moods.
async fn moods_share_the_circuit_and_send_the_mood_schema(db: Db) {
    let setup = Setup { provider: lorewire::llm::providers::Provider::OpenAi, ..Setup::new(db) };
    let app = spawn_with(setup, |c| {
        c.chat_rate = "100/1s".parse().unwrap();
        c.circuit_failures = 2;
    })
    .await;
    let mut ada = join(&app, "Ada", None).await;
    ada.ws.send(json!({"type": "message:send", "text": "so calm here"})).await;
    assert_eq!(ada.ws.recv_type("message:mood_updated").await["mood_status"], "ready");
    let request = app.fake.requests().pop().expect("the mood call");
    let format = &request.body["text"]["format"];
    assert_eq!(format["type"], "json_schema");
    assert_eq!(format["strict"], true);
    let mut moods: Vec<&str> = format["schema"]["properties"]["mood"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    moods.sort_unstable();
    assert_eq!(moods, ["angry", "calm", "excited", "happy", "neutral", "sad"]);

    app.fake.set_mode(Mode::Status(503));
    for text in ["one", "two"] {
        ada.ws.send(json!({"type": "message:send", "text": text})).await;
        assert_eq!(ada.ws.recv_type("message:mood_updated").await["mood_status"], "fallback");
    }
    assert_eq!(app.circuit().await["state"], "open");
    let calls = app.fake.request_count();
    app.fake.set_mode(Mode::Ok);
    ada.ws.send(json!({"type": "message:send", "text": "three"})).await;
    let mood = ada.ws.recv_type("message:mood_updated").await;
    assert_eq!((mood["mood"].as_str(), mood["mood_status"].as_str()), (Some("neutral"), Some("fallback")));
    assert_eq!(app.fake.request_count(), calls, "no upstream call while the circuit is open");
}

async fn pending_mood_is_settled_after_a_restart(db: Db) {
    let mut app = lobby_app(db, |c| c.shutdown = Duration::from_secs(1)).await;
    app.fake.set_mode(Mode::Hang);
    let mut ada = join(&app, "Ada", None).await;
    ada.ws.send(json!({"type": "message:send", "text": "are you there?"})).await;
    let new = ada.ws.recv_type("message:new").await;
    assert_eq!(new["message"]["mood_status"], "pending");
    // Wait until the job is in flight upstream, then stop with it unfinished.
    crate::common::eventually("the mood call", || {
        let fake = app.fake.clone();
        async move { (fake.request_count() > 0).then_some(()) }
    })
    .await;
    app.stop().await;

    app.fake.set_mode(Mode::Ok);
    app.restart(Arc::new(lorewire::core::clock::SystemClock)).await;
    let settled = crate::common::eventually("the mood to settle after the restart", || {
        let app = &app;
        async move {
            let joined = join(app, "Check", None).await;
            let m = joined.history[0].clone();
            (m["mood_status"] != "pending").then_some(m)
        }
    })
    .await;
    assert_eq!(settled["mood"], "happy");
    assert_eq!(settled["mood_status"], "ready");
}

pub async fn metrics_text(app: &TestApp) -> String {
    let body = crate::common::http().get(app.url("/metrics")).send().await.unwrap().body().await.unwrap();
    String::from_utf8_lossy(&body).into_owned()
}

/// Above the maximum, a player who joins while a count frame is due gets the new count in their
/// state; if the count is back to the one the lobby was last told before the frame goes out,
/// the frame still goes out, so the joiner's count follows.
async fn a_joiner_is_told_the_count_that_follows(db: Db) {
    let app = lobby_app(db, |c| c.presence_list_max = 2).await;
    let mut watcher = join(&app, "Watcher", None).await;
    let mut others = Vec::new();
    for name in ["A", "B", "C"] {
        others.push(join(&app, name, None).await);
    }
    // The lobby is told 4 (a count frame: above the maximum).
    loop {
        let update = watcher.ws.recv_type("presence:update").await;
        if update["online_count"] == 4 {
            break;
        }
    }
    // Within the second after that frame: one joins (their state says 5), one leaves (back to 4).
    let mut late = join(&app, "Late", None).await;
    assert_eq!(late.state["online_count"], 5, "{}", late.state);
    others.pop().unwrap().ws.close().await;
    let update = loop {
        let update = late.ws.recv_type("presence:update").await;
        if update["online_count"] != 5 {
            break update;
        }
    };
    assert_eq!(update["online_count"], 4, "{update}");
}

/// A message sent right after `session:ack` can land in the history the join reads. The sender
/// still gets its `message:new` (the answer to its send), while a message of someone else that
/// the history holds is still not sent twice. The join is held between its subscription and its
/// history read, so both messages land in that window every time.
async fn a_sender_joining_gets_its_own_message_new(db: Db) {
    sender_gets_its_own_message_new(db, |holds| holds.lobby_recent = Duration::from_millis(300)).await;
}

/// The same, with the join held before it reaches the presence actor (which subscribes the
/// session to the lobby's frames): both messages are published before the session listens,
/// so the sender's `message:new` comes from its send's own answer.
async fn a_sender_whose_message_beats_the_join_gets_its_message_new(db: Db) {
    sender_gets_its_own_message_new(db, |holds| holds.lobby_join = Duration::from_millis(300)).await;
}

async fn sender_gets_its_own_message_new(db: Db, hold: impl FnOnce(&mut lorewire::core::config::TestHolds)) {
    let app = lobby_app(db, |c| {
        hold(&mut c.test_holds);
        c.chat_rate = "100/1s".parse().unwrap();
    })
    .await;
    let mut bo = join(&app, "Bo", None).await;
    for round in 0..3 {
        let mut ada = app.ws().await;
        ada.lobby_frames = true;
        ada.send(json!({"type": "session:start", "nickname": "Ada"})).await;
        assert_eq!(ada.recv().await["type"], "session:ack");
        let (mine, theirs) = (format!("mine {round}"), format!("theirs {round}"));
        ada.send(json!({"type": "message:send", "text": mine, "ref": round})).await;
        bo.ws.send(json!({"type": "message:send", "text": theirs})).await;
        let history = ada.recv().await;
        assert_eq!(history["type"], "lobby:history", "{history}");
        let in_history: Vec<&str> =
            history["messages"].as_array().unwrap().iter().map(|m| m["text"].as_str().unwrap()).collect();
        assert!(in_history.contains(&mine.as_str()), "the send landed before the history read: {history}");
        assert!(in_history.contains(&theirs.as_str()), "{history}");
        let mut news = Vec::new();
        while let Some(Event::Json(frame)) = ada.next_event(Duration::from_millis(800)).await {
            if frame["type"] == "message:new" {
                news.push(frame["message"]["text"].as_str().unwrap().to_owned());
            }
        }
        assert_eq!(news, vec![mine.clone()], "round {round}: its own message:new, and only that one");
        for _ in 0..2 {
            bo.ws.recv_type("message:new").await;
        }
        ada.close().await;
    }
}

/// A sender's `message:new` comes before its mood even when the message reached the hub before
/// the join's subscription (sent from the send's answer) and its mood after it (held by the
/// join): the join's subscription waits 100 ms and its read of the recent messages 500 ms
/// more, and the mood's call takes 250 ms.
async fn a_senders_message_new_comes_before_its_mood(db: Db) {
    let app = lobby_app(db, |c| {
        c.test_holds.lobby_join = Duration::from_millis(100);
        c.test_holds.lobby_recent = Duration::from_millis(500);
        c.chat_rate = "100/1s".parse().unwrap();
    })
    .await;
    app.fake.set_mode(Mode::Delay(Duration::from_millis(250)));
    for round in 0..3 {
        let mut ada = app.ws().await;
        ada.lobby_frames = true;
        ada.send(json!({"type": "session:start", "nickname": "Ada"})).await;
        assert_eq!(ada.recv().await["type"], "session:ack");
        let mine = format!("mine {round}");
        ada.send(json!({"type": "message:send", "text": mine})).await;
        let mut order = Vec::new();
        while let Some(Event::Json(frame)) = ada.next_event(Duration::from_millis(1200)).await {
            let text = frame["message"]["text"].as_str().or(frame["text"].as_str());
            match frame["type"].as_str() {
                Some("message:new") if text == Some(mine.as_str()) => order.push("new"),
                Some("message:mood_updated") if order.len() < 2 => order.push("mood"),
                _ => {}
            }
        }
        assert_eq!(order, ["new", "mood"], "round {round}");
        ada.close().await;
    }
}

both_backends!(
    a_senders_message_new_comes_before_its_mood,
    a_sender_joining_gets_its_own_message_new,
    a_sender_whose_message_beats_the_join_gets_its_message_new,
    a_joiner_is_told_the_count_that_follows,
    presence_state_then_updates,
    two_tabs_leave_when_the_last_closes,
    presence_is_gathered_and_cancels_within_the_window,
    presence_state_is_capped_and_pages_through_everyone,
    count_only_above_the_cap_then_lists_again,
    chat_reaches_everyone_and_history_is_bounded,
    bad_messages_are_refused_and_not_stored,
    rate_limit_is_per_user_across_tabs,
    mood_is_classified_or_falls_back,
    moods_share_the_circuit_and_send_the_mood_schema,
    pending_mood_is_settled_after_a_restart,
);

/// Two processes on one PostgreSQL database: a message and its mood sent on one reach a
/// session on the other (LISTEN/NOTIFY).
#[actix_web::test]
async fn postgres_messages_and_moods_cross_processes() {
    let app = lobby_app(Db::Postgres, |_| {}).await;
    let mut config = app.config.clone();
    config.bind = "127.0.0.1:0".parse().unwrap();
    let other =
        lorewire::app::start(config, Arc::new(lorewire::core::clock::SystemClock)).await.expect("second process");
    let mut ada = join(&app, "Ada", None).await;
    let mut bo = {
        let mut ws = WsClient::connect(&format!("http://{}/ws", other.addr)).await;
        ws.lobby_frames = true;
        ws.send(json!({"type": "session:start", "nickname": "Bo"})).await;
        ws.recv_type("presence:state").await;
        ws
    };
    // The listener connects on its own thread; retry until a message makes it across.
    let mut crossed = None;
    for attempt in 0..20 {
        ada.ws.send(json!({"type": "message:send", "text": format!("across {attempt}")})).await;
        let sent = ada.ws.recv_type("message:new").await;
        let until = tokio::time::Instant::now() + Duration::from_millis(300);
        while let Some(Event::Json(v)) =
            bo.next_event(until.saturating_duration_since(tokio::time::Instant::now())).await
        {
            if v["type"] == "message:new" && v["message"]["id"] == sent["message"]["id"] {
                crossed = Some(v);
                break;
            }
        }
        if crossed.is_some() {
            break;
        }
    }
    let crossed = crossed.expect("a message sent on one process reached the other");
    let mood = loop {
        let mood = bo.recv_type("message:mood_updated").await;
        if mood["id"] == crossed["message"]["id"] {
            break mood;
        }
    };
    assert_eq!(mood["mood_status"], "ready");
    other.shutdown().await;
}

/// Who a session believes is online, from its presence:state and updates, until `done` holds.
async fn presence_until(
    ws: &mut WsClient,
    online: &mut std::collections::BTreeSet<i64>,
    done: impl Fn(&std::collections::BTreeSet<i64>) -> bool,
) {
    let until = tokio::time::Instant::now() + crate::common::WAIT;
    while !done(online) {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        match ws.next_event(left).await {
            Some(Event::Json(v)) if v["type"] == "presence:state" => *online = ids(&v["online"]).into_iter().collect(),
            Some(Event::Json(v)) if v["type"] == "presence:update" => {
                online.extend(ids(&v["joins"]));
                for id in ids(&v["leaves"]) {
                    online.remove(&id);
                }
            }
            Some(Event::Json(_)) => {}
            other => panic!("presence never got there ({online:?}); got {other:?}"),
        }
    }
}

/// Three processes on one PostgreSQL database see one lobby: players on every process are
/// listed, a process that starts later learns who is online, and leaves cross over too.
#[actix_web::test]
async fn postgres_presence_crosses_processes() {
    let app = lobby_app(Db::Postgres, |_| {}).await;
    let start_other = || {
        let mut config = app.config.clone();
        config.bind = "127.0.0.1:0".parse().unwrap();
        lorewire::app::start(config, Arc::new(lorewire::core::clock::SystemClock))
    };
    let second = start_other().await.expect("second process");
    let ws_on = |addr: std::net::SocketAddr, nickname: &'static str| async move {
        let mut ws = WsClient::connect(&format!("http://{addr}/ws")).await;
        ws.lobby_frames = true;
        ws.send(json!({"type": "session:start", "nickname": nickname})).await;
        let ack = ws.recv_type("session:ack").await;
        (ws, ack["user_id"].as_i64().unwrap())
    };
    let (mut ada, ada_id) = ws_on(app.addr, "Ada").await;
    let (mut bo, bo_id) = ws_on(second.addr, "Bo").await;
    let mut ada_sees = Default::default();
    presence_until(&mut ada, &mut ada_sees, |s| s.contains(&bo_id) && s.contains(&ada_id)).await;
    let mut bo_sees = Default::default();
    presence_until(&mut bo, &mut bo_sees, |s| s.contains(&ada_id) && s.contains(&bo_id)).await;

    // A process started now learns who is online elsewhere.
    let third = start_other().await.expect("third process");
    let (mut cy, cy_id) = ws_on(third.addr, "Cy").await;
    let mut cy_sees = Default::default();
    presence_until(&mut cy, &mut cy_sees, |s| s.contains(&ada_id) && s.contains(&bo_id) && s.contains(&cy_id)).await;
    let (status, summary) = app.admin_get("/admin/api/metrics/summary").await;
    assert_eq!(status, 200);
    assert!(summary["online"].as_i64().unwrap() >= 2, "{summary}");

    // Bo leaves on the second process: the others see it.
    bo.close().await;
    presence_until(&mut ada, &mut ada_sees, |s| !s.contains(&bo_id)).await;
    presence_until(&mut cy, &mut cy_sees, |s| !s.contains(&bo_id)).await;
    third.shutdown().await;
    second.shutdown().await;
}

/// Two processes on one PostgreSQL database with a list maximum of 3: on either process a
/// newcomer gets the cluster's count and pages through the players of both.
#[actix_web::test]
async fn postgres_presence_count_and_pages_are_the_clusters() {
    let app = lobby_app(Db::Postgres, |c| c.presence_list_max = 3).await;
    let mut config = app.config.clone();
    config.bind = "127.0.0.1:0".parse().unwrap();
    let second =
        lorewire::app::start(config, Arc::new(lorewire::core::clock::SystemClock)).await.expect("second process");
    let enter = |addr: std::net::SocketAddr, nickname: &'static str| async move {
        let mut ws = WsClient::connect(&format!("http://{addr}/ws")).await;
        ws.lobby_frames = true;
        ws.send(json!({"type": "session:start", "nickname": nickname})).await;
        let id = ws.recv_type("session:ack").await["user_id"].as_i64().unwrap();
        let state = ws.recv_type("presence:state").await;
        (ws, id, state)
    };
    let (mut everyone, mut open) = (Vec::new(), Vec::new());
    for (addr, nickname) in
        [(app.addr, "Ada"), (app.addr, "Bo"), (second.addr, "Cy"), (second.addr, "Di"), (second.addr, "Ed")]
    {
        let (ws, id, _) = enter(addr, nickname).await;
        everyone.push(id);
        open.push(ws);
    }
    for (addr, nickname) in [(app.addr, "First"), (second.addr, "Second")] {
        // The other process's players arrive over LISTEN/NOTIFY: come in until they are counted.
        let until = tokio::time::Instant::now() + crate::common::WAIT;
        let (mut ws, id, state) = loop {
            let (ws, id, state) = enter(addr, nickname).await;
            if state["online_count"].as_u64() == Some(everyone.len() as u64 + 1) {
                break (ws, id, state);
            }
            assert!(tokio::time::Instant::now() < until, "the cluster was never counted: {state}");
            ws.close().await;
            actix_web::rt::time::sleep(Duration::from_millis(100)).await;
        };
        everyone.push(id);
        let mut all = everyone.clone();
        all.sort_unstable();
        assert_eq!(state["complete"], false, "{state}");
        assert_eq!(ids(&state["online"]), all[..3], "{state}");
        let (seen, _) = page_through(&mut ws, 3).await;
        assert_eq!(seen, all, "the pages on {nickname} list the players of both processes");
        open.push(ws);
    }
    second.shutdown().await;
}
