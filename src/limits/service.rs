//! The admin's side of the usage limits: the stored studio and default player limits, one
//! player's limits, blocked flag and spend today, and a day's totals with its top players.
//! Reads and writes through the store; never decides a call (that is [`super::reserve`]).

use std::sync::Arc;

use actix::Addr;
use chrono::NaiveDate;

use super::rate::StartRate;
use super::{day_of, player_limits, seed_row, stored_limits, STUDIO};
use crate::core::clock::SharedClock;
use crate::core::config::Config;
use crate::core::metrics::Metrics;
use crate::core::process::ProcessId;
use crate::domain::limits::Level;
use crate::hub::{CloseTopic, Hub};
use crate::store::usage::{self as ledger, DayRow, LimitsChange, LimitsRow, PlayerChange};
use crate::store::{users, DbConn, Store, StoreResult};

/// One player as the admin sees it.
#[derive(Debug, Clone)]
pub struct PlayerUsage {
    pub user_id: i64,
    pub external_id: Option<String>,
    pub nickname: String,
    pub blocked: bool,
    /// The limits that apply (overrides, else the defaults): tokens, micro-dollars.
    pub daily_tokens: Option<i64>,
    pub daily_micros: Option<i64>,
    /// The player's own overrides (`None`: the default).
    pub own_daily_tokens: Option<i64>,
    pub own_daily_micros: Option<i64>,
    pub today: DayRow,
}

/// A project's per-day limits and its spend today.
#[derive(Debug, Clone)]
pub struct ProjectUsage {
    pub project_id: String,
    pub daily_tokens: Option<i64>,
    pub daily_micros: Option<i64>,
    pub today: DayRow,
}

fn project_usage(conn: &mut DbConn, project_id: &str, today: &str) -> StoreResult<ProjectUsage> {
    let own = ledger::project(conn, project_id)?;
    let day = ledger::day(conn, Level::Project.as_str(), project_id, today)?;
    Ok(ProjectUsage {
        daily_tokens: own.as_ref().and_then(|p| p.daily_tokens),
        daily_micros: own.as_ref().and_then(|p| p.daily_micros),
        project_id: project_id.to_owned(),
        today: day.unwrap_or_default(),
    })
}

/// A day's spend: the studio's, and its top players with their nicknames.
#[derive(Debug, Clone)]
pub struct DayUsage {
    pub day: NaiveDate,
    pub studio: DayRow,
    pub top: Vec<(DayRow, i64, String)>,
}

#[derive(Clone)]
pub struct UsageLimits {
    store: Store,
    clock: SharedClock,
    config: Arc<Config>,
    /// A block closes the player's sessions here at once (the other processes hear it).
    hub: Addr<Hub>,
    metrics: Arc<Metrics>,
    origin: ProcessId,
    /// Told of a changed start rate.
    start_rate: Option<Arc<StartRate>>,
}

impl UsageLimits {
    pub fn new(
        store: Store,
        clock: SharedClock,
        config: Arc<Config>,
        hub: Addr<Hub>,
        metrics: Arc<Metrics>,
        origin: ProcessId,
    ) -> Self {
        UsageLimits { store, clock, config, hub, metrics, origin, start_rate: None }
    }

    pub async fn limits(&self) -> StoreResult<LimitsRow> {
        let seed = self.config.usage;
        self.store.run(move |conn| stored_limits(conn, &seed)).await
    }

    /// Changes the keys `change` names (stored, so every process and a restart see them).
    pub async fn put_limits(&self, change: LimitsChange) -> StoreResult<LimitsRow> {
        let (seed, now) = (self.config.usage, self.clock.now_naive());
        let row = self
            .store
            .write(move |conn| {
                ledger::seed_limits(conn, &seed_row(&seed, now))?;
                let row = ledger::put_limits(conn, &change, now)?;
                row.map_or_else(|| stored_limits(conn, &seed), Ok)
            })
            .await?;
        // This process's requests follow the new start rate at once (the others' within a second).
        if let Some(rate) = &self.start_rate {
            rate.remember(super::start_rate(&row, &seed));
        }
        Ok(row)
    }

    /// The start rate whose stored value a change of the limits refreshes.
    pub fn with_start_rate(mut self, rate: Arc<StartRate>) -> Self {
        self.start_rate = Some(rate);
        self
    }

