//! The floor of the stack: a bare actix-web-actors echo session (a heartbeat ping, text echoed
//! back, nothing else), measured the way `cargo bench --bench lobby` measures lorewire's
//! sessions: the server is this bench binary run again as a child process; its RSS before and
//! once 1,000 / 5,000 / 15,000 sessions have each had their first frame echoed, divided by the
//! sessions, and the RSS once they have closed.
//!
//! `cargo bench --bench echo_floor` (Linux). LOREWIRE_BENCH_SESSIONS changes the sizes.

#[allow(dead_code)]
#[path = "support/mod.rs"]
mod support;

use std::time::Duration;

use actix::prelude::*;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use actix_web_actors::ws;
use support::clients::{self, Hello};
use support::Server;

const SERVE: &str = "ECHO_FLOOR_SERVE";
const HELLO: Hello = Hello { first: r#"{"type":"echo","n":{n}}"#, joined: br#"{"type":"echo""# };

struct Echo;

impl Actor for Echo {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(Duration::from_secs(5), |_, ctx| ctx.ping(b""));
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for Echo {
    fn handle(&mut self, msg: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        match msg {
            Ok(ws::Message::Text(text)) => ctx.text(text),
            Ok(ws::Message::Ping(p)) => ctx.pong(&p),
            Ok(ws::Message::Close(reason)) => {
                ctx.close(reason);
                ctx.stop();
            }
            Ok(_) => {}
            Err(_) => ctx.stop(),
        }
    }
}

async fn echo(req: HttpRequest, payload: web::Payload) -> Result<HttpResponse, actix_web::Error> {
    ws::start(Echo, &req, payload)
}

/// The child: the echo server on `addr`, as many workers as lorewire runs (one per core).
fn serve(addr: &str) -> std::io::Result<()> {
    actix_web::rt::System::new().block_on(
        HttpServer::new(|| {
            App::new().route("/ws", web::get().to(echo)).route("/ready", web::get().to(HttpResponse::Ok))
        })
        .bind(addr)?
        .run(),
    )
}

async fn sessions(sessions: usize) {
    let addr = support::free_addr();
    let mut cmd = support::command(std::env::current_exe().expect("this bench's path"));
    cmd.env(SERVE, &addr);
    let server = Server::spawn(cmd, addr, tempfile::tempdir().expect("temp dir"), "/ready").await;
    let m = clients::memory_per_session(&server, sessions, HELLO, Duration::from_secs(3)).await;
    println!(
        "echo floor: {sessions:>6} idle sessions: connected in {storm:.2} s; server RSS {cold} KiB at start, \
         {before} KiB after {warm_up} sessions came and went -> {joined} KiB = {per:.1} KiB per session",
        storm = m.storm.as_secs_f64(),
        cold = m.cold,
        warm_up = clients::WARM_UP,
        before = m.before,
        joined = m.joined,
        per = m.per_session(sessions),
    );
    println!("echo floor: {sessions:>6} closed: server RSS {} KiB = before + {} KiB", m.closed, m.grew_after_close());
}

fn main() -> std::io::Result<()> {
    if let Ok(addr) = std::env::var(SERVE) {
        return serve(&addr);
    }
    let sizes = support::session_sizes("echo floor");
    actix_web::rt::System::new().block_on(async move {
        for size in sizes {
            sessions(size).await;
        }
    });
    Ok(())
}
