//! One actor per socket: heartbeat, parsing, validation, the user and their subscriptions.
//! The only file that knows `actix-web-actors`.
//!
//! Never waits on a slow call inside its mailbox (only `session:start`, a short write, holds
//! later frames back so they are handled as the started user). Watches its own outbound
//! backlog and closes with 1008 when the client stops reading.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_web::{HttpRequest, HttpResponse};
use actix_web_actors::ws;
use bytestring::ByteString;
use serde_json::Value;

use super::outbox::{self, Outbox, MAX_BACKLOG_FRAMES};
use super::subscriptions::{Seen, Subscriptions};
use super::MAX_FRAME_BYTES;
use crate::content::{self, Content, ContentKind};
use crate::domain::players::{self as player_rules, Variant};
use crate::domain::wire::{
    self as protocol, ClientFrame, ContentRequest, ErrorCode, GenerateStart, ServerFrame, Typed,
};
use crate::http::error::ApiError;
use crate::hub::{self, SessionId, ToSession, Topic};
use crate::lobby::{self, SendRefused};
use crate::players;
use crate::runs::service::{RunService, StartError, Started, Waiter};
use crate::runs::{self, RunErrorCode};
use crate::state::AppState;

/// Upgrades the request and starts a session.
///
/// actix-web-actors runs a session only while the response body is polled, so the session's
/// context is driven by a task of its own ([`outbox::drive`]) into an [`Outbox`] that the
/// response body drains. The outbox is what tells how far behind the client is.
pub fn start(
    req: &HttpRequest,
    payload: actix_web::web::Payload,
    state: Arc<AppState>,
) -> Result<HttpResponse, ApiError> {
    let mut response = ws::handshake(req).map_err(|e| ApiError::Invalid(format!("not a WebSocket upgrade: {e}")))?;
    let outbox = Outbox::default();
    let session = WsSession::new(state, outbox.clone());
    let codec = actix_http::ws::Codec::new().max_size(MAX_FRAME_BYTES);
    let frames = ws::WebsocketContext::with_codec(session, payload, codec);
    Ok(response.streaming(outbox::drive(outbox, frames)))
}

/// A run a session was counted as waiting on, on its way to the session. Dropped without
/// being claimed (the session stopped before the admission answered), it detaches again.
struct Waiting {
    service: RunService,
    run_id: String,
    session: SessionId,
    claimed: bool,
}

impl Waiting {
    fn new(service: RunService, run_id: String, session: SessionId) -> Self {
        Waiting { service, run_id, session, claimed: false }
    }

    /// The session records the run in its own set (detached when it stops).
    fn claim(mut self) {
        self.claimed = true;
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if self.claimed {
            return;
        }
        tracing::info!(session = self.session, run = %self.run_id, "session closed before its run was admitted");
        let (service, run_id, session) = (self.service.clone(), std::mem::take(&mut self.run_id), self.session);
        actix_web::rt::spawn(async move { service.detach(run_id, session).await });
    }
}

struct SessionUser {
    id: i64,
    nickname: String,
    /// The UTC day the user was last recorded as seen (retention counts days seen).
    seen_day: chrono::NaiveDate,
}

pub struct WsSession {
    id: SessionId,
    state: Arc<AppState>,
    outbox: Outbox,
    user: Option<SessionUser>,
    /// Content items, runs and (once joined) the lobby, each held back until its snapshot is sent.
    subscriptions: Subscriptions,
    last_heard: Instant,
    /// Frames of a fragmented message are refused; answer once at its end.
    in_fragment: bool,
    /// The session gave up on its client: write nothing more.
    aborted: bool,
    /// Generation runs this session waits on (detached when it closes).
    runs: HashSet<String>,
}

impl WsSession {
    fn new(state: Arc<AppState>, outbox: Outbox) -> Self {
        WsSession {
            id: state.next_session_id(),
            state,
            outbox,
            user: None,
            subscriptions: Subscriptions::default(),
            last_heard: Instant::now(),
            in_fragment: false,
            aborted: false,
            runs: HashSet::new(),
        }
    }

