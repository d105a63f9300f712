//! One actor per socket: the session's life (started, stopped, heartbeat), the stream of
//! client frames, their dispatch to the handler of each feature (`start`, `lobby`,
//! `content`, `runs`), and the one way out to the client (send, error, abort, close).
//! The only file that knows `actix-web-actors`: the handlers name its context as [`Ctx`].
//!
//! A socket that has not sent `session:start` within `LOREWIRE_SESSION_START_SECS` is closed
//! with 1008.
//!
//! Never waits on a slow call inside its mailbox (only `session:start`, a short write, holds
//! later frames back so they are handled as the started user). Watches its own outbound
//! backlog ([`Outbox`]) and closes with 1008 when the client stops reading. Holds no rule of
//! a feature: the handlers call the services, which decide.

mod content;
mod lobby;
mod runs;
mod start;

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_web::{HttpMessage, HttpRequest, HttpResponse};
use actix_web_actors::ws;
use bytestring::ByteString;
use serde_json::Value;

use super::error::store_error;
use super::outbox::{Outbox, MAX_BACKLOG_FRAMES};
use super::subscriptions::Subscriptions;
use super::transport::{Inbox, Takeover};
use super::MAX_FRAME_BYTES;
use crate::api_error::ApiError;
use crate::core::identity::TrustedProxies;
use crate::domain::identity;
use crate::domain::wire::{self as protocol, ClientFrame, ErrorCode, ServerFrame};
use crate::hub::{self, SessionId, ToSession, Topic};
use crate::state::AppState;
use crate::store::StoreError;

/// The session's actor context, as the handler files name it.
pub type Ctx = ws::WebsocketContext<WsSession>;

/// Upgrades the request and starts a session.
///
/// The socket is then the session's alone ([`Takeover`]): the connection reads it into the
/// session's [`Inbox`] and writes the session's [`Outbox`] to it, which is what tells how far
/// behind the client is.
pub fn start(req: &HttpRequest, state: Arc<AppState>) -> Result<HttpResponse, ApiError> {
    let mut response = ws::handshake(req).map_err(|e| ApiError::Invalid(format!("not a WebSocket upgrade: {e}")))?;
    let Some(takeover) = req.extensions().get::<Takeover>().cloned() else {
        tracing::error!("a WebSocket upgrade reached the app without its connection");
        return Err(ApiError::Internal);
    };
    let (outbox, inbox) = (Outbox::default(), Inbox::default());
    let client = client_address(req, &state.config.identity.trusted_proxies);
    let session = WsSession::new(state, outbox.clone(), client);
    let codec = actix_http::ws::Codec::new().max_size(MAX_FRAME_BYTES);
    let frames = ws::WebsocketContext::with_codec(session, inbox.clone(), codec);
    takeover.accept(Box::pin(frames), outbox, inbox);
    Ok(response.finish())
}

/// The studio's login behind a session started with a JWT.
pub(super) struct JwtLogin {
    pub(super) issuer: String,
    pub(super) subject: String,
    /// The JWT carries the server role: the session is the game server's.
    pub(super) server: bool,
    /// The close at the JWT's expiry.
    pub(super) expiry: Option<SpawnHandle>,
}

/// The client's address: the TCP peer's, or behind a trusted proxy the one its headers name.
fn client_address(req: &HttpRequest, trusted: &TrustedProxies) -> IpAddr {
    let peer = req.peer_addr().map(|a| a.ip()).unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    identity::client_address(peer, |a| trusted.contains(a), header("forwarded"), header("x-forwarded-for"))
}

/// The player a started session belongs to.
pub(super) struct SessionPlayer {
    pub(super) id: i64,
    pub(super) nickname: String,
    /// The UTC day the player was last recorded as seen (retention counts days seen).
    pub(super) seen_day: chrono::NaiveDate,
}

pub struct WsSession {
    id: SessionId,
    state: Arc<AppState>,
    outbox: Outbox,
    player: Option<SessionPlayer>,
    /// Content items, runs and (once joined) the lobby, each held back until its snapshot is sent.
    subscriptions: Subscriptions,
    last_heard: Instant,
    /// The session gave up on its client: write nothing more.
    aborted: bool,
    /// Generation runs this session waits on (detached when it closes).
    runs: HashSet<String>,
    /// The lobby join's progress: sends in flight, and what the join may drop as already in
    /// the recent messages ([`start`]).
    joining: start::Joining,
    /// The client's address (behind trusted proxies, the one they name).
    client: IpAddr,
    /// Set when the session started with the studio's JWT.
    login: Option<JwtLogin>,
}

