//! The usage ledger of PROTOCOL §5: per (level, owner, UTC day) what was spent and what is
//! reserved, in tokens and micro-dollars; the holds of calls not yet settled; the stored
//! studio and default player limits; per-player overrides and the blocked flag (a block is
//! announced to every process with its commit).
//!
//! A reservation is one conditional UPDATE (`spent + reserved + bound <= limit`): the
//! database decides, so concurrent reservations on any number of processes never overshoot
//! (PostgreSQL re-checks the condition on the row it waited for). Never decides which levels
//! apply to a call (that is `limits/`).

use chrono::NaiveDateTime;
use diesel::dsl::case_when;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable};

use super::behind::{self, Change};
use super::billing::PriceRow;
use super::notify::{self, Event};
use super::schema::{llm_config, player_limits, prices, project_limits, usage_days, usage_holds, usage_limits, users};
use super::sql::coalesce;
use super::{DbConn, Kept, StoreResult};
use crate::on_backend;

/// Stands for "no limit" in a conditional UPDATE (sums never come near it).
pub(super) const NO_LIMIT: i64 = i64::MAX / 4;

/// A user id no player has ([`Account::own`] when the account is not a player's).
pub(super) const NOBODY: i64 = i64::MIN;

/// The one row of stored limits.
const LIMITS_ID: i64 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Queryable)]
pub struct LimitsRow {
    pub id: i64,
    pub studio_daily_tokens: Option<i64>,
    pub studio_daily_micros: Option<i64>,
    pub player_daily_tokens: Option<i64>,
    pub player_daily_micros: Option<i64>,
    pub player_llm_rate: String,
    pub updated_at: NaiveDateTime,
}

/// A change of the stored limits: `None` leaves a key as it is, `Some(None)` removes its limit.
#[derive(Debug, Clone, Default)]
pub struct LimitsChange {
    pub studio_daily_tokens: Option<Option<i64>>,
    pub studio_daily_micros: Option<Option<i64>>,
    pub player_daily_tokens: Option<Option<i64>>,
    pub player_daily_micros: Option<Option<i64>>,
    pub player_llm_rate: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Queryable)]
pub struct PlayerLimitsRow {
    pub user_id: i64,
    pub blocked: bool,
    pub daily_tokens: Option<i64>,
    pub daily_micros: Option<i64>,
    pub updated_at: NaiveDateTime,
}

/// A change of one player's row: `None` leaves a key as it is, `Some(None)` = the default.
#[derive(Debug, Clone, Default)]
pub struct PlayerChange {
    pub blocked: Option<bool>,
    pub daily_tokens: Option<Option<i64>>,
    pub daily_micros: Option<Option<i64>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Queryable)]
pub struct DayRow {
    pub level: String,
    pub owner: String,
    pub day: String,
    pub spent_tokens: i64,
    pub spent_micros: i64,
    pub reserved_tokens: i64,
    pub reserved_micros: i64,
    pub updated_at: NaiveDateTime,
}

pub use super::behind::HoldRow;

/// A hold to be added ([`add_hold`]).
pub use super::behind::Hold as NewHold;

/// A project's per-day limits (`None`: no limit).
#[derive(Debug, Clone, PartialEq, Eq, Queryable)]
pub struct ProjectLimitsRow {
    pub project_id: String,
    pub daily_tokens: Option<i64>,
    pub daily_micros: Option<i64>,
    pub updated_at: NaiveDateTime,
}

pub fn limits(conn: &mut DbConn) -> StoreResult<Option<LimitsRow>> {
    Ok(usage_limits::table.find(LIMITS_ID).first(conn).optional()?)
}

/// Writes the settings' limits unless limits are stored already (the stored ones win).
pub fn seed_limits(conn: &mut DbConn, seed: &LimitsRow) -> StoreResult<()> {
    super::memo::changed();
    let values = (
        usage_limits::id.eq(LIMITS_ID),
        usage_limits::studio_daily_tokens.eq(seed.studio_daily_tokens),
        usage_limits::studio_daily_micros.eq(seed.studio_daily_micros),
        usage_limits::player_daily_tokens.eq(seed.player_daily_tokens),
        usage_limits::player_daily_micros.eq(seed.player_daily_micros),
        usage_limits::player_llm_rate.eq(&seed.player_llm_rate),
        usage_limits::updated_at.eq(seed.updated_at),
    );
    on_backend!(conn, |c| diesel::insert_into(usage_limits::table)
        .values(values)
        .on_conflict(usage_limits::id)
        .do_nothing()
        .execute(c))?;
    Ok(())
}

