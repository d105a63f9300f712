//! Usage limits at three levels (PROTOCOL §5): before an upstream call its upper bound is
//! reserved at the player's, the project's (a run's: its per-day limits; its budget is the run
//! admission's) and the studio's level of the UTC day, atomically, over the store's ledger;
//! after it the exact usage is settled and the rest released. Sync functions over a connection, so a feature calls them inside the
//! transaction that stores what the call is for.
//!
//! Knows which levels apply and in which order they refuse, never which feature spends.

pub mod observe;
pub mod rate;
pub mod service;

use std::rc::Rc;
use std::sync::{Arc, Mutex};

use chrono::NaiveDateTime;

use crate::core::usage::UsageConfig;
use crate::domain::limits::{Level, Refusal};
use crate::domain::money::Price;
use crate::domain::runs::Usage;
use crate::domain::upstream::{CallFailure, UpstreamFailure};
use crate::store::ahead::{self, Planned, PlannedAccount};
use crate::store::usage::{self as ledger, Account, LimitsRow, NewHold};
use crate::store::{behind, billing, DbConn, StoreResult};
use observe::Charged;

/// A level's daily limits: tokens, micro-dollars (`None`: no limit).
type DailyLimits = (Option<i64>, Option<i64>);

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
    /// The project it is charged to (a run's), if any.
    pub project: Option<&'a str>,
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

/// Reserves `spend` at the player's, the project's (when it names one) and the studio's level
/// (each recorded even without a limit) in one conditional UPDATE; a refusal names the first
/// level that refuses (player, project, studio) and leaves nothing reserved.
pub fn reserve(
    conn: &mut DbConn,
    seed: &UsageConfig,
    spend: &Spend<'_>,
    now: NaiveDateTime,
) -> StoreResult<Result<(), Refusal>> {
    let (terms, bound) = terms_and_bound(conn, seed, spend)?;
    reserve_bound(conn, &terms, spend, bound, now)
}

/// What [`reserve`] of `spend` would reserve in the writer's batch, so that it may be reserved
/// ahead of it ([`crate::store::ahead`]): its accounts, day and bound. `None` when it reserves
/// nowhere, or would refuse whatever the ledger holds (a USD limit without a price).
pub fn plan(
    conn: &mut DbConn,
    seed: &UsageConfig,
    spend: &Spend<'_>,
    now: NaiveDateTime,
) -> StoreResult<Option<Planned>> {
    let (terms, bound) = terms_and_bound(conn, seed, spend)?;
    let owner = spend.user_id.to_string();
    let levels = levels(&terms, spend, &owner, behind::deferring());
    if levels.is_empty() || levels.iter().any(|l| l.2 .1.is_some() && terms.price.is_none()) {
        return Ok(None);
    }
    let accounts = levels.iter().map(|l| PlannedAccount::of(&account(l, spend))).collect();
    Ok(Some(Planned { accounts, day: day_of(now), bound, at: now }))
}

/// The terms of `spend` and its bound: (tokens, micro-dollars).
fn terms_and_bound(conn: &mut DbConn, seed: &UsageConfig, spend: &Spend<'_>) -> StoreResult<(Terms, (i64, i64))> {
    let terms = terms(conn, seed, spend)?;
    // Any enabled upstream may answer, and is charged at its own model's price: the bound is
    // priced at the dearest of them, so no answer can cost more than was reserved.
    let dearest = match terms.price {
        Some(price) => Some(ledger::upstream_prices(conn)?.iter().fold(price, |p, row| p.max(&row.price()))),
        None => None,
    };
    let bound = (spend.prompt_tokens.saturating_add(spend.output_tokens), worst_case(dearest, spend));
    Ok((terms, bound))
}

