//! `session:start`: the player behind the socket (started or resumed by token), the ack, and
//! the lobby join that follows it (`lobby:history`, `presence:state`, then the lobby frames
//! held back meanwhile); when the player was last seen (a new UTC day, the socket closing).
//!
//! Never decides a player rule (nicknames, tokens and variants are `domain::players`) and
//! never touches the store but through `crate::players` and the chat.

use std::collections::HashSet;

use actix::prelude::*;
use serde_json::Value;

use super::{Ctx, SessionPlayer, WsSession};
use crate::domain::lobby::Message;
use crate::domain::players::{self as player_rules, Variant};
use crate::domain::wire::{ErrorCode, Typed};
use crate::hub::Topic;
use crate::lobby;
use crate::players;
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
    pub(super) fn start_session(
        &mut self,
        nickname: String,
        token: Option<String>,
        reference: Option<Value>,
        ctx: &mut Ctx,
    ) {
        if self.player.is_some() {
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
                    act.player = Some(SessionPlayer {
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
                Err(e) => act.store_failed("could not start the session", &e, reference, ctx),
            },
        ));
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
        for text in self.subscriptions.release(&Topic::Lobby, Seen::Messages(in_recent)) {
            self.send_text(text, ctx);
        }
        let mut sent_here = HashSet::new();
        for message in own.into_iter().filter(|m| !held.contains(&m.id)) {
            sent_here.insert(message.id);
            self.send_text(lobby::new_message_publish(message).text, ctx);
        }
        if !sent_here.is_empty() {
            // Its own frame may still be on its way from the hub: it counts as seen.
            self.subscriptions.release(&Topic::Lobby, Seen::Messages(sent_here));
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