    fn send_text(&mut self, text: ByteString, ctx: &mut ws::WebsocketContext<Self>) {
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

    fn send(&mut self, frame: ServerFrame, ctx: &mut ws::WebsocketContext<Self>) {
        self.send_text(ByteString::from(frame.to_json()), ctx);
    }

    fn error(
        &mut self,
        code: ErrorCode,
        reference: Option<Value>,
        message: impl Into<String>,
        ctx: &mut ws::WebsocketContext<Self>,
    ) {
        self.send(ServerFrame::error(code, reference, message), ctx);
    }

    /// Gives up on the client: the close frame goes out ahead of anything unsent.
    fn abort(&mut self, code: u16, reason: &'static str, ctx: &mut ws::WebsocketContext<Self>) {
        self.aborted = true;
        self.outbox.abort(code, reason);
        ctx.stop();
    }

    fn close(&mut self, code: u16, reason: &str, ctx: &mut ws::WebsocketContext<Self>) {
        ctx.close(Some(ws::CloseReason { code: ws::CloseCode::from(code), description: Some(reason.to_owned()) }));
        ctx.stop();
    }

    fn on_text(&mut self, text: &str, ctx: &mut ws::WebsocketContext<Self>) {
        self.state.metrics.frames_in.inc();
        let (reference, frame) = protocol::parse(text);
        let frame = match frame {
            Ok(frame) => frame,
            // Before the session starts, anything but a (malformed) session:start is unauthorized.
            Err(_) if self.user.is_none() && !protocol::is_session_start(text) => {
                return self.error(ErrorCode::Unauthorized, reference, "the first frame must be session:start", ctx)
            }
            Err(message) => return self.error(ErrorCode::InvalidPayload, reference, message, ctx),
        };
        if let ClientFrame::SessionStart(start) = frame {
            return self.start_session(start.nickname, start.token, reference, ctx);
        }
        if self.user.is_none() {
            return self.error(ErrorCode::Unauthorized, reference, "the first frame must be session:start", ctx);
        }
        if self.state.is_shutting_down() {
            return self.error(ErrorCode::Overloaded, reference, "the server is shutting down", ctx);
        }
        match frame {
            ClientFrame::SessionStart(_) => unreachable!("handled above"),
            ClientFrame::ContentRequest(r) => self.content_request(r, reference, ctx),
            ClientFrame::ContentSubscribe(c) => self.content_subscribe(c.kind, c.subject_id, reference, ctx),
            ClientFrame::ContentUnsubscribe(c) => self.unwatch(&Topic::Content(c.kind, c.subject_id)),
            ClientFrame::GenerateStart(g) => self.generate_start(g, reference, ctx),
            ClientFrame::GenerateAbort(a) => self.generate_abort(a.run_id, reference, ctx),
            ClientFrame::MessageSend(m) => self.message_send(m.text, reference, ctx),
        }
    }

    /// A player connected across UTC midnight has been seen on the new day too.
    fn record_new_day(&mut self) {
        let now = self.state.clock.now_naive();
        let Some(user) = self.user.as_mut().filter(|u| u.seen_day != now.date()) else { return };
        user.seen_day = now.date();
        let user_id = user.id;
        self.spawn_seen(user_id, now);
    }

    fn spawn_seen(&self, user_id: i64, now: chrono::NaiveDateTime) {
        let store = self.state.store.clone();
        actix_web::rt::spawn(async move {
            if let Err(e) = players::seen(&store, user_id, now).await {
                tracing::warn!(user = user_id, error = %e, "could not record the user as seen");
            }
        });
    }

    fn start_session(
        &mut self,
        nickname: String,
        token: Option<String>,
        reference: Option<Value>,
        ctx: &mut ws::WebsocketContext<Self>,
    ) {
        if self.user.is_some() {
            return self.error(ErrorCode::InvalidPayload, reference, "the session has already started", ctx);
        }
        let nickname = match player_rules::validate_nickname(&nickname) {
            Ok(n) => n,
            Err(message) => return self.error(ErrorCode::InvalidPayload, reference, message, ctx),
        };
        let store = self.state.store.clone();
        let clock = self.state.clock.clone();
        // Held in the mailbox on purpose: frames sent right after session:start are handled
        // once the user exists, not refused as unauthorized.
        ctx.wait(async move { players::start_session(&store, &clock, nickname, token).await }.into_actor(self).map(
            move |result, act, ctx| match result {
                Ok(started) => {
                    let user = started.user;
                    tracing::info!(session = act.id, user = user.id, resumed = started.resumed, "session started");
                    act.user = Some(SessionUser {
                        id: user.id,
                        nickname: user.nickname.clone(),
                        seen_day: user.last_seen_at.date(),
                    });
                    let ack = Typed::SessionAck {
                        reference,
                        user_id: user.id,
                        nickname: user.nickname.clone(),
                        token: started.token,
                        variant: Variant::of(user.id),
                        server_time: act.state.clock.now(),
                    };
                    act.send(ack.into(), ctx);
                    act.join_lobby(user.id, user.nickname, ctx);
                }
                Err(e) => {
                    tracing::error!(session = act.id, error = %e, "session start failed");
                    act.error(ErrorCode::Overloaded, reference, "could not start the session, try again", ctx);
                }
            },
        ));
    }

    /// Enters the lobby after the ack: `lobby:history`, `presence:state`, then the lobby frames
    /// that arrived meanwhile (minus messages the history already holds).
    fn join_lobby(&mut self, user_id: i64, nickname: String, ctx: &mut ws::WebsocketContext<Self>) {
        // Lobby frames are held back while the history and presence are on their way.
        self.subscriptions.hold(Topic::Lobby);
        let service = self.state.lobby.clone();
        let join = lobby::Join { session: self.id, user_id, nickname, recipient: ctx.address().recipient() };
        ctx.spawn(async move { service.join(join).await }.into_actor(self).map(|result, act, ctx| {
            let in_history = match result {
                Ok((online, messages)) => {
                    let in_history = messages.iter().map(|m| m.id).collect();
                    act.send(Typed::LobbyHistory { messages }.into(), ctx);
                    act.send(Typed::PresenceState { online }.into(), ctx);
                    in_history
                }
                Err(e) => {
                    tracing::error!(session = act.id, error = %e, "could not load the lobby");
                    act.error(ErrorCode::Overloaded, None, "the lobby could not be loaded; reconnect to retry", ctx);
                    HashSet::new()
                }
            };
            for text in act.subscriptions.release(&Topic::Lobby, Seen::Messages(in_history)) {
                act.send_text(text, ctx);
            }
        }));
    }

    fn message_send(&mut self, text: String, reference: Option<Value>, ctx: &mut ws::WebsocketContext<Self>) {
        let Some(user) = self.user.as_ref() else { return };
        let (user_id, nickname) = (user.id, user.nickname.clone());
        let service = self.state.lobby.clone();
        let text = match service.admit(user_id, &text) {
            Ok(text) => text,
            Err(SendRefused::RateLimited(message)) => {
                return self.error(ErrorCode::RateLimited, reference, message, ctx);
            }
            Err(refused) => return self.error(ErrorCode::InvalidPayload, reference, refused.to_string(), ctx),
        };
        // The sender sees its message as everyone does: as the broadcast `message:new`.
        ctx.spawn(async move { service.post(user_id, nickname, text).await }.into_actor(self).map(
            move |result, act, ctx| {
                if let Err(e) = result {
                    tracing::error!(session = act.id, error = %e, "lobby message could not be stored");
                    act.error(ErrorCode::Overloaded, reference, "the message could not be stored, try again", ctx);
                }
            },
        ));
    }

    fn content_request(
        &mut self,
        request: ContentRequest,
        reference: Option<Value>,
        ctx: &mut ws::WebsocketContext<Self>,
    ) {
        let ContentRequest { kind, subject_id, context, regenerate } = request;
        let request = match content::validate(kind, subject_id, context.as_ref(), regenerate) {
            Ok(r) => r,
            Err(message) => return self.error(ErrorCode::InvalidPayload, reference, message, ctx),
        };
        if let Some(user) = &self.user {
            tracing::debug!(
                session = self.id,
                user = user.id,
                kind = kind.as_str(),
                subject_id,
                regenerate,
                "content request"
            );
        }
        let topic = Topic::Content(kind, subject_id);
        self.watch(topic.clone());
        let service = self.state.content.clone();
        ctx.spawn(async move { service.request(request).await }.into_actor(self).map(move |result, act, ctx| {
            match result {
                Ok(content) => act.snapshot(topic, reference, content, ctx),
                Err(e) => {
                    tracing::error!(session = act.id, error = %e, "content request failed");
                    act.unwatch_if_awaiting(&topic);
                    act.error(ErrorCode::Overloaded, reference, "the request could not be stored, try again", ctx);
                }
            }
        }));
    }

    fn content_subscribe(
        &mut self,
        kind: ContentKind,
        subject_id: u64,
        reference: Option<Value>,
        ctx: &mut ws::WebsocketContext<Self>,
    ) {
        let topic = Topic::Content(kind, subject_id);
        self.watch(topic.clone());
        let service = self.state.content.clone();
        ctx.spawn(async move { service.get(kind, subject_id).await }.into_actor(self).map(move |result, act, ctx| {
            match result {
                Ok(Some(content)) => act.snapshot(topic, reference, content, ctx),
                Ok(None) => {
                    act.unwatch_if_awaiting(&topic);
                    let message = format!("no {} with subject_id {subject_id}", kind.as_str());
                    act.error(ErrorCode::NotFound, reference, message, ctx);
                }
                Err(e) => {
                    tracing::error!(session = act.id, error = %e, "content lookup failed");
                    act.unwatch_if_awaiting(&topic);
                    act.error(ErrorCode::Overloaded, reference, "the item could not be read, try again", ctx);
                }
            }
        }));
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

    fn unwatch_if_awaiting(&mut self, topic: &Topic) {
        if self.subscriptions.is_holding(topic) {
            self.unwatch(topic);
        }
    }

    /// Sends the snapshot (the direct reply), then any newer update that arrived meanwhile.
    fn snapshot(
        &mut self,
        topic: Topic,
        reference: Option<Value>,
        content: Content,
        ctx: &mut ws::WebsocketContext<Self>,
    ) {
        let seen = Seen::Upto(content.version);
        self.send(Typed::ContentSnapshot { reference, content }.into(), ctx);
        for text in self.subscriptions.release(&topic, seen) {
            self.send_text(text, ctx);
        }
    }

    fn generate_start(&mut self, g: GenerateStart, reference: Option<Value>, ctx: &mut ws::WebsocketContext<Self>) {
        let request = match runs::validate(&g.project_id, &g.action, &g.input, g.skip_cache) {
            Ok(r) => r,
            Err(message) => return self.error(ErrorCode::InvalidPayload, reference, message, ctx),
        };
        let service = self.state.runs.clone();
        let session = self.id;
        // The admission runs to its end even if this session stops meanwhile (a stopping actor
        // drops its futures, not the transaction in flight); a run it was counted on then
        // detaches again when the unclaimed `Waiting` is dropped, so it cannot escape abort.
        let (answer, answered) = tokio::sync::oneshot::channel();
        actix_web::rt::spawn(async move {
            let result = service.start(request, Waiter::Session(session)).await;
            let waiting = match &result {
                Ok(Started::Queued { run_id, .. }) => Some(Waiting::new(service.clone(), run_id.clone(), session)),
                _ => None,
            };
            let _ = answer.send((result, waiting));
        });
        ctx.spawn(answered.into_actor(self).map(move |answer, act, ctx| {
            let Ok((result, waiting)) = answer else {
                tracing::error!(session = act.id, "run admission ended without an answer");
                return act.error(ErrorCode::Overloaded, reference, "the run could not be started, try again", ctx);
            };
            match result {
                Ok(Started::Queued { run_id, position, estimated_ms, .. }) => {
                    if let Some(waiting) = waiting {
                        waiting.claim();
                    }
                    let topic = Topic::Run(run_id.clone());
                    if !act.runs.insert(run_id.clone()) {
                        // Already waiting on it: the second request counted this session twice.
                        let (service, id, session) = (act.state.runs.clone(), run_id.clone(), act.id);
                        actix_web::rt::spawn(async move { service.undo_join(id, session).await });
                    }
                    // Subscribed before the catch-up is read: a frame is either in it or comes live.
                    act.watch(topic.clone());
                    let reply = Typed::RunQueued { reference, run_id: run_id.clone(), position, estimated_ms };
                    act.run_catch_up(topic, run_id, reply.into(), ctx);
                }
                Ok(Started::Cached(row)) => {
                    let reply =
                        Typed::RunQueued { reference, run_id: row.run_id.clone(), position: 0, estimated_ms: 0 };
                    act.send(reply.into(), ctx);
                    for (_, text) in runs::service::stored_frames(&row, true) {
                        act.send_text(text, ctx);
                    }
                }
                Ok(Started::NoConfig(row)) => {
                    let frame = Typed::RunError {
                        reference,
                        run_id: row.run_id,
                        code: RunErrorCode::NoConfig.to_string(),
                        message: row.error.unwrap_or_default(),
                    };
                    act.send(frame.into(), ctx);
                }
                Err(StartError::BudgetExceeded(message)) => {
                    act.error(ErrorCode::BudgetExceeded, reference, message, ctx)
                }
                Err(StartError::Overloaded(message)) => act.error(ErrorCode::Overloaded, reference, message, ctx),
                Err(StartError::Store(e)) => {
                    tracing::error!(session = act.id, error = %e, "run could not be started");
                    act.error(ErrorCode::Overloaded, reference, "the run could not be stored, try again", ctx);
                }
            }
        }));
    }

    /// Sends the reply, then the run's frames so far, then what arrived meanwhile.
    fn run_catch_up(&mut self, topic: Topic, run_id: String, reply: ServerFrame, ctx: &mut ws::WebsocketContext<Self>) {
        let service = self.state.runs.clone();
        ctx.spawn(async move { service.catch_up(run_id).await }.into_actor(self).map(move |result, act, ctx| {
            act.send(reply, ctx);
            let frames = match result {
                Ok(catch_up) => catch_up.map(|c| c.frames).unwrap_or_default(),
                Err(e) => {
                    tracing::error!(session = act.id, error = %e, "run catch-up failed");
                    Vec::new()
                }
            };
            let seen = Seen::catch_up(&frames);
            for (_, text) in frames {
                act.send_text(text, ctx);
            }
            for text in act.subscriptions.release(&topic, seen) {
                act.send_text(text, ctx);
            }
        }));
    }

    fn generate_abort(&mut self, run_id: String, reference: Option<Value>, ctx: &mut ws::WebsocketContext<Self>) {
        if !self.runs.remove(&run_id) {
            let message = format!("this session is not waiting on run `{run_id}`");
            return self.error(ErrorCode::NotFound, reference, message, ctx);
        }
        self.unwatch(&Topic::Run(run_id.clone()));
        let frame = Typed::RunError {
            reference,
            run_id: run_id.clone(),
            code: RunErrorCode::Aborted.to_string(),
            message: "this session no longer waits on the run".into(),
        };
        self.send(frame.into(), ctx);
        let service = self.state.runs.clone();
        let session = self.id;
        actix_web::rt::spawn(async move { service.detach(run_id, session).await });
    }

    fn deliver(&mut self, topic: &Topic, version: Option<i64>, text: ByteString, ctx: &mut ws::WebsocketContext<Self>) {
        if let Some(text) = self.subscriptions.offer(topic, version, text) {
            self.send_text(text, ctx);
        }
    }
}

impl Actor for WsSession {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(MAX_BACKLOG_FRAMES);
        self.state.metrics.sessions_open.inc();
        self.state.hub.do_send(hub::Connect { id: self.id, recipient: ctx.address().recipient() });
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

    fn stopped(&mut self, _: &mut Self::Context) {
        if let Some(user) = &self.user {
            // The last time this player was seen is when they left.
            self.spawn_seen(user.id, self.state.clock.now_naive());
        }
        for run_id in std::mem::take(&mut self.runs) {
            let service = self.state.runs.clone();
            let session = self.id;
            actix_web::rt::spawn(async move { service.detach(run_id, session).await });
        }
        self.state.metrics.sessions_open.dec();
        self.state.hub.do_send(hub::Disconnect { id: self.id });
        if self.subscriptions.contains(&Topic::Lobby) {
            self.state.lobby.leave(self.id);
        }
    }
}

impl Handler<ToSession> for WsSession {
    type Result = ();

    fn handle(&mut self, msg: ToSession, ctx: &mut Self::Context) {
        match msg {
            ToSession::Frame { topic, version, text } => self.deliver(&topic, version, text, ctx),
            ToSession::Close { code: 1008, reason } => self.abort(1008, reason, ctx),
            ToSession::Close { code, reason } => self.close(code, reason, ctx),
        }
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for WsSession {
    fn handle(&mut self, msg: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
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
            ws::Message::Continuation(item) => {
                let last = matches!(item, actix_http::ws::Item::Last(_));
                if last {
                    self.in_fragment = false;
                    self.error(ErrorCode::InvalidPayload, None, "fragmented frames are not accepted", ctx);
                } else {
                    self.in_fragment = true;
                }
            }
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