/// The levels a reservation of `spend` reserves at, in the order they refuse: the player's
/// (`owner`: its id), the project's, the studio's (left out when `defer_studio`).
fn levels<'a>(
    terms: &Terms,
    spend: &Spend<'a>,
    owner: &'a str,
    defer_studio: bool,
) -> Vec<(Level, &'a str, DailyLimits)> {
    let defer_studio = defer_studio && terms.studio == (None, None);
    let player = terms.player.map(|limits| (Level::Player, owner, limits));
    let project = spend.project.map(|project_id| (Level::Project, project_id, terms.project));
    let studio = (!defer_studio).then_some((Level::Studio, STUDIO, terms.studio));
    player.into_iter().chain(project).chain(studio).collect()
}

/// The ledger's account of one level of [`levels`].
fn account<'a>(&(level, owner, limits): &(Level, &'a str, DailyLimits), spend: &Spend<'_>) -> Account<'a> {
    let own = (level == Level::Player).then_some(spend.user_id);
    Account { level: level.as_str(), owner, limits, own }
}

/// What a reservation decides by: each level's limits that apply, and the model's price.
struct Terms {
    /// `None`: the call has no player (the game server's own). The players' defaults: a
    /// player's own limits, where set, stand before them (the reservation reads them itself).
    player: Option<DailyLimits>,
    project: DailyLimits,
    studio: DailyLimits,
    price: Option<Price>,
}

/// The [`Terms`] of `spend`, read in one statement, once per batch of the writer's (the
/// settings' seed while none are stored).
fn terms(conn: &mut DbConn, seed: &UsageConfig, spend: &Spend<'_>) -> StoreResult<Terms> {
    let (limits, project, price) = match ledger::terms(conn, spend.project, spend.model)? {
        Some(read) => read,
        None => {
            let project = match spend.project {
                Some(project_id) => ledger::project(conn, project_id)?,
                None => None,
            };
            let price = billing::price_row(conn, spend.model)?;
            (seed_row(seed, NaiveDateTime::default()), project, price)
        }
    };
    let player = (spend.user_id != SERVER).then_some((limits.player_daily_tokens, limits.player_daily_micros));
    Ok(Terms {
        player,
        project: project.map_or((None, None), |p| (p.daily_tokens, p.daily_micros)),
        studio: (limits.studio_daily_tokens, limits.studio_daily_micros),
        price: price.map(|p| p.price()),
    })
}

