//! `session:start`: the player behind the socket (started or resumed by token, or the player
//! of the studio's JWT, whose session ends with the JWT unless `session:refresh` moves it),
//! the ack, and the lobby join that follows it (`lobby:history`, `presence:state`, then the lobby frames
//! held back meanwhile); when the player was last seen (a new UTC day, the socket closing). A
//! session follows its player's close from before the blocked flag is read, so a block that
//! commits after that read closes it with 4003 "blocked" (on whichever process it is).
//!
//! Never decides a player rule (nicknames, tokens and variants are `domain::players`) and
//! never touches the store but through `crate::players` and the chat.

use std::cell::Cell;
use std::collections::HashSet;
use std::rc::Rc;

use actix::prelude::*;
use serde_json::Value;

use super::{Ctx, JwtLogin, SessionPlayer, WsSession};
use crate::core::identity::AuthMode;
use crate::domain::identity::JwtRefusal;
use crate::domain::lobby::Message;
use crate::domain::players::Variant;
use crate::domain::wire::{ErrorCode, SessionStart, Typed};
use crate::hub::{self, Topic};
use crate::lobby;
use crate::players::{self, StartRefused};
use crate::store::StoreError;
use crate::ws::subscriptions::Seen;

const LOBBY_FAILED: &str = "the lobby could not be loaded (reconnect to retry)";

/// A lobby join in progress. A message this session sends while joining can land in the
/// recent messages the join reads; the held `message:new` of such a message would then be dropped as
/// already seen, and one published before the join's subscription reached the hub never comes
/// at all; yet it is the sender's answer to its send. So the held frames are released only once
/// every send of the session has its message, the session's own are never dropped, and one that
/// never came is sent from the send's own answer.
#[derive(Debug, Default)]
pub(super) struct Joining {
    /// `message:send`s of this session not yet stored or refused.
    sends_in_flight: usize,
    /// The messages this session stored while the lobby was held.
    own: Vec<Message>,
    /// The recent messages' ids, once the join has sent its `lobby:history` and state.
    recent: Option<HashSet<i64>>,
}

impl WsSession {
    pub(super) fn start_session(&mut self, start: SessionStart, reference: Option<Value>, ctx: &mut Ctx) {
        if self.player.is_some() {
            return self.error(ErrorCode::InvalidPayload, reference, "the session has already started", ctx);
        }
        let players = self.state.players.clone();
        let client = self.client;
        // The player's close (a block) is subscribed to before its blocked flag is read.
        let watched = Rc::new(Cell::new(None));
        let (hub, id, seen) = (self.state.hub.clone(), self.id, watched.clone());
        let watch = move |user_id: i64| {
            seen.set(Some(user_id));
            hub.do_send(hub::Subscribe { id, topic: Topic::Player(user_id) });
        };
        let hold = self.state.config.test_holds.session_start;
        let starting = async move {
            let started = match (start.jwt, start.nickname) {
                (Some(jwt), nickname) => players.start_jwt(&jwt, nickname.as_deref(), watch).await,
                (None, Some(nickname)) => players.start_anonymous(&nickname, start.token, client, watch).await,
                (None, None) if players.mode() == AuthMode::Jwt => Err(StartRefused::Unauthorized(
                    "this server accepts only the studio's login: send session:start with `jwt`".into(),
                )),
                (None, None) => Err(StartRefused::InvalidNickname("missing field `nickname`".into())),
            };
            if started.is_ok() && !hold.is_zero() {
                actix_web::rt::time::sleep(hold).await;
            }
            started
        };
        // Held in the mailbox on purpose: frames sent right after session:start are handled
        // once the user exists, not refused as unauthorized.
        ctx.wait(starting.into_actor(self).map(move |result, act, ctx| {
            if let (Err(_), Some(user_id)) = (&result, watched.get()) {
                act.state.hub.do_send(hub::Unsubscribe { id: act.id, topic: Topic::Player(user_id) });
            }
            match result {
                Ok(started) => act.started(started, reference, ctx),
                Err(StartRefused::Unauthorized(message)) => act.error(ErrorCode::Unauthorized, reference, message, ctx),
                Err(StartRefused::Blocked) => {
                    act.error(ErrorCode::Unauthorized, reference, StartRefused::Blocked.to_string(), ctx)
                }
                Err(StartRefused::InvalidNickname(message)) => {
                    act.error(ErrorCode::InvalidPayload, reference, message, ctx)
                }
                Err(StartRefused::RateLimited(message)) => act.error(ErrorCode::RateLimited, reference, message, ctx),
                Err(StartRefused::Store(e)) => act.store_failed("could not start the session", &e, reference, ctx),
            }
        }));
    }