impl WsSession {
    fn new(state: Arc<AppState>, outbox: Outbox, client: IpAddr) -> Self {
        WsSession {
            id: state.next_session_id(),
            client,
            login: None,
            state,
            outbox,
            player: None,
            subscriptions: Subscriptions::default(),
            last_heard: Instant::now(),
            aborted: false,
            runs: HashSet::new(),
            joining: start::Joining::default(),
        }
    }

    fn send_text(&mut self, text: ByteString, ctx: &mut Ctx) {
        if self.aborted {
            return;
        }
        let backlog = self.outbox.wrote(text.len());
        if backlog.is_slow_consumer() {
            tracing::warn!(session = self.id, frames = backlog.frames, bytes = backlog.bytes, "closing slow consumer");
            self.state.metrics.slow_consumers.inc();
            self.abort(1008, "slow consumer", ctx);
            return;
        }
        self.state.metrics.frames_out.inc();
        ctx.text(text);
    }

    fn send(&mut self, frame: ServerFrame, ctx: &mut Ctx) {
        self.send_text(frame.to_bytes(), ctx);
    }

    fn error(&mut self, code: ErrorCode, reference: Option<Value>, message: impl Into<String>, ctx: &mut Ctx) {
        self.send(ServerFrame::error(code, reference, message), ctx);
    }

    /// Answers a storage failure met while `what` (see [`store_error`]).
    fn store_failed(&mut self, what: &str, e: &StoreError, reference: Option<Value>, ctx: &mut Ctx) {
        let (code, message) = store_error(self.id, what, e);
        self.error(code, reference, message, ctx);
    }

    /// Gives up on the client: the close frame goes out ahead of anything unsent.
    fn abort(&mut self, code: u16, reason: &'static str, ctx: &mut Ctx) {
        self.aborted = true;
        self.outbox.abort(code, reason);
        ctx.stop();
    }

    fn close(&mut self, code: u16, reason: &str, ctx: &mut Ctx) {
        ctx.close(Some(ws::CloseReason { code: ws::CloseCode::from(code), description: Some(reason.to_owned()) }));
        ctx.stop();
    }

    fn on_text(&mut self, text: &str, ctx: &mut Ctx) {
        self.state.metrics.frames_in.inc();
        let (reference, frame) = protocol::parse(text);
        let frame = match frame {
            Ok(frame) => frame,
            // Before the session starts, anything but a (malformed) session:start is unauthorized.
            Err(_) if self.player.is_none() && !protocol::is_session_start(text) => {
                return self.error(ErrorCode::Unauthorized, reference, "the first frame must be session:start", ctx)
            }
            Err(e) => return self.error(ErrorCode::InvalidPayload, reference, e.to_string(), ctx),
        };
        if let ClientFrame::SessionStart(start) = frame {
            return self.start_session(start, reference, ctx);
        }
        if self.player.is_none() {
            return self.error(ErrorCode::Unauthorized, reference, "the first frame must be session:start", ctx);
        }
        if self.state.is_shutting_down() {
            return self.error(ErrorCode::Overloaded, reference, "the server is shutting down", ctx);
        }
        match frame {
            ClientFrame::SessionStart(_) => unreachable!("handled above"),
            ClientFrame::SessionRefresh(r) => self.refresh_session(r.jwt, reference, ctx),
            ClientFrame::ContentRequest(r) => self.content_request(r, reference, ctx),
            ClientFrame::ContentSubscribe(c) => self.content_subscribe(c.kind, c.subject_id, c.scope, reference, ctx),
            ClientFrame::ContentUnsubscribe(c) => self.unwatch(&self.content_topic(c.kind, c.subject_id, c.scope)),
            ClientFrame::GenerateStart(g) => self.generate_start(g, reference, ctx),
            ClientFrame::GenerateAbort(a) => self.generate_abort(a.run_id, reference, ctx),
            ClientFrame::MessageSend(m) => self.message_send(m.text, reference, ctx),
            ClientFrame::PresenceList(p) => self.presence_list(p.after_user_id, reference, ctx),
        }
    }

    /// Subscribes before the snapshot is read, holding updates back until it is sent, so no
    /// change between the read and the subscription can be missed and none arrives before
    /// the reply it follows.
    fn watch(&mut self, topic: Topic) {
        if self.subscriptions.hold(topic.clone()) {
            self.state.hub.do_send(hub::Subscribe { id: self.id, topic });
        }
    }