/// Changes the keys `change` names; the row must have been seeded.
pub fn put_limits(conn: &mut DbConn, change: &LimitsChange, now: NaiveDateTime) -> StoreResult<Option<LimitsRow>> {
    super::memo::changed();
    let Some(old) = limits(conn)? else { return Ok(None) };
    let row: LimitsRow = diesel::update(usage_limits::table.find(LIMITS_ID))
        .set((
            usage_limits::studio_daily_tokens.eq(change.studio_daily_tokens.unwrap_or(old.studio_daily_tokens)),
            usage_limits::studio_daily_micros.eq(change.studio_daily_micros.unwrap_or(old.studio_daily_micros)),
            usage_limits::player_daily_tokens.eq(change.player_daily_tokens.unwrap_or(old.player_daily_tokens)),
            usage_limits::player_daily_micros.eq(change.player_daily_micros.unwrap_or(old.player_daily_micros)),
            usage_limits::player_llm_rate.eq(change.player_llm_rate.clone().unwrap_or(old.player_llm_rate)),
            usage_limits::updated_at.eq(now),
        ))
        .returning(usage_limits::all_columns)
        .get_result(conn)?;
    Ok(Some(row))
}

pub fn project(conn: &mut DbConn, project_id: &str) -> StoreResult<Option<ProjectLimitsRow>> {
    Ok(project_limits::table.find(project_id).first(conn).optional()?)
}

/// Sets a project's per-day limits: `None` leaves a key as it is, `Some(None)` removes it.
pub fn put_project(
    conn: &mut DbConn,
    project_id: &str,
    (tokens, micros): (Option<Option<i64>>, Option<Option<i64>>),
    now: NaiveDateTime,
) -> StoreResult<ProjectLimitsRow> {
    // A reservation later in the batch reads the limits again ([`terms`]).
    super::memo::changed();
    let old = project(conn, project_id)?;
    let values = (
        project_limits::project_id.eq(project_id),
        project_limits::daily_tokens.eq(tokens.unwrap_or(old.as_ref().and_then(|o| o.daily_tokens))),
        project_limits::daily_micros.eq(micros.unwrap_or(old.as_ref().and_then(|o| o.daily_micros))),
        project_limits::updated_at.eq(now),
    );
    Ok(on_backend!(conn, |c| diesel::insert_into(project_limits::table)
        .values(values)
        .on_conflict(project_limits::project_id)
        .do_update()
        .set(values)
        .returning(project_limits::all_columns)
        .get_result(c))?)
}

pub fn player(conn: &mut DbConn, user_id: i64) -> StoreResult<Option<PlayerLimitsRow>> {
    Ok(player_limits::table.find(user_id).first(conn).optional()?)
}

/// Creates the player's row with the defaults when it has none; `false` when there is no such user.
fn ensure_player(conn: &mut DbConn, user_id: i64, now: NaiveDateTime) -> StoreResult<bool> {
    let exists: i64 = users::table.filter(users::id.eq(user_id)).count().get_result(conn)?;
    if exists == 0 {
        return Ok(false);
    }
    let values =
        (player_limits::user_id.eq(user_id), player_limits::blocked.eq(false), player_limits::updated_at.eq(now));
    on_backend!(conn, |c| diesel::insert_into(player_limits::table)
        .values(values)
        .on_conflict(player_limits::user_id)
        .do_nothing()
        .execute(c))?;
    Ok(true)
}

