//! Player sessions over the store: start or resume a user by token, authenticate a bearer
//! token, record when a player was seen. The rules (tokens, nicknames, variants) are
//! `domain::players`; this file never decides them and never builds frames.

use crate::core::clock::SharedClock;
use crate::domain::players::{hash_token, new_token};
use crate::store::users::{self, UserRow};
use crate::store::{Store, StoreResult};

/// A started session: the user and the token that resumes it.
#[derive(Debug, Clone)]
pub struct Started {
    pub user: UserRow,
    pub token: String,
    pub resumed: bool,
}

/// Resumes the user holding `token`, or starts a new user (an unknown token is not an error).
pub async fn start_session(
    store: &Store,
    clock: &SharedClock,
    nickname: String,
    token: Option<String>,
) -> StoreResult<Started> {
    let presented = token.filter(|t| !t.is_empty() && t.len() <= 256);
    let new_token = new_token();
    let presented_hash = presented.as_deref().map(hash_token);
    let new_hash = hash_token(&new_token);
    let now = clock.now_naive();
    let (user, resumed) = store
        .write(move |conn| users::start_session(conn, presented_hash.as_deref(), &new_hash, &nickname, now))
        .await?;
    let token = if resumed { presented.unwrap_or(new_token) } else { new_token };
    Ok(Started { user, token, resumed })
}

/// The user a bearer token belongs to.
pub async fn authenticate(store: &Store, clock: &SharedClock, token: &str) -> StoreResult<Option<UserRow>> {
    if token.is_empty() || token.len() > 256 {
        return Ok(None);
    }
    let hash = hash_token(token);
    let now = clock.now_naive();
    let user = store.run(move |conn| users::find_by_token_hash(conn, &hash)).await?;
    if let Some(user) = user.as_ref().filter(|u| needs_touch(u.last_seen_at, now)) {
        let id = user.id;
        store.write(move |conn| users::touch(conn, id, now)).await?;
    }
    Ok(user)
}

/// Marks a connected user as seen now: a session calls it when a new UTC day begins while it is
/// open (so retention counts a player who never disconnects) and when it closes.
pub async fn seen(store: &Store, user_id: i64, now: chrono::NaiveDateTime) -> StoreResult<()> {
    store.write(move |conn| users::touch(conn, user_id, now)).await
}

/// Seen-times are kept to the minute (and every new UTC day), so reads stay reads.
fn needs_touch(last_seen: chrono::NaiveDateTime, now: chrono::NaiveDateTime) -> bool {
    now.date() != last_seen.date() || now - last_seen > chrono::Duration::seconds(60)
}
