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
        let sent = async move {
            let text = service.admit(user_id, &text).await?;
            Ok(service.post(user_id, nickname, text).await?)
        };
        ctx.spawn(sent.into_actor(self).map(move |result: Result<_, SendRefused>, act, ctx| match result {
            Ok(_) => {}
            Err(SendRefused::RateLimited(message)) => act.error(ErrorCode::RateLimited, reference, message, ctx),
            Err(SendRefused::Invalid(message)) => act.error(ErrorCode::InvalidPayload, reference, message, ctx),
            Err(SendRefused::Store(e)) => act.store_failed("the message could not be stored", &e, reference, ctx),
        }));
    }
}
