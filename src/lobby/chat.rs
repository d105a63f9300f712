//! The chat: the rules of a lobby message (validation, the per-user rate over all the user's
//! tabs, and over every process when the backplane keeps shared windows), its write together
//! with its durable mood job, and the recent messages sent on join as `lobby:history`. Runs its
//! store calls on the blocking pool; never calls the LLM (the mood job does).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::frames::new_message_publish;
use super::presence::{Join, Leave, Page, PendingState, Presence, PresencePage};
use crate::backplane::Backplane;
use crate::core::clock::SharedClock;
use crate::core::metrics::Metrics;
use crate::core::moderation::ChatModeration;
use crate::core::process::ProcessId;
use crate::core::rate_limit::Rate;
use crate::core::rate_limit::RateLimiter;
use crate::deps::Deps;
use crate::domain::lobby::{validate_text, Message, MessageTextError};
use crate::domain::moderation::{mask, Surface};
use crate::hub::{Hub, SessionId};
use crate::jobs::JobsAvailable;
use crate::moderation::Moderation;
use crate::store::messages::{self, ChatLine, MessageRow};
use crate::store::{Store, StoreError};

/// Why a `message:send` was refused.
#[derive(Debug, thiserror::Error)]
pub enum SendRefused {
    #[error(transparent)]
    Invalid(#[from] MessageTextError),
    #[error("{0}")]
    RateLimited(String),
    /// Flagged by moderation with `LOREWIRE_MODERATION_CHAT=block`.
    #[error("your message was not sent: it breaks the chat rules")]
    Moderated,
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Clone)]
pub struct Chat {
    origin: ProcessId,
    store: Store,
    clock: SharedClock,
    hub: Addr<Hub>,
    jobs: Recipient<JobsAvailable>,
    presence: Addr<Presence>,
    metrics: Arc<Metrics>,
    recent_limit: i64,
    /// `LOREWIRE_QUEUE_LIMIT`: a message whose mood job would pass it is refused.
    queue_limit: i64,
    /// Held before the join reaches the presence actor, and between the join and its read of the recent messages
    /// read (tests only).
    join_hold: Duration,
    recent_hold: Duration,
    rate: Rate,
    /// This process's own windows: the rate when the backplane keeps none or cannot answer.
    limiter: Arc<Mutex<RateLimiter>>,
    backplane: Arc<dyn Backplane>,
    moderation: Moderation,
}

/// A message admitted to the lobby: its text as it will be stored and sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    pub text: String,
    /// Its listed words were replaced by `***`.
    pub masked: bool,
}

impl Chat {
    /// The chat of the lobby whose presence `presence` keeps; mood jobs are woken on `jobs`, the
    /// rate is shared over `backplane` when it keeps windows.
    pub fn new(
        deps: &Deps,
        jobs: Recipient<JobsAvailable>,
        presence: Addr<Presence>,
        backplane: Arc<dyn Backplane>,
        moderation: Moderation,
    ) -> Self {
        let Deps { process: origin, store, clock, hub, metrics, config } = deps.clone();
        Chat {
            origin,
            store,
            clock,
            hub,
            jobs,
            presence,
            metrics,
            recent_limit: i64::from(config.lobby_recent),
            queue_limit: i64::try_from(config.queue_limit).unwrap_or(i64::MAX),
            join_hold: config.test_holds.lobby_join,
            recent_hold: config.test_holds.lobby_recent,
            rate: config.chat_rate,
            limiter: Arc::new(Mutex::new(RateLimiter::new(config.chat_rate))),
            backplane,
            moderation,
        }
    }

    pub fn presence(&self) -> &Addr<Presence> {
        &self.presence
    }

    /// Enters the lobby: the recent messages read after the subscription is in place (so every message
    /// is in the recent messages or arrives as `message:new`, or both), and the `presence:state` to come.
    pub async fn join(&self, join: Join) -> Result<(Vec<Message>, PendingState), StoreError> {
        if !self.join_hold.is_zero() {
            tokio::time::sleep(self.join_hold).await;
        }
        let state = self.presence.send(join).await.map_err(|_| StoreError::Canceled)?;
        if !self.recent_hold.is_zero() {
            tokio::time::sleep(self.recent_hold).await;
        }
        let limit = self.recent_limit;
        let rows = self.store.run(move |conn| messages::recent(conn, limit)).await?;
        Ok((rows.iter().map(MessageRow::message).collect(), state))
    }

    /// The next page of everyone online after `after_user_id`.
    pub async fn page(&self, after_user_id: i64) -> Result<PresencePage, StoreError> {
        self.presence.send(Page { after_user_id }).await.map_err(|_| StoreError::Canceled)
    }

    pub fn leave(&self, session: SessionId) {
        self.presence.do_send(Leave { session });
    }

    /// Validates, rate-limits (across all the player's tabs, and their processes when the
    /// backplane keeps the window) and moderates a message of `user_id`; the text to store.
    pub async fn admit(&self, user_id: i64, raw: &str) -> Result<Admitted, SendRefused> {
        let text = validate_text(raw)?;
        let shared = self.backplane.admit(format!("chat:{user_id}"), self.rate.count, self.rate.per).await;
        let allowed = match shared {
            Some(allowed) => allowed,
            None => self.limiter.lock().unwrap_or_else(|e| e.into_inner()).check(user_id, Instant::now()),
        };
        if let Err(wait) = allowed {
            self.metrics.lobby_rate_limited.inc();
            let secs = wait.as_secs_f64().max(0.1);
            return Err(SendRefused::RateLimited(format!("too many messages; try again in {secs:.1} s")));
        }
        let verdict = self.moderation.check(Surface::Chat, Some(user_id), &text).await;
        match (verdict.flagged, self.moderation.chat_mode()) {
            (false, _) => Ok(Admitted { text, masked: false }),
            (true, ChatModeration::Block) => Err(SendRefused::Moderated),
            // The endpoint names no words to mask: then the whole line is masked.
            (true, ChatModeration::Mask) if verdict.spans.is_empty() => {
                Ok(Admitted { text: "***".into(), masked: true })
            }
            (true, ChatModeration::Mask) => Ok(Admitted { text: mask(&text, &verdict.spans), masked: true }),
        }
    }

    /// Stores an admitted message with its mood job, then tells everyone and wakes the job worker.
    pub async fn post(&self, user_id: i64, nickname: String, admitted: Admitted) -> Result<Message, StoreError> {
        let Admitted { text, masked } = admitted;
        let now = self.clock.now_naive();
        let origin = self.origin.clone();
        let queue_limit = self.queue_limit;
        let hub = self.hub.clone();
        // `message:new` goes to the hub on the writer's thread right after the commit, before
        // any later transaction (the mood job's claim and end among them) can commit, so no
        // session hears a message's mood before the message.
        let message = self
            .store
            .write_then(
                move |conn| {
                    messages::insert(
                        conn,
                        &origin,
                        ChatLine { user_id, nickname: &nickname, text: &text, masked },
                        queue_limit,
                        now,
                    )
                },
                move |row| {
                    let message = row.message();
                    hub.do_send(new_message_publish(message.clone()));
                    message
                },
            )
            .await?;
        self.metrics.lobby_messages.inc();
        tracing::info!(message = message.id, user = user_id, "lobby message");
        self.jobs.do_send(JobsAvailable);
        Ok(message)
    }
}