    fn started(&mut self, started: players::Started, reference: Option<Value>, ctx: &mut Ctx) {
        let user = started.user;
        tracing::info!(session = self.id, user = user.id, resumed = started.resumed, "session started");
        self.player =
            Some(SessionPlayer { id: user.id, nickname: user.nickname.clone(), seen_day: user.last_seen_at.date() });
        let (external_id, expires_at) = match &started.jwt {
            Some(verified) => {
                self.login = Some(JwtLogin {
                    issuer: verified.issuer.clone(),
                    subject: verified.subject.clone(),
                    server: verified.server,
                    expiry: None,
                });
                self.expire_at(verified.expires_at, ctx);
                (Some(verified.subject.clone()), Some(verified.expires_at))
            }
            None => (None, None),
        };
        let ack = Typed::SessionAck {
            reference,
            user_id: user.id,
            nickname: user.nickname.clone(),
            token: started.token,
            variant: Variant::of(user.id),
            server_time: self.state.clock.now(),
            external_id,
            expires_at,
        };
        self.send(ack.into(), ctx);
        self.join_lobby(user.id, user.nickname, ctx);
    }

    /// `session:refresh`: a newer JWT of the same player moves the session's end to its expiry.
    /// A refused one leaves the session as it was, ending with the JWT it has.
    pub(super) fn refresh_session(&mut self, jwt: String, reference: Option<Value>, ctx: &mut Ctx) {
        let Some(login) = &self.login else {
            return self.error(
                ErrorCode::Unauthorized,
                reference,
                "only a session started with a JWT can be refreshed",
                ctx,
            );
        };
        let (issuer, subject) = (login.issuer.clone(), login.subject.clone());
        let players = self.state.players.clone();
        ctx.spawn(async move { players.verify(&jwt).await }.into_actor(self).map(
            move |result, act, ctx| match result {
                Ok(v) if v.issuer != issuer || v.subject != subject => {
                    act.error(ErrorCode::Unauthorized, reference, JwtRefusal::OtherPlayer.to_string(), ctx)
                }
                Ok(v) => {
                    act.expire_at(v.expires_at, ctx);
                    act.send(Typed::SessionRefreshed { reference, expires_at: v.expires_at }.into(), ctx);
                }
                Err(refusal) => act.error(ErrorCode::Unauthorized, reference, refusal.to_string(), ctx),
            },
        ));
    }

    /// Closes the session with 4001 once its JWT has expired (past the leeway), unless a
    /// refresh moves the end first.
    fn expire_at(&mut self, expires_at: chrono::DateTime<chrono::Utc>, ctx: &mut Ctx) {
        let Some(login) = self.login.as_mut() else { return };
        if let Some(previous) = login.expiry.take() {
            ctx.cancel_future(previous);
        }
        let deadline = self.state.players.session_deadline(expires_at);
        let wait = (deadline - self.state.clock.now()).to_std().unwrap_or_default();
        let handle = ctx.run_later(wait, |act, ctx| {
            tracing::info!(session = act.id, "closing: its JWT expired");
            act.close(4001, "token expired", ctx);
        });
        login.expiry = Some(handle);
    }

