//! Redis as the backplane (`LOREWIRE_REDIS_URL`): several processes on one PostgreSQL database
//! hear each other through Redis pub/sub, not `LISTEN/NOTIFY`; SQLite with Redis refuses to
//! start; Redis going away never stops local play, shows in `/metrics` and the admin summary,
//! and the processes hear each other again once it is back. Each test has a key prefix of its
//! own on the machine's Redis, or a private `redis-server` it starts and kills.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lorewire::app::Running;
use lorewire::core::clock::SystemClock;
use serde_json::{json, Value};

use crate::common::{
    eventually, get_json, http, redis_prefix, redis_url, spawn_with, Db, Setup, TestApp, WsClient, ADMIN_TOKEN,
};

fn with_redis(url: &str, prefix: &str) -> impl FnOnce(&mut lorewire::core::config::Config) {
    let (url, prefix) = (url.to_owned(), prefix.to_owned());
    move |c| {
        c.redis_url = Some(url);
        c.redis_prefix = prefix;
    }
}

/// A second process on the same database and settings.
async fn second_process(app: &TestApp) -> Running {
    let mut config = app.config.clone();
    config.bind = "127.0.0.1:0".parse().unwrap();
    lorewire::app::start(config, Arc::new(SystemClock)).await.expect("second process starts")
}

async fn metrics(base: &str) -> String {
    let body = http().get(format!("{base}/metrics")).send().await.unwrap().body().await.unwrap();
    String::from_utf8(body.to_vec()).unwrap()
}

async fn backplane_up(base: &str) -> Option<bool> {
    let text = metrics(base).await;
    let value = text.lines().find_map(|l| l.strip_prefix("lorewire_backplane_up "))?;
    Some(value.trim() == "1")
}

pub(crate) async fn wait_backplane(base: &str, up: bool) {
    let base = base.to_owned();
    eventually(&format!("lorewire_backplane_up to be {}", u8::from(up)), || {
        let base = base.clone();
        async move { (backplane_up(&base).await == Some(up)).then_some(()) }
    })
    .await;
}

/// A joined lobby player who sees lobby frames.
async fn lobby_player(base: &str, nickname: &str) -> (WsClient, Value) {
    let mut ws = WsClient::connect(&format!("{base}/ws")).await;
    ws.lobby_frames = true;
    ws.send(json!({"type": "session:start", "nickname": nickname})).await;
    let ack = ws.recv_type("session:ack").await;
    ws.recv_type("presence:state").await;
    (ws, ack)
}

/// Skips frames until one that `pick` accepts.
async fn recv_where(ws: &mut WsClient, what: &str, pick: impl Fn(&Value) -> bool) -> Value {
    let until = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = until.saturating_duration_since(std::time::Instant::now());
        match ws.next_event(left).await {
            Some(crate::common::Event::Json(frame)) if pick(&frame) => return frame,
            Some(crate::common::Event::Json(_)) => continue,
            other => panic!("expected {what}, got {other:?}"),
        }
    }
}

#[actix_web::test]
async fn content_changes_reach_every_process_over_redis() {
    crate::cluster::content_changes_reach_subscribers_on_every_process_over(Some((redis_url(), redis_prefix()))).await;
}

#[actix_web::test]
async fn run_deltas_reach_a_client_on_another_process_over_redis() {
    crate::runs::run_streamed_by_another_process_reaches_the_client_live(Some((redis_url(), redis_prefix()))).await;
}

#[actix_web::test]
async fn abort_on_one_process_stops_the_stream_on_another_over_redis() {
    let (url, prefix) = (redis_url(), redis_prefix());
    let env = [("LOREWIRE_REDIS_URL", url.as_str()), ("LOREWIRE_REDIS_PREFIX", prefix.as_str())];
    crate::runs_process::abort_on_one_process_stops_the_stream_on_another_with(&env).await;
}

