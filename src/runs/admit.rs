//! A run's admission in the store's write: the stored LLM settings and price, dedup, the
//! queue limit, the project's budget, the player's and the studio's reservation, and the cap
//! on a player's REST runs, in one transaction. Never calls the LLM.

use chrono::NaiveDateTime;

use sha2::{Digest, Sha256};

use crate::core::config::Config;
use crate::domain::runs::{prompt_token_bound, Action, RunRequest};
use crate::limits::{self, Spend};
use crate::llm::credentials::NoCredentials;
use crate::store::runs::{self as rows, Admission, Admitted};
use crate::store::{billing, llm_config, DbConn, StoreError, StoreResult};

/// Admits `player`'s run (see [`super::RunService::start`]): what was admitted, its place in
/// the queue and the recent runs' average time.
pub(super) fn admit(
    conn: &mut DbConn,
    config: &Config,
    req: &RunRequest,
    rest: bool,
    player: i64,
    run_id: &str,
    now: NaiveDateTime,
) -> StoreResult<(Admitted, i64, Option<i64>)> {
    let llm = llm_config::get(conn)?;
    let model = llm.as_ref().map(|c| c.model.clone()).unwrap_or_else(|| config.llm_model.clone());
    let no_config = match llm.as_ref().map(crate::llm::credentials) {
        Some(Ok(_)) => None,
        Some(Err(why)) => Some(why.to_string()),
        None => Some(NoCredentials::NoKey.to_string()),
    };
    let bound = prompt_token_bound(req.action.system_prompt(), &req.action.user_message(&req.input));
    let worst_case = billing::price(conn, &model)?.map(|p| p.worst_case(bound, u64::from(config.max_output_tokens)));
    let key = dedup_key(&req.project_id, req.action, &model, &req.input);
    let admission = Admission {
        run_id,
        user_id: player,
        project_id: &req.project_id,
        action: req.action,
        priority: req.action.priority(),
        input: &req.input,
        model: &model,
        dedup_key: &key,
        skip_cache: req.skip_cache,
        pinned: rest,
        waiter: !rest,
        queue_limit: i64::try_from(config.queue_limit).unwrap_or(i64::MAX),
        worst_case,
        no_config: no_config.as_deref(),
        player_id: player,
        unwatched_cap: rest.then_some(i64::from(config.identity.player_unwatched_runs)),
    };
    let admitted = rows::admit(conn, &admission, now)?;
    let spend = Spend {
        user_id: player,
        project: Some(&req.project_id),
        model: &model,
        target: &run_target(run_id),
        prompt_tokens: i64::try_from(bound).unwrap_or(i64::MAX),
        output_tokens: i64::from(config.max_output_tokens),
    };
    match &admitted {
        // The player's level refuses before the project's.
        Admitted::BudgetExceeded | Admitted::NoPrice => {
            if let Some(refusal) = limits::player_refuses(conn, &config.usage, &spend, now)? {
                return Err(StoreError::OverLimit(refusal));
            }
        }
        Admitted::Created(row) if row.is_active() => {
            if let Err(refusal) = limits::reserve(conn, &config.usage, &spend, now)? {
                return Err(StoreError::OverLimit(refusal));
            }
            // Counted again once the reservation holds the player's (and the studio's) ledger
            // row: a REST run of the player's admitted meanwhile on another process has
            // committed by now (PostgreSQL), so the cap holds over every process.
            if let Some(cap) = admission.unwatched_cap {
                if rows::unwatched(conn, player)? > cap {
                    return Err(StoreError::TooManyUnwatched(cap));
                }
            }
        }
        _ => {}
    }
    let (position, avg) = match &admitted {
        Admitted::Joined(row) | Admitted::Created(row) if row.is_active() => {
            (rows::position(conn, row.id)?, rows::recent_duration_ms(conn)?)
        }
        _ => (0, None),
    };
    Ok((admitted, position, avg))
}

/// The dedup key: identical (project, action, model, input) share it.
pub(super) fn dedup_key(project_id: &str, action: Action, model: &str, input: &str) -> String {
    let mut hash = Sha256::new();
    for part in [project_id, action.as_str(), model, input] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    }
    hex::encode(hash.finalize())
}

/// The ledger's name of a run's calls.
pub fn run_target(run_id: &str) -> String {
    format!("run:{run_id}")
}