    fn unwatch(&mut self, topic: &Topic) {
        if self.subscriptions.remove(topic) {
            self.state.hub.do_send(hub::Unsubscribe { id: self.id, topic: topic.clone() });
        }
    }

    /// The snapshot could not be read: a subscription made only for it goes again.
    fn unwatch_if_holding(&mut self, topic: &Topic) {
        if self.subscriptions.is_holding(topic) {
            self.unwatch(topic);
        }
    }

    /// A frame from the Hub (or the lobby), in the order its subscription allows.
    fn deliver(&mut self, topic: &Topic, version: Option<i64>, text: ByteString, ctx: &mut Ctx) {
        if let Some(text) = self.subscriptions.offer(topic, version, text) {
            self.send_text(text, ctx);
        }
    }
}

impl Actor for WsSession {
    type Context = Ctx;

    fn started(&mut self, ctx: &mut Ctx) {
        ctx.set_mailbox_capacity(MAX_BACKLOG_FRAMES);
        self.state.metrics.sessions_open.inc();
        self.state.hub.do_send(hub::Connect { id: self.id, recipient: ctx.address().recipient() });
        // A socket that never says who it is would hold its connection for nothing.
        ctx.run_later(self.state.config.session_start, |act, ctx| {
            if act.player.is_none() {
                act.state.limits.session_start_missed(act.id);
                act.close(1008, "no session:start in time", ctx);
            }
        });
        let (interval, timeout) = (self.state.config.heartbeat_interval, self.state.config.client_timeout);
        ctx.run_interval(interval, |act, ctx| {
            act.outbox.wrote(0);
            ctx.ping(b"");
            act.record_new_day();
        });
        // Checked ten times per timeout, so a silent socket closes within a tenth of it.
        ctx.run_interval((timeout / 10).max(Duration::from_millis(10)), move |act, ctx| {
            if act.last_heard.elapsed() > timeout {
                tracing::info!(session = act.id, "closing silent socket");
                act.close(1000, "heartbeat timeout", ctx);
            }
        });
    }

    fn stopped(&mut self, _: &mut Ctx) {
        self.record_left();
        self.detach_runs();
        self.state.metrics.sessions_open.dec();
        self.state.hub.do_send(hub::Disconnect { id: self.id });
        if self.subscriptions.contains(&Topic::Lobby) {
            self.state.chat.leave(self.id);
        }
    }
}

impl Handler<ToSession> for WsSession {
    type Result = ();

    fn handle(&mut self, msg: ToSession, ctx: &mut Ctx) {
        match msg {
            ToSession::Frame { topic, version, text } => self.deliver(&topic, version, text, ctx),
            ToSession::Close { code: 1008, reason } => self.abort(1008, reason, ctx),
            ToSession::Close { code, reason } => self.close(code, reason, ctx),
        }
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for WsSession {
    fn handle(&mut self, msg: Result<ws::Message, ws::ProtocolError>, ctx: &mut Ctx) {
        self.last_heard = Instant::now();
        let msg = match msg {
            Ok(msg) => msg,
            Err(ws::ProtocolError::Overflow) => {
                tracing::info!(session = self.id, "closing: frame over 64 KiB");
                return self.close(1009, "frame too large", ctx);
            }
            Err(e) => {
                tracing::info!(session = self.id, error = %e, "closing: protocol error");
                return self.close(1002, "protocol error", ctx);
            }
        };
        match msg {
            ws::Message::Text(text) => self.on_text(&text, ctx),
            ws::Message::Binary(_) => {
                self.state.metrics.frames_in.inc();
                self.error(ErrorCode::InvalidPayload, None, "binary frames are not accepted; send JSON text", ctx)
            }
            // A fragmented message is refused once, at its last fragment.
            ws::Message::Continuation(actix_http::ws::Item::Last(_)) => {
                self.error(ErrorCode::InvalidPayload, None, "fragmented frames are not accepted", ctx)
            }
            ws::Message::Continuation(_) => {}
            ws::Message::Ping(payload) => {
                self.outbox.wrote(payload.len());
                ctx.pong(&payload)
            }
            ws::Message::Pong(_) | ws::Message::Nop => {}
            ws::Message::Close(reason) => {
                ctx.close(reason);
                ctx.stop();
            }
        }
    }
}