/// [`reserve`] of a known bound: (tokens, micro-dollars) under `terms`.
fn reserve_bound(
    conn: &mut DbConn,
    terms: &Terms,
    spend: &Spend<'_>,
    bound: (i64, i64),
    now: NaiveDateTime,
) -> StoreResult<Result<(), Refusal>> {
    let owner = spend.user_id.to_string();
    let price = terms.price;
    // A studio with no limit never refuses: its row is written at the batch's commit.
    let defer_studio = terms.studio == (None, None) && behind::deferring();
    let mut levels = levels(terms, spend, &owner, defer_studio);
    let accounts: Vec<Account<'_>> = levels.iter().map(|l| account(l, spend)).collect();
    let day = day_of(now);
    let mut reserved = if accounts.is_empty() {
        Vec::new()
    } else if let Some(made) = ahead::take_reserved(&accounts, &day, bound, now) {
        made
    } else {
        ledger::reserve(conn, three(&accounts), &day, bound, now)?
    };
    if reserved.len() < accounts.len() {
        // A row not there when the UPDATE ran (the day's first call, here or on another
        // process) is opened and its reservation tried once more; one over its limit refuses
        // again.
        for account in &accounts {
            if !reserved.iter().any(|r| r.0 == account.level && r.1 == account.owner) {
                ledger::open(conn, account, &day, now)?;
                reserved.extend(ledger::reserve(conn, [account, account, account], &day, bound, now)?);
            }
        }
    }
    // The player's own limits before its defaults: as the reservation read them, or read now
    // when its row refused.
    if let Some(first) = levels.first_mut().filter(|l| l.0 == Level::Player) {
        let own = match reserved.iter().find(|r| r.0 == first.0.as_str() && r.1 == first.1) {
            Some(r) => (r.2, r.3),
            None => ledger::player(conn, spend.user_id)?.map_or((None, None), |p| (p.daily_tokens, p.daily_micros)),
        };
        first.2 = (own.0.or(first.2 .0), own.1.or(first.2 .1));
    }
    // The first level that refuses, in order: over its limit, or a USD limit with no price for
    // the model (fails closed). Nothing stays reserved then.
    let refusal = levels.iter().find_map(|&(level, owner, (token_limit, micro_limit))| {
        if micro_limit.is_some() && price.is_none() {
            return Some(Refusal::no_price(level, spend.model));
        }
        let held = reserved.iter().any(|r| r.0 == level.as_str() && r.1 == owner);
        let unit = match token_limit {
            Some(_) if micro_limit.is_none() => "token",
            None => "USD",
            Some(_) => "token or USD",
        };
        (!held).then(|| Refusal::over(level, unit))
    });
    if let Some(refusal) = refusal {
        for r in &reserved {
            let row = (r.0.as_str(), r.1.as_str());
            ledger::settle(conn, [row, row, row], &day, bound, (0, 0), now)?;
        }
        return Ok(Err(refusal));
    }
    if defer_studio {
        behind::defer(behind::Change {
            level: Level::Studio.as_str().to_owned(),
            owner: STUDIO.to_owned(),
            day: day.clone(),
            reserve: bound,
            held: (0, 0),
            charge: (0, 0),
            at: now,
        });
    }
    let hold = NewHold {
        target: spend.target.to_owned(),
        user_id: spend.user_id,
        studio: true,
        day,
        model: spend.model.to_owned(),
        tokens: bound.0,
        micros: bound.1,
        created_at: now,
        project: spend.project.map(str::to_owned),
    };
    ledger::add_hold(conn, hold)?;
    Ok(Ok(()))
}

