//! A fake moderation endpoint speaking OpenAI's `POST /v1/moderations` format, a real HTTP
//! server on a free port: it flags inputs holding `MARKER`, or hangs, or answers 500, and can
//! be told to take its time.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use serde_json::{json, Value};

/// What the fake moderation endpoint does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(dead_code)]
pub enum Behaviour {
    /// Flags any input holding `MARKER` as `harassment`.
    Flag,
    Hang,
    Fail,
}

pub struct FakeModeration {
    pub url: String,
    behaviour: Arc<Mutex<Behaviour>>,
    /// Every request body, in order.
    pub calls: Arc<Mutex<Vec<Value>>>,
    /// How long a flagging answer takes (benches set it).
    #[allow(dead_code)]
    latency: Arc<Mutex<Duration>>,
    _server: actix_web::dev::ServerHandle,
}

impl FakeModeration {
    pub async fn start() -> FakeModeration {
        let behaviour = Arc::new(Mutex::new(Behaviour::Flag));
        let calls = Arc::new(Mutex::new(Vec::new()));
        let latency = Arc::new(Mutex::new(Duration::ZERO));
        let (b, c, l) = (behaviour.clone(), calls.clone(), latency.clone());
        let server = HttpServer::new(move || {
            let (b, c, l) = (b.clone(), c.clone(), l.clone());
            App::new().route(
                "/v1/moderations",
                web::post().to(move |body: web::Json<Value>| {
                    let (b, c, l) = (b.clone(), c.clone(), l.clone());
                    async move {
                        c.lock().unwrap().push(body.0.clone());
                        let behaviour = *b.lock().unwrap();
                        match behaviour {
                            Behaviour::Hang => {
                                tokio::time::sleep(Duration::from_secs(30)).await;
                                HttpResponse::Ok().finish()
                            }
                            Behaviour::Fail => HttpResponse::InternalServerError().body("moderation is down"),
                            Behaviour::Flag => {
                                let latency = *l.lock().unwrap();
                                if !latency.is_zero() {
                                    tokio::time::sleep(latency).await;
                                }
                                let flagged = body.0["input"].as_str().unwrap_or("").contains("MARKER");
                                HttpResponse::Ok().json(json!({"id": "modr-1", "model": "omni-moderation-latest",
                                    "results": [{"flagged": flagged, "categories": {"harassment": flagged, "violence": false}}]}))
                            }
                        }
                    }
                }),
            )
        })
        .workers(1)
        .bind("127.0.0.1:0")
        .unwrap();
        let addr = server.addrs()[0];
        let server = server.run();
        let handle = server.handle();
        actix_web::rt::spawn(server);
        FakeModeration { url: format!("http://{addr}/v1/moderations"), behaviour, calls, latency, _server: handle }
    }

    pub fn set(&self, behaviour: Behaviour) {
        *self.behaviour.lock().unwrap() = behaviour;
    }

    /// How long each answer of `Flag` takes from now on.
    #[allow(dead_code)]
    pub fn set_latency(&self, latency: Duration) {
        *self.latency.lock().unwrap() = latency;
    }
}