    /// Enters the lobby after the ack: `lobby:history`, `presence:state`, then the lobby frames
    /// that arrived meanwhile (minus messages the recent ones already hold).
    fn join_lobby(&mut self, user_id: i64, nickname: String, ctx: &mut Ctx) {
        // Lobby frames are held back while the recent messages and presence are on their way.
        self.subscriptions.hold(Topic::Lobby);
        let service = self.state.chat.clone();
        let join = lobby::Join { session: self.id, user_id, nickname };
        ctx.spawn(async move { service.join(join).await }.into_actor(self).map(|result, act, ctx| match result {
            Ok((messages, presence_state)) => {
                let in_recent: HashSet<i64> = messages.iter().map(|m| m.id).collect();
                act.send(Typed::LobbyHistory { messages }.into(), ctx);
                // The state comes at the end of the join's presence window.
                ctx.spawn(presence_state.ready().into_actor(act).map(move |state, act, ctx| {
                    match state {
                        Some(state) => act.send_text(state, ctx),
                        None => act.store_failed(LOBBY_FAILED, &StoreError::Canceled, None, ctx),
                    }
                    act.joined(in_recent, ctx);
                }));
            }
            Err(e) => {
                act.store_failed(LOBBY_FAILED, &e, None, ctx);
                act.joined(HashSet::new(), ctx);
            }
        }));
    }

    /// The join has sent its recent messages and state: the held lobby frames go out once no send of
    /// this session is still on its way (its id must be known to keep its `message:new`).
    fn joined(&mut self, in_recent: HashSet<i64>, ctx: &mut Ctx) {
        self.joining.recent = Some(in_recent);
        self.release_lobby_when_sent(ctx);
    }

    /// A `message:send` of this session is on its way: the join waits for its id.
    pub(super) fn send_started(&mut self) {
        self.joining.sends_in_flight += 1;
    }

    /// A `message:send` of this session has ended (`stored` its message, when it was).
    pub(super) fn send_ended(&mut self, stored: Option<&Message>, ctx: &mut Ctx) {
        self.joining.sends_in_flight = self.joining.sends_in_flight.saturating_sub(1);
        if let Some(message) = stored {
            if self.subscriptions.is_holding(&Topic::Lobby) {
                self.joining.own.push(message.clone());
            }
        }
        self.release_lobby_when_sent(ctx);
    }

    /// Sends the lobby frames held back while joining, minus messages the recent ones hold, but
    /// never the session's own: its `message:new` answers its send (sent from the send's
    /// answer when it reached the hub before the join's subscription did).
    fn release_lobby_when_sent(&mut self, ctx: &mut Ctx) {
        if self.joining.sends_in_flight > 0 {
            return;
        }
        let Some(mut in_recent) = self.joining.recent.take() else { return };
        let own = std::mem::take(&mut self.joining.own);
        let held: HashSet<i64> = self.subscriptions.held_versions(&Topic::Lobby).into_iter().collect();
        for message in &own {
            in_recent.remove(&message.id);
        }
        // Its own messages the join never held were published before anything it holds (the
        // mood of one among them): they go first, and count as seen, as their own frames may
        // still be on their way from the hub.
        for message in own.into_iter().filter(|m| !held.contains(&m.id)) {
            in_recent.insert(message.id);
            self.send_text(lobby::new_message_publish(message).text, ctx);
        }
        for text in self.subscriptions.release(&Topic::Lobby, Seen::Messages(in_recent)) {
            self.send_text(text, ctx);
        }
    }

    /// A player connected across UTC midnight has been seen on the new day too.
    pub(super) fn record_new_day(&mut self) {
        let now = self.state.clock.now_naive();
        let Some(player) = self.player.as_mut().filter(|p| p.seen_day != now.date()) else { return };
        player.seen_day = now.date();
        let user_id = player.id;
        self.spawn_seen(user_id, now);
    }

    /// The last time a player was seen is when they left.
    pub(super) fn record_left(&self) {
        if let Some(player) = &self.player {
            self.spawn_seen(player.id, self.state.clock.now_naive());
        }
    }

    fn spawn_seen(&self, user_id: i64, now: chrono::NaiveDateTime) {
        let store = self.state.store.clone();
        actix_web::rt::spawn(async move {
            if let Err(e) = players::seen(&store, user_id, now).await {
                tracing::warn!(user = user_id, error = %e, "could not record the user as seen");
            }
        });
    }
}
