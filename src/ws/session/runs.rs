//! `generate:start` and `generate:abort`: the run's admission (run off the session's mailbox,
//! guarded by [`Waiting`] so a session that stops meanwhile cannot leave a run it was counted
//! on), the `run:queued` reply and the catch-up that follows it, and detaching the session
//! from its runs.
//!
//! Never decides admission, dedup, budget or the queue limit (the run service does) and never
//! orders frames but through its subscriptions.

use actix::prelude::*;
use serde_json::Value;

use super::{Ctx, WsSession};
use crate::domain::wire::{ErrorCode, GenerateStart, ServerFrame, Typed};
use crate::hub::{SessionId, Topic};
use crate::runs::service::{Left, RunRefused, RunService, Started, Waiter};
use crate::runs::{self, RunErrorCode, RunStatus};
use crate::ws::subscriptions::Seen;

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

impl WsSession {
    pub(super) fn generate_start(&mut self, g: GenerateStart, reference: Option<Value>, ctx: &mut Ctx) {
        let request = match runs::validate(&g.project_id, &g.action, &g.input, g.skip_cache) {
            Ok(r) => r,
            Err(e) => return self.error(ErrorCode::InvalidPayload, reference, e.to_string(), ctx),
        };
        let Some(by) = self.player.as_ref().map(|p| p.id) else {
            return self.error(ErrorCode::Unauthorized, reference, "send session:start first", ctx);
        };
        let service = self.state.runs.clone();
        let session = self.id;
        // The admission runs to its end even if this session stops meanwhile (a stopping actor
        // drops its futures, not the transaction in flight); a run it was counted on then
        // detaches again when the unclaimed `Waiting` is dropped, so it cannot escape abort.
        let (answer, answered) = tokio::sync::oneshot::channel();
        actix_web::rt::spawn(async move {
            let result = service.start(request, Waiter::Session(session), by).await;
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
                        code: RunErrorCode::NoConfig,
                        message: row.error.unwrap_or_default(),
                    };
                    act.send(frame.into(), ctx);
                }
                Err(RunRefused::BudgetExceeded(refusal)) => act.send(
                    ServerFrame::error_at(ErrorCode::BudgetExceeded, reference, refusal.message, refusal.level),
                    ctx,
                ),
                Err(RunRefused::Overloaded(message)) => act.error(ErrorCode::Overloaded, reference, message, ctx),
                Err(RunRefused::RateLimited(refusal)) => act.send(
                    ServerFrame::error_at(ErrorCode::RateLimited, reference, refusal.message, refusal.level),
                    ctx,
                ),
                Err(RunRefused::TooManyUnwatched(message)) => {
                    act.error(ErrorCode::RateLimited, reference, message, ctx)
                }
                Err(RunRefused::Store(e)) => act.store_failed("the run could not be stored", &e, reference, ctx),
            }
        }));
    }

    /// Sends the reply, then the run's frames so far, then what arrived meanwhile.
    fn run_catch_up(&mut self, topic: Topic, run_id: String, reply: ServerFrame, ctx: &mut Ctx) {
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

    /// Detaches the session from the run and answers once that (and the abort it may cause)
    /// is committed, so a client that reads the run next sees what it was told.
    pub(super) fn generate_abort(&mut self, run_id: String, reference: Option<Value>, ctx: &mut Ctx) {
        if !self.runs.remove(&run_id) {
            let message = format!("this session is not waiting on run `{run_id}`");
            return self.error(ErrorCode::NotFound, reference, message, ctx);
        }
        self.unwatch(&Topic::Run(run_id.clone()));
        let (service, session, id) = (self.state.runs.clone(), self.id, run_id.clone());
        // Run to its end even if the session stops meanwhile: the detach must not be lost.
        let (answer, answered) = tokio::sync::oneshot::channel();
        actix_web::rt::spawn(async move {
            let _ = answer.send(service.leave(id, session, true).await);
        });
        ctx.spawn(answered.into_actor(self).map(move |left, act, ctx| {
            let message = match left {
                Ok(Ok(Left::Ended(row))) if row.run_status() == Some(RunStatus::Aborted) => "the run was aborted",
                Ok(Ok(_)) => "this session no longer waits on the run",
                Ok(Err(e)) => return act.store_failed("the run could not be aborted", &e, reference, ctx),
                Err(_) => return act.error(ErrorCode::Overloaded, reference, "the run could not be aborted", ctx),
            };
            let frame = Typed::RunError { reference, run_id, code: RunErrorCode::Aborted, message: message.into() };
            act.send(frame.into(), ctx);
        }));
    }

    /// The session closed: it waits on none of its runs any more.
    pub(super) fn detach_runs(&mut self) {
        for run_id in std::mem::take(&mut self.runs) {
            self.detach(run_id);
        }
    }

    fn detach(&self, run_id: String) {
        let (service, session) = (self.state.runs.clone(), self.id);
        actix_web::rt::spawn(async move { service.detach(run_id, session).await });
    }
}