/// One to three accounts (at least one) as the ledger's three (the last standing in for those missing).
fn three<'a, 'b>(accounts: &'b [Account<'a>]) -> [&'b Account<'a>; 3] {
    let last = accounts.last().expect("one account at least");
    [&accounts[0], accounts.get(1).unwrap_or(last), last]
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

/// The call `target` held for was cut short (its process died, or lost the job): what it
/// held is charged at every level (its usage is not known), and the same bound is reserved
/// again for the call about to be made, under the limits as they are now (PROTOCOL §5).
/// Nothing held: nothing to do. Says what it charged.
pub fn charge_cut(
    conn: &mut DbConn,
    seed: &UsageConfig,
    target: &str,
    now: NaiveDateTime,
) -> StoreResult<(Charged, Result<(), Refusal>)> {
    let held = ledger::holds(conn, target)?;
    let Some(first) = held.first() else { return Ok((Charged::default(), Ok(()))) };
    let (user_id, model) = (first.user_id, first.model.clone());
    let bound = held.iter().fold((0_i64, 0_i64), |(t, m), h| (t.saturating_add(h.tokens), m.saturating_add(h.micros)));
    let charged = settle(conn, target, Used::Unknown, now)?;
    // Output is part of the bound already: the whole of it stands as prompt here.
    let project = first.project.clone();
    let spend =
        Spend { user_id, project: project.as_deref(), model: &model, target, prompt_tokens: bound.0, output_tokens: 0 };
    let terms = terms(conn, seed, &spend)?;
    Ok((charged, reserve_bound(conn, &terms, &spend, bound, now)?))
}

/// Whether `target` holds a reservation (a run's attempt reserved before it was made).
pub fn holds(conn: &mut DbConn, target: &str) -> StoreResult<bool> {
    Ok(!ledger::holds(conn, target)?.is_empty())
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

/// What the tried upstreams of a call no upstream answered used together.
pub fn used_by_failures(tried: &[CallFailure]) -> Used {
    tried.iter().fold(Used::Nothing, |used, failure| used.and(used_by_failure(*failure)))
}

/// Settles every hold of `target`: the usage is charged (at the day and levels of its first
/// hold) and the holds released. Nothing held: nothing to do. Says what it charged at each level.
pub fn settle(conn: &mut DbConn, target: &str, used: Used, now: NaiveDateTime) -> StoreResult<Charged> {
    settle_as(conn, target, used, None, now)
}

/// [`settle`], with reported usage priced as `answered_by` (the model that answered, when
/// known) rather than as the model the hold was made for.
pub fn settle_as(
    conn: &mut DbConn,
    target: &str,
    used: Used,
    answered_by: Option<&str>,
    now: NaiveDateTime,
) -> StoreResult<Charged> {
    let holds = ledger::take_holds(conn, target)?;
    settle_holds(conn, holds, used, answered_by, now)
}

/// What a settlement kept for the commit of the writer's batch charged: known once that batch
/// committed ([`settle_later`]).
#[derive(Debug, Clone, Default)]
pub struct Settled(Arc<Mutex<Charged>>);

impl Settled {
    pub fn charged(&self) -> Charged {
        self.0.lock().map(|c| *c).unwrap_or_default()
    }
}

/// [`settle_as`], kept for the commit of the writer's batch (in place elsewhere): the holds of
/// every settlement of the batch are taken in one DELETE. `player` is whose holds they are:
/// a reservation at that player's row in the same batch waits for it (one at another
/// player's row need not; should `player` be wrong, such a reservation decides by more held
/// than there is, never by less).
pub fn settle_later(
    conn: &mut DbConn,
    target: &str,
    player: i64,
    used: Used,
    answered_by: Option<&str>,
    now: NaiveDateTime,
) -> StoreResult<Settled> {
    let settled = Settled::default();
    let (into, model) = (settled.clone(), answered_by.map(str::to_owned));
    let then: behind::Settling = Rc::new(move |conn, holds| {
        let charged = settle_holds(conn, holds, used, model.as_deref(), now)?;
        if let Ok(mut at) = into.0.lock() {
            *at = charged;
        }
        Ok(())
    });
    if let Some(settle) = behind::defer_settle(behind::Settle { target: target.to_owned(), player, then }) {
        let holds = ledger::take_holds(conn, &settle.target)?;
        (settle.then)(conn, holds)?;
    }
    Ok(settled)
}

/// Settles `holds` (all of one target's, taken): [`settle_as`].
fn settle_holds(
    conn: &mut DbConn,
    holds: Vec<ledger::HoldRow>,
    used: Used,
    answered_by: Option<&str>,
    now: NaiveDateTime,
) -> StoreResult<Charged> {
    let mut charge = match used {
        Used::Nothing => Some((0, 0)),
        Used::Reported(usage) => {
            let held = holds.first().map(|h| h.model.clone()).unwrap_or_default();
            // A model without a price of its own is charged as the held one.
            let answered = match answered_by.filter(|m| *m != held) {
                Some(model) => billing::price(conn, model)?,
                None => None,
            };
            let price = match answered {
                Some(price) => Some(price),
                None => billing::price(conn, &held)?,
            };
            let micros = price.map_or(0, |p| p.cost(&usage));
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
        let levels: Vec<(Level, &str)> = [
            (hold.user_id != SERVER).then_some((Level::Player, owner.as_str())),
            hold.project.as_deref().map(|p| (Level::Project, p)),
            hold.studio.then_some((Level::Studio, STUDIO)),
        ]
        .into_iter()
        .flatten()
        .collect();
        let Some(&last) = levels.last() else { continue };
        let row = |i: usize| levels.get(i).map_or((last.0.as_str(), last.1), |&(l, o)| (l.as_str(), o));
        ledger::settle(conn, [row(0), row(1), row(2)], &hold.day, held, this, now)?;
        for (level, _) in levels {
            charged.add(level, this);
        }
    }
    Ok(charged)
}
