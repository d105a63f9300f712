//! `message:send`: a chat line from the session's player, admitted (validated and
//! rate-limited) and stored by the lobby service; the sender sees it as everyone does, as the
//! broadcast `message:new`.
//!
//! Never decides what a valid message or the rate is (the lobby service does) and never
//! broadcasts itself.

use actix::prelude::*;
use serde_json::Value;

use super::{Ctx, WsSession};
use crate::domain::wire::ErrorCode;
use crate::lobby::SendRefused;

impl WsSession {
    pub(super) fn message_send(&mut self, text: String, reference: Option<Value>, ctx: &mut Ctx) {
        let Some(user) = self.user.as_ref() else { return };
        let (user_id, nickname) = (user.id, user.nickname.clone());
        let service = self.state.lobby.clone();
        let text = match service.admit(user_id, &text) {
            Ok(text) => text,
            Err(SendRefused::RateLimited(message)) => {
                return self.error(ErrorCode::RateLimited, reference, message, ctx);
            }
            Err(SendRefused::Invalid(message)) => {
                return self.error(ErrorCode::InvalidPayload, reference, message, ctx)
            }
            Err(SendRefused::Store(e)) => {
                return self.store_failed("the message could not be stored", &e, reference, ctx)
            }
        };
        ctx.spawn(async move { service.post(user_id, nickname, text).await }.into_actor(self).map(
            move |result, act, ctx| {
                if let Err(e) = result {
                    act.store_failed("the message could not be stored", &e, reference, ctx);
                }
            },
        ));
    }
}
