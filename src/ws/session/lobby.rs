//! `message:send`: a chat line from the session's player, admitted (validated and
//! rate-limited) and stored by the chat; the sender sees it as everyone does, as the
//! broadcast `message:new`. `presence:list`: the next page of everyone online, as the lobby
//! gives it, answered as `presence:page`.
//!
//! Never decides what a valid message or the rate is (the chat does), never keeps a
//! copy of who is online, and never broadcasts itself.

use actix::prelude::*;
use serde_json::Value;

use super::{Ctx, WsSession};
use crate::domain::wire::{ErrorCode, Typed};
use crate::lobby::SendRefused;

impl WsSession {
    pub(super) fn message_send(&mut self, text: String, reference: Option<Value>, ctx: &mut Ctx) {
        let Some(player) = self.player.as_ref() else { return };
        let (user_id, nickname) = (player.id, player.nickname.clone());
        let service = self.state.chat.clone();
        let sent = async move {
            let admitted = service.admit(user_id, &text).await?;
            Ok(service.post(user_id, nickname, admitted).await?)
        };
        self.send_started();
        ctx.spawn(sent.into_actor(self).map(move |result: Result<_, SendRefused>, act, ctx| {
            act.send_ended(result.as_ref().ok(), ctx);
            match result {
                Ok(_) => {}
                Err(SendRefused::RateLimited(message)) => act.error(ErrorCode::RateLimited, reference, message, ctx),
                Err(e @ SendRefused::Moderated) => act.error(ErrorCode::Moderated, reference, e.to_string(), ctx),
                Err(SendRefused::Invalid(e)) => act.error(ErrorCode::InvalidPayload, reference, e.to_string(), ctx),
                Err(SendRefused::Store(e)) => act.store_failed("the message could not be stored", &e, reference, ctx),
            }
        }));
    }

    pub(super) fn presence_list(&mut self, after_user_id: u64, reference: Option<Value>, ctx: &mut Ctx) {
        // Ids above every user_id simply get the empty last page.
        let after_user_id = i64::try_from(after_user_id).unwrap_or(i64::MAX);
        let service = self.state.chat.clone();
        ctx.spawn(async move { service.page(after_user_id).await }.into_actor(self).map(move |result, act, ctx| {
            match result {
                Ok(page) => {
                    let frame = Typed::PresencePage {
                        reference,
                        online: page.online,
                        next_after_user_id: page.next_after_user_id,
                    };
                    act.send(frame.into(), ctx);
                }
                Err(e) => act.store_failed("the list of players online could not be read", &e, reference, ctx),
            }
        }));
    }
}
