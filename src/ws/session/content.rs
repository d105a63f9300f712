//! `content:request`, `content:subscribe` and `content:unsubscribe`: the session subscribes
//! to the item before its snapshot is read, answers `content:snapshot` (the direct reply),
//! then the updates held back meanwhile.
//!
//! A session holds at most `LOREWIRE_MAX_SUBSCRIPTIONS` content subscriptions at once.
//!
//! Never validates or generates content itself (the content service does) and never orders
//! frames but through its subscriptions.

use actix::prelude::*;
use serde_json::Value;

use super::{Ctx, WsSession};
use crate::content::{self, Content, ContentKind, ContentScope, Requester, SHARED_OWNER};
use crate::domain::wire::{ContentRequest, ErrorCode, ServerFrame, Typed};
use crate::hub::Topic;
use crate::store::StoreError;
use crate::ws::subscriptions::Seen;

impl WsSession {
    pub(super) fn content_request(&mut self, request: ContentRequest, reference: Option<Value>, ctx: &mut Ctx) {
        let ContentRequest { kind, subject_id, context, regenerate, scope } = request;
        let mut request = match content::validate(kind, subject_id, context.as_ref(), regenerate) {
            Ok(r) => r,
            Err(e) => return self.error(ErrorCode::InvalidPayload, reference, e.to_string(), ctx),
        };
        if let Some(player) = &self.player {
            tracing::debug!(
                session = self.id,
                user = player.id,
                kind = kind.as_str(),
                subject_id,
                regenerate,
                "content request"
            );
        }
        request.scope = scope;
        let Some(by) = self.requester() else {
            return self.error(ErrorCode::Unauthorized, reference, "the first frame must be session:start", ctx);
        };
        let topic = self.content_topic(kind, subject_id, scope);
        if !self.room_for(&topic, &reference, ctx) {
            return;
        }
        let watched = self.subscriptions.contains(&topic);
        self.watch(topic.clone());
        let service = self.state.content.clone();
        ctx.spawn(async move { service.request(request, by).await }.into_actor(self).map(move |result, act, ctx| {
            match result {
                Ok(content) => act.snapshot(topic, reference, content, ctx),
                Err(StoreError::OverLimit(refusal)) => {
                    act.keep_or_drop(watched, &topic, ctx);
                    let code = ErrorCode::BudgetExceeded;
                    act.send(ServerFrame::error_at(code, reference, refusal.message, refusal.level), ctx);
                }
                Err(StoreError::RateLimited(refusal)) => {
                    act.keep_or_drop(watched, &topic, ctx);
                    let code = ErrorCode::RateLimited;
                    act.send(ServerFrame::error_at(code, reference, refusal.message, refusal.level), ctx);
                }
                // A refused change leaves the item as it was, and a session watching it before
                // goes on watching it (with what arrived meanwhile).
                Err(e @ StoreError::ServerOnly) if watched => {
                    act.store_failed("the request was refused", &e, reference, ctx);
                    for text in act.subscriptions.release(&topic, Seen::Upto(0)) {
                        act.send_text(text, ctx);
                    }
                }
                Err(e) => {
                    act.unwatch_if_holding(&topic);
                    act.store_failed("the request could not be stored", &e, reference, ctx);
                }
            }
        }));
    }

    /// After a refused request: a session that watched the item before goes on watching it
    /// (with what arrived meanwhile); one that did not is unsubscribed again.
    fn keep_or_drop(&mut self, watched: bool, topic: &Topic, ctx: &mut Ctx) {
        if watched {
            for text in self.subscriptions.release(topic, Seen::Upto(0)) {
                self.send_text(text, ctx);
            }
        } else {
            self.unwatch_if_holding(topic);
        }
    }

    pub(super) fn content_subscribe(
        &mut self,
        kind: ContentKind,
        subject_id: u64,
        scope: ContentScope,
        reference: Option<Value>,
        ctx: &mut Ctx,
    ) {
        let Some(by) = self.requester() else {
            return self.error(ErrorCode::Unauthorized, reference, "the first frame must be session:start", ctx);
        };
        let topic = self.content_topic(kind, subject_id, scope);
        if !self.room_for(&topic, &reference, ctx) {
            return;
        }
        self.watch(topic.clone());
        let service = self.state.content.clone();
        ctx.spawn(async move { service.get(kind, subject_id, scope, by).await }.into_actor(self).map(
            move |result, act, ctx| match result {
                Ok(Some(content)) => act.snapshot(topic, reference, content, ctx),
                Ok(None) => {
                    act.unwatch_if_holding(&topic);
                    let message = format!("no {} with subject_id {subject_id}", kind.as_str());
                    act.error(ErrorCode::NotFound, reference, message, ctx);
                }
                Err(e) => {
                    act.unwatch_if_holding(&topic);
                    act.store_failed("the item could not be read", &e, reference, ctx);
                }
            },
        ));
    }

    /// Who the session asks as: the game server when it started with a server-role JWT, else
    /// its player (`None` before `session:start`).
    fn requester(&self) -> Option<Requester> {
        let server = self.login.as_ref().is_some_and(|login| login.server);
        self.player.as_ref().map(|player| Requester { user_id: Some(player.id), server })
    }

    /// The topic of the item a frame names: the shared one, or (scope `player`) the session's
    /// player's own, which no other player's session can name.
    pub(super) fn content_topic(&self, kind: ContentKind, subject_id: u64, scope: ContentScope) -> Topic {
        let owner = match scope {
            ContentScope::Shared => SHARED_OWNER,
            ContentScope::Player => self.player.as_ref().map_or(SHARED_OWNER, |player| player.id),
        };
        Topic::Content(kind, subject_id, owner)
    }

    /// Whether the session may subscribe to `topic`: one it holds already costs nothing; at
    /// `LOREWIRE_MAX_SUBSCRIPTIONS` a new one is refused (answered, nothing subscribed).
    fn room_for(&mut self, topic: &Topic, reference: &Option<Value>, ctx: &mut Ctx) -> bool {
        let max = self.state.config.max_subscriptions;
        if self.subscriptions.contains(topic) || self.subscriptions.contents() < max {
            return true;
        }
        self.state.metrics.subscriptions_refused.inc();
        tracing::debug!(session = self.id, max, "content subscription refused at the cap");
        let message = format!(
            "at most {max} content subscriptions per session; send content:unsubscribe for one you no longer need"
        );
        self.error(ErrorCode::RateLimited, reference.clone(), message, ctx);
        false
    }

    /// Sends the snapshot (the direct reply), then any newer update that arrived meanwhile.
    fn snapshot(&mut self, topic: Topic, reference: Option<Value>, content: Content, ctx: &mut Ctx) {
        let seen = Seen::Upto(content.version);
        self.send(Typed::ContentSnapshot { reference, content }.into(), ctx);
        for text in self.subscriptions.release(&topic, seen) {
            self.send_text(text, ctx);
        }
    }
}