/// Three processes: a message on one reaches the other two with its mood, presence is the
/// cluster's on each.
#[actix_web::test]
async fn chat_moods_and_presence_cross_processes_over_redis() {
    let prefix = redis_prefix();
    let app = spawn_with(Setup::new(Db::Postgres), with_redis(&redis_url(), &prefix)).await;
    let other = second_process(&app).await;
    let third = second_process(&app).await;
    let (a, b, c) = (app.url(""), format!("http://{}", other.addr), format!("http://{}", third.addr));
    for base in [&a, &b, &c] {
        wait_backplane(base, true).await;
    }

    let (mut cy, _) = lobby_player(&c, "Cy").await;
    let (mut bo, _) = lobby_player(&b, "Bo").await;
    let (mut ada, ada_ack) = lobby_player(&a, "Ada").await;
    let ada_id = ada_ack["user_id"].clone();
    let joined = recv_where(&mut bo, "Ada's join", |f| {
        f["type"] == "presence:update"
            && f["joins"].as_array().is_some_and(|j| j.iter().any(|u| u["user_id"] == ada_id))
    })
    .await;
    assert!(joined.to_string().contains("Ada"), "{joined}");

    ada.send(json!({"type": "message:send", "text": "over the river"})).await;
    let new = recv_where(&mut bo, "Ada's message", |f| f["type"] == "message:new").await;
    assert_eq!(new["message"]["text"], "over the river");
    assert_eq!(new["message"]["user_id"], ada_id);
    let id = new["message"]["id"].clone();
    let mood = recv_where(&mut bo, "the message's mood", |f| f["type"] == "message:mood_updated").await;
    assert_eq!(mood["id"], id);
    assert_eq!(mood["mood_status"], "ready", "{mood}");
    let on_c = recv_where(&mut cy, "Ada's message on the third process", |f| f["type"] == "message:new").await;
    assert_eq!(on_c["message"]["id"], id);
    recv_where(&mut cy, "the mood on the third process", |f| f["type"] == "message:mood_updated" && f["id"] == id)
        .await;
    // Each process counts the cluster: Ada, Bo and Cy.
    let (mut late, _) = lobby_player(&c, "Late").await;
    late.send(json!({"type": "presence:list", "after_user_id": 0, "ref": 1})).await;
    let page = recv_where(&mut late, "the page", |f| f["type"] == "presence:page").await;
    let names: Vec<&str> = page["online"].as_array().unwrap().iter().map(|u| u["nickname"].as_str().unwrap()).collect();
    for name in ["Ada", "Bo", "Cy", "Late"] {
        assert!(names.contains(&name), "{name} missing from {page}");
    }

    ada.close().await;
    recv_where(&mut bo, "Ada's leave", |f| {
        f["type"] == "presence:update"
            && f["leaves"].as_array().is_some_and(|l| l.iter().any(|u| u["user_id"] == ada_id))
    })
    .await;
    other.shutdown().await;
    third.shutdown().await;
}

