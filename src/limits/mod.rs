//! Usage limits at three levels (PROTOCOL §5): before an upstream call its upper bound is
//! reserved at the player's and the studio's level of the UTC day (the project's budget is the
//! run admission's), atomically, over the store's ledger; after it the exact usage is settled
//! and the rest released. Sync functions over a connection, so a feature calls them inside the
//! transaction that stores what the call is for.
//!
//! Knows which levels apply and in which order they refuse, never which feature spends.

pub mod observe;
pub mod rate;
pub mod service;

use chrono::NaiveDateTime;

use crate::core::usage::UsageConfig;
use crate::domain::limits::{Level, Refusal};
use crate::domain::money::Price;
use crate::domain::runs::Usage;
use crate::domain::upstream::{CallFailure, UpstreamFailure};
use crate::store::usage::{self as ledger, LimitsRow, NewHold};
use crate::store::{billing, DbConn, StoreResult};
use observe::Charged;

/// The studio's single owner in the ledger.
const STUDIO: &str = "";

/// The `user_id` a charge of the game server's own request (the admin token's, no player) is
/// held under: it counts for the studio only.
pub const SERVER: i64 = 0;

/// One call (or a call and its re-ask) about to be made.
#[derive(Debug, Clone, Copy)]
pub struct Spend<'a> {
    /// Who it is charged to.
    pub user_id: i64,
    pub model: &'a str,
    /// What the charge is for (`content:<id>`, `mood:<id>`, `run:<id>`): its settlement finds it.
    pub target: &'a str,
    /// Upper bounds: every prompt token, and the output tokens asked for.
    pub prompt_tokens: i64,
    pub output_tokens: i64,
}

/// The UTC day a charge belongs to, as the ledger keys it.
pub fn day_of(now: NaiveDateTime) -> String {
    now.date().format("%Y-%m-%d").to_string()
}

/// The stored limits, the settings' seed when none are stored yet.
pub fn stored_limits(conn: &mut DbConn, seed: &UsageConfig) -> StoreResult<LimitsRow> {
    Ok(ledger::limits(conn)?.unwrap_or_else(|| seed_row(seed, NaiveDateTime::default())))
}

/// The stored per-player start rate (the settings' when the stored one cannot be read).
pub fn start_rate(row: &LimitsRow, seed: &UsageConfig) -> crate::core::rate_limit::Rate {
    row.player_llm_rate.parse().unwrap_or(seed.player_llm_rate)
}

/// The row the settings seed.
pub fn seed_row(seed: &UsageConfig, now: NaiveDateTime) -> LimitsRow {
    LimitsRow {
        id: 1,
        studio_daily_tokens: seed.studio_daily_tokens,
        studio_daily_micros: seed.studio_daily_micros,
        player_daily_tokens: seed.player_daily_tokens,
        player_daily_micros: seed.player_daily_micros,
        player_llm_rate: seed.player_llm_rate.to_string(),
        updated_at: now,
    }
}

/// A player's limits: its overrides, else the defaults; (tokens, micro-dollars).
pub fn player_limits(conn: &mut DbConn, limits: &LimitsRow, user_id: i64) -> StoreResult<(Option<i64>, Option<i64>)> {
    let own = ledger::player(conn, user_id)?;
    let tokens = own.as_ref().and_then(|p| p.daily_tokens).or(limits.player_daily_tokens);
    let micros = own.as_ref().and_then(|p| p.daily_micros).or(limits.player_daily_micros);
    Ok((tokens, micros))
}

/// Reserves `spend` at the player's level, then the studio's (both recorded even without a
/// limit); a refusal names the first level that refuses and leaves nothing reserved.
pub fn reserve(
    conn: &mut DbConn,
    seed: &UsageConfig,
    spend: &Spend<'_>,
    now: NaiveDateTime,
) -> StoreResult<Result<(), Refusal>> {
    let limits = stored_limits(conn, seed)?;
    let player = player_limits(conn, &limits, spend.user_id)?;
    let studio = (limits.studio_daily_tokens, limits.studio_daily_micros);
    let price = billing::price(conn, spend.model)?;
    let tokens = spend.prompt_tokens.saturating_add(spend.output_tokens);
    let micros = worst_case(price, spend);
    let day = day_of(now);
    let owner = spend.user_id.to_string();
    for (level, (token_limit, micro_limit)) in [(Level::Player, player), (Level::Studio, studio)] {
        // The game server's own requests (no player) count for the studio only.
        if level == Level::Player && spend.user_id == SERVER {
            continue;
        }
        if micro_limit.is_some() && price.is_none() {
            undo(conn, level, &owner, &day, tokens, micros, now)?;
            return Ok(Err(Refusal::no_price(level, spend.model)));
        }
        let key = if level == Level::Player { owner.as_str() } else { STUDIO };
        if !ledger::reserve(conn, level.as_str(), key, &day, tokens, micros, (token_limit, micro_limit), now)? {
            undo(conn, level, &owner, &day, tokens, micros, now)?;
            let unit = match token_limit {
                Some(_) if micro_limit.is_none() => "token",
                None => "USD",
                Some(_) => "token or USD",
            };
            return Ok(Err(Refusal::over(level, unit)));
        }
    }
    let hold = NewHold {
        target: spend.target,
        user_id: spend.user_id,
        studio: true,
        day: &day,
        model: spend.model,
        tokens,
        micros,
        created_at: now,
    };
    ledger::add_hold(conn, &hold)?;
    Ok(Ok(()))
}