    pub async fn player(&self, user_id: i64) -> StoreResult<Option<PlayerUsage>> {
        let (seed, today) = (self.config.usage, day_of(self.clock.now_naive()));
        self.store
            .run(move |conn| {
                let Some(user) = users::find(conn, user_id)? else { return Ok(None) };
                let limits = stored_limits(conn, &seed)?;
                let own = ledger::player(conn, user_id)?;
                let (daily_tokens, daily_micros) = player_limits(conn, &limits, user_id)?;
                let day = ledger::day(conn, Level::Player.as_str(), &user_id.to_string(), &today)?;
                Ok(Some(PlayerUsage {
                    user_id,
                    external_id: user.subject,
                    nickname: user.nickname,
                    blocked: own.as_ref().is_some_and(|p| p.blocked),
                    daily_tokens,
                    daily_micros,
                    own_daily_tokens: own.as_ref().and_then(|p| p.daily_tokens),
                    own_daily_micros: own.as_ref().and_then(|p| p.daily_micros),
                    today: day.unwrap_or_default(),
                }))
            })
            .await
    }

    /// A project's per-day limits and its spend today.
    pub async fn project(&self, project_id: String) -> StoreResult<ProjectUsage> {
        let today = day_of(self.clock.now_naive());
        self.store.run(move |conn| project_usage(conn, &project_id, &today)).await
    }

    /// Changes a project's per-day limits (tokens, micro-dollars): `None` leaves a key as it
    /// is, `Some(None)` removes that limit. Applies to the next reservation on every process.
    pub async fn put_project(
        &self,
        project_id: String,
        change: (Option<Option<i64>>, Option<Option<i64>>),
    ) -> StoreResult<ProjectUsage> {
        let now = self.clock.now_naive();
        self.store
            .write(move |conn| {
                ledger::put_project(conn, &project_id, change, now)?;
                project_usage(conn, &project_id, &day_of(now))
            })
            .await
    }

    /// Changes the keys `change` names of a player; `None` when there is no such player. A
    /// block closes the player's sessions with 4003 on every process: here right after the
    /// commit, elsewhere when they hear it.
    pub async fn put_player(&self, user_id: i64, change: PlayerChange) -> StoreResult<Option<PlayerUsage>> {
        let (now, origin) = (self.clock.now_naive(), self.origin.clone());
        let (hub, metrics) = (self.hub.clone(), self.metrics.clone());
        let blocks = change.blocked == Some(true);
        let put = self.store.write_then(
            move |conn| ledger::put_player(conn, &origin, user_id, &change, now),
            // Right after the commit, even when the caller is gone.
            move |put| {
                let Some((_, newly_blocked)) = put else { return false };
                if blocks {
                    hub.do_send(CloseTopic::blocked(user_id));
                }
                if newly_blocked {
                    metrics.players_blocked.with_label_values(&["admin"]).inc();
                    tracing::info!(user = user_id, "player blocked by the admin");
                }
                true
            },
        );
        if !put.await? {
            return Ok(None);
        }
        self.player(user_id).await
    }

    /// Whether the player is blocked.
    pub async fn is_blocked(&self, user_id: i64) -> StoreResult<bool> {
        self.store.run(move |conn| ledger::is_blocked(conn, user_id)).await
    }

    /// `day` (today when `None`): the studio's totals and the `limit` players who spent most.
    pub async fn usage(&self, day: Option<NaiveDate>, limit: i64) -> StoreResult<DayUsage> {
        let day = day.unwrap_or_else(|| self.clock.now_naive().date());
        let key = day.format("%Y-%m-%d").to_string();
        self.store
            .run(move |conn| {
                let studio = ledger::day(conn, Level::Studio.as_str(), STUDIO, &key)?.unwrap_or_default();
                let rows = ledger::top(conn, Level::Player.as_str(), &key, limit)?;
                let ids: Vec<i64> = rows.iter().filter_map(|r| r.owner.parse().ok()).collect();
                let names: std::collections::HashMap<i64, String> = users::nicknames(conn, &ids)?.into_iter().collect();
                let top = rows
                    .into_iter()
                    .filter_map(|r| {
                        let id: i64 = r.owner.parse().ok()?;
                        let name = names.get(&id).cloned().unwrap_or_default();
                        Some((r, id, name))
                    })
                    .collect();
                Ok(DayUsage { day, studio, top })
            })
            .await
    }
}