/// Changes the keys `change` names of a player's row (created with the defaults first), and
/// when it blocks the player announces it, so every process closes the player's sessions once
/// this commits. The row, and whether the player was not blocked before; `None` when there is
/// no such user.
pub fn put_player(
    conn: &mut DbConn,
    origin: &str,
    user_id: i64,
    change: &PlayerChange,
    now: NaiveDateTime,
) -> StoreResult<Option<(PlayerLimitsRow, bool)>> {
    if !ensure_player(conn, user_id, now)? {
        return Ok(None);
    }
    let Some(old) = player(conn, user_id)? else { return Ok(None) };
    let row: PlayerLimitsRow = diesel::update(player_limits::table.find(user_id))
        .set((
            player_limits::blocked.eq(change.blocked.unwrap_or(old.blocked)),
            player_limits::daily_tokens.eq(change.daily_tokens.unwrap_or(old.daily_tokens)),
            player_limits::daily_micros.eq(change.daily_micros.unwrap_or(old.daily_micros)),
            player_limits::updated_at.eq(now),
        ))
        .returning(player_limits::all_columns)
        .get_result(conn)?;
    if change.blocked == Some(true) {
        announce_blocked(conn, origin, user_id)?;
    }
    Ok(Some((row, change.blocked == Some(true) && !old.blocked)))
}

/// The player's row (created with the defaults first), held until the transaction ends: every
/// other transaction deciding about this player, on any process, waits for this one (an update
/// that changes nothing takes the row's lock on PostgreSQL; SQLite's writer holds the whole
/// database). `None` when there is no such user.
pub fn hold_player(conn: &mut DbConn, user_id: i64, now: NaiveDateTime) -> StoreResult<Option<PlayerLimitsRow>> {
    if !ensure_player(conn, user_id, now)? {
        return Ok(None);
    }
    let row = diesel::update(player_limits::table.find(user_id))
        .set(player_limits::blocked.eq(player_limits::blocked))
        .returning(player_limits::all_columns)
        .get_result(conn)?;
    Ok(Some(row))
}

/// Blocks a player whose row exists (see [`hold_player`]) and announces it to every process.
pub fn block(conn: &mut DbConn, origin: &str, user_id: i64, now: NaiveDateTime) -> StoreResult<()> {
    diesel::update(player_limits::table.find(user_id))
        .set((player_limits::blocked.eq(true), player_limits::updated_at.eq(now)))
        .execute(conn)?;
    announce_blocked(conn, origin, user_id)
}

fn announce_blocked(conn: &mut DbConn, origin: &str, user_id: i64) -> StoreResult<()> {
    notify::send(conn, &Event::PlayerBlocked { origin: origin.to_owned(), user_id })
}

/// Of `user_ids`, those blocked.
pub fn blocked_among(conn: &mut DbConn, user_ids: &[i64]) -> StoreResult<Vec<i64>> {
    Ok(player_limits::table
        .filter(player_limits::user_id.eq_any(user_ids))
        .filter(player_limits::blocked.eq(true))
        .select(player_limits::user_id)
        .load(conn)?)
}

/// Whether the player is blocked.
pub fn is_blocked(conn: &mut DbConn, user_id: i64) -> StoreResult<bool> {
    Ok(player(conn, user_id)?.is_some_and(|p| p.blocked))
}

/// What a reservation decides by, read together: the stored limits, the project's per-day
/// limits and the model's price (a player's own limits are read in the reservation itself:
/// [`Account::own`]).
pub type Terms = (LimitsRow, Option<ProjectLimitsRow>, Option<PriceRow>);

/// [`Terms`] of a call for `project` with `model`, in one statement (one round trip on
/// PostgreSQL; read once per batch of the writer's: [`super::memo`]); `None` while no limits are
/// stored.
pub fn terms(conn: &mut DbConn, project: Option<&str>, model: &str) -> StoreResult<Option<Terms>> {
    // A project id is never empty: "" finds no project.
    let project = project.unwrap_or("").to_owned();
    super::memo::kept("terms", &format!("{project}\n{model}"), || {
        Ok(usage_limits::table
            .find(LIMITS_ID)
            .left_join(project_limits::table.on(project_limits::project_id.eq(project)))
            .left_join(prices::table.on(prices::model.eq(model.to_owned())))
            .select((usage_limits::all_columns, project_limits::all_columns.nullable(), prices::all_columns.nullable()))
            .first(conn)
            .optional()?)
    })
}

/// The prices of the models the enabled upstreams answer with (those with a price).
/// (Read once per batch of the writer's: [`super::memo`].)
pub fn upstream_prices(conn: &mut DbConn) -> StoreResult<Vec<PriceRow>> {
    super::memo::kept("upstream_prices", "", || {
        Ok(prices::table
            .inner_join(llm_config::table.on(llm_config::model.eq(prices::model)))
            .filter(llm_config::enabled.eq(true))
            .select(prices::all_columns)
            .distinct()
            .load(conn)?)
    })
}