/// Whether the player's level alone would refuse `spend` now (read only: for a request another
/// level refuses anyway, to name the first level that refuses).
pub fn player_refuses(
    conn: &mut DbConn,
    seed: &UsageConfig,
    spend: &Spend<'_>,
    now: NaiveDateTime,
) -> StoreResult<Option<Refusal>> {
    let limits = stored_limits(conn, seed)?;
    let (token_limit, micro_limit) = player_limits(conn, &limits, spend.user_id)?;
    let price = billing::price(conn, spend.model)?;
    if micro_limit.is_some() && price.is_none() {
        return Ok(Some(Refusal::no_price(Level::Player, spend.model)));
    }
    let day = ledger::day(conn, Level::Player.as_str(), &spend.user_id.to_string(), &day_of(now))?.unwrap_or_default();
    let tokens = day.spent_tokens + day.reserved_tokens + spend.prompt_tokens.saturating_add(spend.output_tokens);
    let micros = day.spent_micros + day.reserved_micros + worst_case(price, spend);
    let over = token_limit.is_some_and(|l| tokens > l) || micro_limit.is_some_and(|l| micros > l);
    Ok(over.then(|| Refusal::over(Level::Player, "usage")))
}

/// Whether `target` holds a reservation (a run's attempt reserved before it was made).
pub fn holds(conn: &mut DbConn, target: &str) -> StoreResult<bool> {
    Ok(!ledger::holds(conn, target)?.is_empty())
}

/// Gives back what the levels before `refused` reserved (the studio refuses after the player).
fn undo(
    conn: &mut DbConn,
    refused: Level,
    owner: &str,
    day: &str,
    tokens: i64,
    micros: i64,
    now: NaiveDateTime,
) -> StoreResult<()> {
    if refused == Level::Studio && owner != SERVER.to_string() {
        ledger::settle(conn, Level::Player.as_str(), owner, day, (tokens, micros), (0, 0), now)?;
    }
    Ok(())
}

fn worst_case(price: Option<Price>, spend: &Spend<'_>) -> i64 {
    price.map_or(0, |p| p.worst_case(spend.prompt_tokens.max(0) as u64, spend.output_tokens.max(0) as u64))
}

/// What a settled call used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Used {
    /// No call was made: the holds are released.
    Nothing,
    /// The provider reported this.
    Reported(Usage),
    /// A call was made and its usage is unknown: the holds are charged as they are.
    Unknown,
}

impl Used {
    /// What two calls for one target used together: unknown if either's is.
    pub fn and(self, other: Used) -> Used {
        match (self, other) {
            (Used::Nothing, x) | (x, Used::Nothing) => x,
            (Used::Reported(a), Used::Reported(b)) => Used::Reported(a.add(&b)),
            _ => Used::Unknown,
        }
    }
}

/// What a structured call that failed used: nothing when no call went out (no settings, the
/// circuit open, throttled), else not known.
pub fn used_by_failure(failure: CallFailure) -> Used {
    match failure {
        CallFailure::NoConfig | CallFailure::CircuitOpen | CallFailure::Upstream(UpstreamFailure::RateLimited) => {
            Used::Nothing
        }
        _ => Used::Unknown,
    }
}

/// Settles every hold of `target`: the usage is charged (at the day and levels of its first
/// hold) and the holds released. Nothing held: nothing to do. Says what it charged at each level.
pub fn settle(conn: &mut DbConn, target: &str, used: Used, now: NaiveDateTime) -> StoreResult<Charged> {
    let holds = ledger::take_holds(conn, target)?;
    let mut charge = match used {
        Used::Nothing => Some((0, 0)),
        Used::Reported(usage) => {
            let model = holds.first().map(|h| h.model.clone()).unwrap_or_default();
            let micros = billing::price(conn, &model)?.map_or(0, |p| p.cost(&usage));
            let tokens = usage.input_tokens + usage.output_tokens + usage.cache_read_tokens + usage.cache_write_tokens;
            Some((i64::try_from(tokens).unwrap_or(i64::MAX), micros))
        }
        Used::Unknown => None,
    };
    let mut charged = Charged::default();
    for hold in holds {
        let this = charge.take().unwrap_or(if used == Used::Unknown { (hold.tokens, hold.micros) } else { (0, 0) });
        let held = (hold.tokens, hold.micros);
        let owner = hold.user_id.to_string();
        if hold.user_id != SERVER {
            ledger::settle(conn, Level::Player.as_str(), &owner, &hold.day, held, this, now)?;
            charged.add(Level::Player, this);
        }
        if hold.studio {
            ledger::settle(conn, Level::Studio.as_str(), STUDIO, &hold.day, held, this, now)?;
            charged.add(Level::Studio, this);
        }
    }
    Ok(charged)
}