/// The events go through Redis: a subscriber on the channel hears them, and PostgreSQL's
/// notification channel stays silent.
#[actix_web::test]
async fn events_travel_on_redis_and_not_on_notify() {
    use diesel::connection::SimpleConnection;
    use diesel::Connection;

    let prefix = redis_prefix();
    let app = spawn_with(Setup::new(Db::Postgres), with_redis(&redis_url(), &prefix)).await;
    let mut pg = diesel::PgConnection::establish(&app.db.url).unwrap();
    pg.batch_execute(&format!("LISTEN {}", lorewire::store::notify::CHANNEL)).unwrap();
    let client = redis::Client::open(redis_url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe(format!("{prefix}events")).await.unwrap();
    let mut heard = pubsub.into_on_message();

    let (mut ada, _) = lobby_player(&app.url(""), "Ada").await;
    ada.send(json!({"type": "message:send", "text": "a bell rings"})).await;
    recv_where(&mut ada, "the message", |f| f["type"] == "message:new").await;
    let token = app.player_token().await;
    assert_eq!(app.content_final(&token, "quest", 1, json!({})).await["status"], "ready");

    let mut kinds = Vec::new();
    while !(kinds.contains(&"message".to_owned()) && kinds.contains(&"content".to_owned())) {
        let message = tokio::time::timeout(Duration::from_secs(10), heard.next())
            .await
            .unwrap_or_else(|_| panic!("Redis carried only {kinds:?}"))
            .expect("the subscription stays open");
        let event: Value = serde_json::from_slice(message.get_payload_bytes()).unwrap();
        kinds.push(event["t"].as_str().unwrap().to_owned());
    }
    let notifications: Vec<_> = pg.notifications_iter().collect::<Result<_, _>>().unwrap();
    assert!(notifications.is_empty(), "PostgreSQL notified: {notifications:?}");
}

/// Two tabs of one player on two processes share one chat rate (2 per 10 s here); without Redis
/// each process counts alone.
#[actix_web::test]
async fn the_chat_rate_is_shared_by_every_process() {
    for redis in [true, false] {
        let prefix = redis_prefix();
        let configure = with_redis(&redis_url(), &prefix);
        let app = spawn_with(Setup::new(Db::Postgres), |c| {
            if redis {
                configure(c);
            }
            c.chat_rate = lorewire::core::rate_limit::Rate { count: 2, per: Duration::from_secs(10) };
        })
        .await;
        let other = second_process(&app).await;
        let (a, b) = (app.url(""), format!("http://{}", other.addr));
        wait_backplane(&a, true).await;
        wait_backplane(&b, true).await;
        let (mut tab1, ack) = lobby_player(&a, "Ada").await;
        let mut tab2 = WsClient::connect(&format!("{b}/ws")).await;
        tab2.lobby_frames = true;
        tab2.send(json!({"type": "session:start", "nickname": "Ada", "token": ack["token"]})).await;
        tab2.recv_type("presence:state").await;
        for n in 1..=2 {
            tab1.send(json!({"type": "message:send", "text": format!("tab one {n}")})).await;
            recv_where(&mut tab1, "the message", |f| f["type"] == "message:new").await;
        }
        tab2.send(json!({"type": "message:send", "text": "tab two", "ref": 9})).await;
        let answer = recv_where(&mut tab2, "the answer", |f| {
            f["type"].as_str().is_some_and(|t| t.starts_with("error:"))
                || (f["type"] == "message:new" && f["message"]["text"] == "tab two")
        })
        .await;
        if redis {
            assert_eq!(answer["type"], "error:rate_limited", "{answer}");
            assert_eq!(answer["ref"], 9);
        } else {
            assert_eq!(answer["type"], "message:new", "without Redis each process counts alone: {answer}");
        }
        other.shutdown().await;
    }
}

/// A player's start rate is one window for every process (2 per minute here), and a request
/// served as it is gives its counted start back on whichever process it came to.
#[actix_web::test]
async fn the_start_rate_is_shared_by_every_process_and_cached_answers_are_free() {
    let prefix = redis_prefix();
    let configure = with_redis(&redis_url(), &prefix);
    let app = spawn_with(Setup::new(Db::Postgres), |c| {
        configure(c);
        c.usage.player_llm_rate = "2/1m".parse().unwrap();
    })
    .await;
    let other = second_process(&app).await;
    let (a, b) = (app.url(""), format!("http://{}", other.addr));
    wait_backplane(&a, true).await;
    wait_backplane(&b, true).await;
    let token = app.player_token().await;
    let ask = |base: &str, subject_id: u64| {
        let (url, token) = (format!("{base}/api/content"), token.clone());
        async move { crate::common::post_json(&url, &token, &json!({"kind": "npc", "subject_id": subject_id})).await.0 }
    };
    assert_eq!(ask(&a, 1).await, 202, "the first start");
    for base in [&a, &b, &a, &b] {
        assert_eq!(ask(base, 1).await, 202, "the item as it is, given back");
    }
    assert_eq!(ask(&b, 2).await, 202, "the second start");
    assert_eq!(ask(&a, 3).await, 429, "a third start on either process");
    assert_eq!(ask(&b, 4).await, 429);
    assert_eq!(ask(&b, 1).await, 202, "the item as it is, still free");
    other.shutdown().await;
}

/// New anonymous players from one address are counted over every process (2 per hour here).
#[actix_web::test]
async fn the_new_players_rate_is_shared_by_every_process() {
    let prefix = redis_prefix();
    let configure = with_redis(&redis_url(), &prefix);
    let app = spawn_with(Setup::new(Db::Postgres), |c| {
        configure(c);
        c.identity.new_players_rate = lorewire::core::rate_limit::Rate { count: 2, per: Duration::from_secs(3600) };
    })
    .await;
    let other = second_process(&app).await;
    let (a, b) = (app.url(""), format!("http://{}", other.addr));
    wait_backplane(&a, true).await;
    wait_backplane(&b, true).await;
    for (base, nickname, want) in [
        (&a, "One", "session:ack"),
        (&b, "Two", "session:ack"),
        (&a, "Three", "error:rate_limited"),
        (&b, "Four", "error:rate_limited"),
    ] {
        let mut ws = WsClient::connect(&format!("{base}/ws")).await;
        ws.send(json!({"type": "session:start", "nickname": nickname})).await;
        let answer = ws.recv().await;
        assert_eq!(answer["type"], want, "{nickname}: {answer}");
    }
    other.shutdown().await;
}

#[actix_web::test]
async fn sqlite_with_redis_refuses_to_start() {
    let db = crate::process::test_db(Db::Sqlite).await;
    let mut config = lorewire::core::config::Config::with_database(&db.url);
    config.bind = "127.0.0.1:0".parse().unwrap();
    with_redis(&redis_url(), &redis_prefix())(&mut config);
    let refused = lorewire::app::start(config, Arc::new(SystemClock)).await.err().expect("the start is refused");
    let message = refused.to_string();
    assert!(message.contains("LOREWIRE_REDIS_URL") && message.contains("SQLite"), "{message}");
}

/// A `redis-server` of this test's own, on a free port, keeping nothing on disk.
pub(crate) struct PrivateRedis {
    port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    pub(crate) fn start() -> PrivateRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut redis = PrivateRedis { port, child: None };
        redis.restart();
        redis
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub(crate) fn restart(&mut self) {
        let dir = std::env::temp_dir();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts (apt-get install redis-server)");
        self.child = Some(child);
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(std::time::Instant::now() < until, "redis-server did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

#[actix_web::test]
async fn redis_going_away_never_stops_local_play() {
    let mut redis = PrivateRedis::start();
    let configure = with_redis(&redis.url(), "lw:");
    let app = spawn_with(Setup::new(Db::Postgres), |c| {
        configure(c);
        c.chat_rate = lorewire::core::rate_limit::Rate { count: 100, per: Duration::from_secs(10) };
    })
    .await;
    let other = second_process(&app).await;
    let (a, b) = (app.url(""), format!("http://{}", other.addr));
    wait_backplane(&a, true).await;
    wait_backplane(&b, true).await;
    let (mut ada, _) = lobby_player(&a, "Ada").await;

    redis.kill();
    wait_backplane(&a, false).await;
    wait_backplane(&b, false).await;
    // Readiness is the database's; the admin summary says the backplane is down.
    assert_eq!(get_json(&format!("{a}/ready"), None).await.0, 200);
    let (_, summary) = get_json(&format!("{a}/admin/api/metrics/summary"), Some(ADMIN_TOKEN)).await;
    assert_eq!(summary["backplane"], json!({"kind": "redis", "up": false}), "{summary}");

    // Local play goes on: chat and content on one process.
    ada.send(json!({"type": "message:send", "text": "still here"})).await;
    let new = recv_where(&mut ada, "the message", |f| f["type"] == "message:new").await;
    assert_eq!(new["message"]["text"], "still here");
    let token = app.player_token().await;
    assert_eq!(app.content_final(&token, "npc", 1, json!({})).await["status"], "ready");

    // Redis is back: each process reconnects on its own and they hear each other again; the
    // sessions get the whole list again.
    redis.restart();
    wait_backplane(&a, true).await;
    wait_backplane(&b, true).await;
    let fresh = recv_where(&mut ada, "a fresh presence:state", |f| f["type"] == "presence:state").await;
    assert_eq!(fresh["online_count"], 1, "{fresh}");
    let (_, summary) = get_json(&format!("{a}/admin/api/metrics/summary"), Some(ADMIN_TOKEN)).await;
    assert_eq!(summary["backplane"]["up"], true, "{summary}");
    // B dropped A's players while it could not hear A; A announced them again.
    let ada_id = new["message"]["user_id"].clone();
    let bo = eventually("B to list Ada again", || {
        let b = b.clone();
        let ada_id = ada_id.clone();
        async move {
            let mut ws = WsClient::connect(&format!("{b}/ws")).await;
            ws.lobby_frames = true;
            ws.send(json!({"type": "session:start", "nickname": "Bo"})).await;
            let state = ws.recv_type("presence:state").await;
            let listed = state["online"].as_array().unwrap().iter().any(|u| u["user_id"] == ada_id);
            listed.then_some(ws)
        }
    })
    .await;
    let mut bo = bo;
    // What is published while the publisher's own connection comes back may be lost (Redis
    // holds nothing); a message sent once both are back arrives.
    let mut n = 0;
    let heard = loop {
        n += 1;
        let text = format!("hello again {n}");
        ada.send(json!({"type": "message:send", "text": text})).await;
        match tokio::time::timeout(Duration::from_secs(2), async {
            recv_where(&mut bo, "a message from the other process", |f| f["type"] == "message:new").await
        })
        .await
        {
            Ok(frame) => break frame,
            Err(_) => assert!(n < 4, "no message crossed after Redis came back"),
        }
    };
    assert!(heard["message"]["text"].as_str().unwrap().starts_with("hello again"), "{heard}");
    other.shutdown().await;
}

/// A process killed with -9 has its players leave everyone else's presence within 5 s.
#[actix_web::test]
async fn players_of_a_killed_process_leave_within_five_seconds() {
    let fake = crate::common::FakeLlm::start();
    let db = crate::process::test_db(Db::Postgres).await;
    let prefix = redis_prefix();
    let env = [("LOREWIRE_REDIS_URL", redis_url()), ("LOREWIRE_REDIS_PREFIX", prefix)];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let a = crate::process::Server::start_with(&db.url, &fake, &env).await;
    let mut b = crate::process::Server::start_with(&db.url, &fake, &env).await;
    let (base_a, base_b) = (a.url(""), b.url(""));
    wait_backplane(&base_a, true).await;
    wait_backplane(&base_b, true).await;
    let (mut ada, _) = lobby_player(&base_a, "Ada").await;
    let (_bo, bo_ack) = lobby_player(&base_b, "Bo").await;
    let bo_id = bo_ack["user_id"].clone();
    recv_where(&mut ada, "Bo's join", |f| {
        f["type"] == "presence:update" && f["joins"].as_array().is_some_and(|j| j.iter().any(|u| u["user_id"] == bo_id))
    })
    .await;

    b.kill9();
    let killed = std::time::Instant::now();
    recv_where(&mut ada, "Bo's leave", |f| {
        f["type"] == "presence:update"
            && f["leaves"].as_array().is_some_and(|l| l.iter().any(|u| u["user_id"] == bo_id))
    })
    .await;
    let took = killed.elapsed();
    assert!(took <= Duration::from_millis(5500), "Bo left after {took:?}\n{}", a.output());
}

/// What is queued when the backplane stops (the events of jobs that finished during a drain)
/// is still sent, in order: `stop` waits for the publisher. Ten backplanes, each stopped right
/// after its events were queued, before its publisher has run, so a stop heeded before the queue
/// would lose them.
#[actix_web::test]
async fn a_stop_sends_what_was_queued() {
    use lorewire::backplane::{redis::RedisBackplane, Backplane, Sinks};
    use lorewire::domain::events::Event;

    let client = redis::Client::open(redis_url()).unwrap();
    for round in 0..10 {
        let prefix = redis_prefix();
        let mut pubsub = client.get_async_pubsub().await.unwrap();
        pubsub.subscribe(format!("{prefix}events")).await.unwrap();
        let mut heard = pubsub.into_on_message();

        let metrics = lorewire::core::metrics::Metrics::new();
        let backplane = Arc::new(RedisBackplane::new(&redis_url(), &prefix, "stopping".into(), &metrics).unwrap());
        backplane.listen(Sinks::start(Vec::new(), &metrics));
        let events: Vec<Event> = (0..50)
            .map(|i| Event::Content {
                origin: "stopping".into(),
                kind: "quest".into(),
                subject_id: i,
                version: 1,
                owner: 0,
            })
            .collect();
        // Queued at once (nothing has yielded to the publisher yet), then stopped.
        let queued = backplane.publish(events);
        let stopping = backplane.clone();
        let stop = std::thread::spawn(move || stopping.stop());
        // Holds this (the publisher's) thread while the stop is signalled.
        std::thread::sleep(Duration::from_millis(20));
        queued.await.unwrap();
        actix_web::rt::task::spawn_blocking(move || stop.join().unwrap()).await.unwrap();

        for i in 0..50 {
            let message = tokio::time::timeout(Duration::from_secs(5), heard.next())
                .await
                .unwrap_or_else(|_| panic!("round {round}: only {i} of 50 events were sent"))
                .unwrap();
            let event: Event = serde_json::from_slice(message.get_payload_bytes()).unwrap();
            assert!(matches!(event, Event::Content { subject_id, .. } if subject_id == i), "in order: {event:?}");
        }
    }
}

/// The players of each process are kept in Redis, under a key of that process's own that lives
/// as long as its heartbeat: a killed process's key is gone within 5 s, and a process that
/// starts later knows the others' players from Redis.
#[actix_web::test]
async fn presence_is_kept_in_redis_for_as_long_as_its_process_lives() {
    let fake = crate::common::FakeLlm::start();
    let db = crate::process::test_db(Db::Postgres).await;
    let prefix = redis_prefix();
    let env = [("LOREWIRE_REDIS_URL", redis_url()), ("LOREWIRE_REDIS_PREFIX", prefix.clone())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let a = crate::process::Server::start_with(&db.url, &fake, &env).await;
    let mut b = crate::process::Server::start_with(&db.url, &fake, &env).await;
    wait_backplane(&a.url(""), true).await;
    wait_backplane(&b.url(""), true).await;
    let (_ada, ada_ack) = lobby_player(&a.url(""), "Ada").await;
    let (_bo, bo_ack) = lobby_player(&b.url(""), "Bo").await;

    let client = redis::Client::open(redis_url()).unwrap();
    let redis = client.get_multiplexed_async_connection().await.unwrap();
    let stored = |redis: redis::aio::MultiplexedConnection| {
        let pattern = format!("{prefix}presence:*");
        async move {
            let mut redis = redis;
            let keys: Vec<String> = redis::cmd("KEYS").arg(&pattern).query_async(&mut redis).await.unwrap();
            let mut users = std::collections::BTreeMap::new();
            for key in keys {
                let ttl: i64 = redis::cmd("PTTL").arg(&key).query_async(&mut redis).await.unwrap();
                if ttl == -2 || ttl == 0 {
                    // Expired since KEYS listed it, or expiring this millisecond (a killed
                    // process's key: a live process's is renewed long before): gone, as it
                    // should be.
                    continue;
                }
                assert!((1..=3500).contains(&ttl), "{key} lives {ttl} ms");
                let hash: Vec<(i64, String)> = redis::cmd("HGETALL").arg(&key).query_async(&mut redis).await.unwrap();
                users.insert(key, hash);
            }
            users
        }
    };
    let both = eventually("both processes to keep their players in Redis", || {
        let redis = redis.clone();
        async move { Some(stored(redis).await).filter(|users| users.len() == 2) }
    })
    .await;
    let everyone: Vec<&(i64, String)> = both.values().flatten().collect();
    assert!(everyone.contains(&&(ada_ack["user_id"].as_i64().unwrap(), "Ada".to_owned())), "{both:?}");
    assert!(everyone.contains(&&(bo_ack["user_id"].as_i64().unwrap(), "Bo".to_owned())), "{both:?}");

    // A process started now lists both in its first presence:state.
    let c = crate::process::Server::start_with(&db.url, &fake, &env).await;
    wait_backplane(&c.url(""), true).await;
    let mut cy = WsClient::connect(&c.url("/ws")).await;
    cy.lobby_frames = true;
    cy.send(json!({"type": "session:start", "nickname": "Cy"})).await;
    let state = cy.recv_type("presence:state").await;
    let listed: Vec<&str> =
        state["online"].as_array().unwrap().iter().map(|u| u["nickname"].as_str().unwrap()).collect();
    assert!(listed.contains(&"Ada") && listed.contains(&"Bo"), "{state}");

    b.kill9();
    let killed = std::time::Instant::now();
    let has = |users: &std::collections::BTreeMap<String, Vec<(i64, String)>>, who: &str| {
        users.values().flatten().any(|(_, name)| name == who)
    };
    eventually("B's key to expire", || {
        let redis = redis.clone();
        async move { Some(stored(redis).await).filter(|users| !has(users, "Bo")) }
    })
    .await;
    assert!(killed.elapsed() <= Duration::from_secs(5), "B's key outlived it by {:?}", killed.elapsed());
    // The living keep theirs.
    let left = eventually("A's and C's players in Redis", || {
        let redis = redis.clone();
        async move { Some(stored(redis).await).filter(|users| has(users, "Ada") && has(users, "Cy")) }
    })
    .await;
    assert_eq!(left.len(), 2, "{left:?}");
}