/// One level's ledger of one day, if anything was reserved there.
pub fn day(conn: &mut DbConn, level: &str, owner: &str, day: &str) -> StoreResult<Option<DayRow>> {
    behind::write_days(conn, &[(level, owner)], day)?;
    Ok(usage_days::table.find((level, owner, day)).first(conn).optional()?)
}

/// The owners of `level` that spent the most micro-dollars on `day` (then tokens).
pub fn top(conn: &mut DbConn, level: &str, day: &str, limit: i64) -> StoreResult<Vec<DayRow>> {
    Ok(usage_days::table
        .filter(usage_days::level.eq(level))
        .filter(usage_days::day.eq(day))
        .order((usage_days::spent_micros.desc(), usage_days::spent_tokens.desc(), usage_days::owner.asc()))
        .limit(limit)
        .load(conn)?)
}

/// One row of the ledger (a level's owner on a day) and the limits a reservation there must fit
/// under, tokens and micro-dollars (`None`: no limit; the reservation is recorded all the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Account<'a> {
    pub level: &'a str,
    pub owner: &'a str,
    pub limits: (Option<i64>, Option<i64>),
    /// The player whose own limits (its overrides), where set, stand before `limits`: read by
    /// the reservation itself. Only the first account of a reservation may name one.
    pub own: Option<i64>,
}

/// Creates the ledger row of `account` on `day` unless it exists.
pub fn open(conn: &mut DbConn, account: &Account<'_>, day: &str, now: NaiveDateTime) -> StoreResult<()> {
    let row = (
        usage_days::level.eq(account.level),
        usage_days::owner.eq(account.owner),
        usage_days::day.eq(day),
        usage_days::spent_tokens.eq(0_i64),
        usage_days::spent_micros.eq(0_i64),
        usage_days::reserved_tokens.eq(0_i64),
        usage_days::reserved_micros.eq(0_i64),
        usage_days::updated_at.eq(now),
    );
    on_backend!(conn, |c| diesel::insert_into(usage_days::table).values(row).on_conflict_do_nothing().execute(c))?;
    Ok(())
}

/// A row a reservation reserved at: `(level, owner, own tokens, own micro-dollars)`, the last two
/// the first account's player's own limits ([`Account::own`]; `None`: not set, or no player).
pub type Reserved = (String, String, Option<i64>, Option<i64>);

/// Reserves `tokens` and `micros` on `day` at each of up to three accounts (one may stand
/// twice or thrice) where all fit under its limits: one conditional UPDATE, so the database
/// decides and concurrent reservations never overshoot. Returns the rows it reserved at; an
/// account missing from them refused, or has no row that day yet ([`open`]).
pub fn reserve(
    conn: &mut DbConn,
    accounts: [&Account<'_>; 3],
    day: &str,
    (tokens, micros): (i64, i64),
    now: NaiveDateTime,
) -> StoreResult<Vec<Reserved>> {
    let [a, b, c] = accounts;
    // It decides by what the batch kept aside for these rows: written first.
    behind::write_days(conn, &[(a.level, a.owner), (b.level, b.owner), (c.level, c.owner)], day)?;
    let is = |x: &Account<'_>| usage_days::level.eq(x.level.to_owned()).and(usage_days::owner.eq(x.owner.to_owned()));
    let limit = |l: Option<i64>| l.unwrap_or(NO_LIMIT).into_sql::<BigInt>();
    // The first account's own limits, where its player has them (a player that is none finds
    // no row), before the limits given.
    let own_of = a.own.unwrap_or(NOBODY);
    let own = || player_limits::table.filter(player_limits::user_id.eq(own_of));
    let own_tokens = || own().select(player_limits::daily_tokens).single_value();
    let own_micros = || own().select(player_limits::daily_micros).single_value();
    let given = |l: Option<i64>| l.unwrap_or(NO_LIMIT).into_sql::<Nullable<BigInt>>();
    let a_tokens = coalesce(own_tokens(), given(a.limits.0)).assume_not_null();
    let a_micros = coalesce(own_micros(), given(a.limits.1)).assume_not_null();
    let token_limit = case_when(is(a), a_tokens).when(is(b), limit(b.limits.0)).otherwise(limit(c.limits.0));
    let micro_limit = case_when(is(a), a_micros).when(is(b), limit(b.limits.1)).otherwise(limit(c.limits.1));
    Ok(Kept(
        diesel::update(
            usage_days::table
                .filter(usage_days::day.eq(day))
                .filter(is(a).or(is(b)).or(is(c)))
                .filter((usage_days::spent_tokens + usage_days::reserved_tokens + tokens).le(token_limit))
                .filter((usage_days::spent_micros + usage_days::reserved_micros + micros).le(micro_limit)),
        )
        .set((
            usage_days::reserved_tokens.eq(usage_days::reserved_tokens + tokens),
            usage_days::reserved_micros.eq(usage_days::reserved_micros + micros),
            usage_days::updated_at.eq(now),
        ))
        .returning((usage_days::level, usage_days::owner, own_tokens(), own_micros())),
    )
    .get_results(conn)?)
}

/// Moves a settled call's usage at each of the `(level, owner)` rows of `day` (one may stand
/// twice or thrice): `charge` becomes spent, `held` is no longer reserved (saturating at zero).
/// In the writer's batch it is kept aside for the commit ([`behind`]); elsewhere one UPDATE,
/// kept prepared ([`Kept`]; run for its RETURNING rows: `execute` hands the connection a
/// reference, whose statement Diesel does not keep).
pub fn settle(
    conn: &mut DbConn,
    rows: [(&str, &str); 3],
    day: &str,
    held: (i64, i64),
    charge: (i64, i64),
    now: NaiveDateTime,
) -> StoreResult<()> {
    if behind::deferring() {
        for (i, &(level, owner)) in rows.iter().enumerate() {
            if rows[..i].contains(&(level, owner)) {
                continue;
            }
            let (level, owner, day) = (level.to_owned(), owner.to_owned(), day.to_owned());
            behind::defer(Change { level, owner, day, reserve: (0, 0), held, charge, at: now });
        }
        return Ok(());
    }
    let is = |(level, owner): (&str, &str)| {
        usage_days::level.eq(level.to_owned()).and(usage_days::owner.eq(owner.to_owned()))
    };
    let tokens =
        case_when(usage_days::reserved_tokens.gt(held.0), usage_days::reserved_tokens - held.0).otherwise(0_i64);
    let micros =
        case_when(usage_days::reserved_micros.gt(held.1), usage_days::reserved_micros - held.1).otherwise(0_i64);
    Kept(
        diesel::update(
            usage_days::table.filter(usage_days::day.eq(day)).filter(is(rows[0]).or(is(rows[1])).or(is(rows[2]))),
        )
        .set((
            usage_days::spent_tokens.eq(usage_days::spent_tokens + charge.0),
            usage_days::spent_micros.eq(usage_days::spent_micros + charge.1),
            usage_days::reserved_tokens.eq(tokens),
            usage_days::reserved_micros.eq(micros),
            usage_days::updated_at.eq(now),
        ))
        .returning(usage_days::level),
    )
    .get_results::<String>(conn)?;
    Ok(())
}

/// Adds a call's hold; in the writer's batch it is kept aside for the commit ([`behind`]).
pub fn add_hold(conn: &mut DbConn, hold: NewHold) -> StoreResult<()> {
    // A settlement of its target kept before it takes the holds there before it is added.
    behind::write_settles_of(conn, &hold.target)?;
    if let Some(hold) = behind::defer_hold(hold) {
        diesel::insert_into(usage_holds::table).values(&hold).execute(conn)?;
    }
    Ok(())
}

/// The holds of `target`, removed.
pub fn take_holds(conn: &mut DbConn, target: &str) -> StoreResult<Vec<HoldRow>> {
    behind::write_holds(conn)?;
    let mut holds: Vec<HoldRow> = diesel::delete(usage_holds::table.filter(usage_holds::target.eq(target)))
        .returning(usage_holds::all_columns)
        .get_results(conn)?;
    holds.sort_by_key(|h| h.id);
    Ok(holds)
}

/// The holds of `target`, left in place.
pub fn holds(conn: &mut DbConn, target: &str) -> StoreResult<Vec<HoldRow>> {
    behind::write_holds(conn)?;
    Ok(usage_holds::table.filter(usage_holds::target.eq(target)).order(usage_holds::id.asc()).load(conn)?)
}
