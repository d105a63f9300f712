//! Players: opaque tokens (only their SHA-256 is stored), nickname rules, and the A/B variant.

use rand::RngCore;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::clock::SharedClock;
use crate::store::users::{self, UserRow};
use crate::store::{Store, StoreResult};

pub const MAX_NICKNAME_CHARS: usize = 32;

/// The A/B group of a player: `control` when `user_id` is even, `treatment` when odd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    Control,
    Treatment,
}

impl Variant {
    pub fn of(user_id: i64) -> Variant {
        if user_id.rem_euclid(2) == 0 {
            Variant::Control
        } else {
            Variant::Treatment
        }
    }
}

pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Trims and checks a nickname: 1..32 characters, no control characters.
pub fn validate_nickname(raw: &str) -> Result<String, String> {
    // Checked before trimming: a tab or newline at either end is refused, not silently cut.
    if raw.chars().any(char::is_control) {
        return Err("nickname must not contain control characters".into());
    }
    let nickname = raw.trim();
    let chars = nickname.chars().count();
    if chars == 0 {
        return Err("nickname must not be empty".into());
    }
    if chars > MAX_NICKNAME_CHARS {
        return Err(format!("nickname is {chars} characters; at most {MAX_NICKNAME_CHARS} are allowed"));
    }
    Ok(nickname.to_owned())
}

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
    let (user, resumed) =
        store.run(move |conn| users::start_session(conn, presented_hash.as_deref(), &new_hash, &nickname, now)).await?;
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
    store
        .run(move |conn| {
            let user = users::find_by_token_hash(conn, &hash)?;
            if let Some(user) = user.as_ref().filter(|u| needs_touch(u.last_seen_at, now)) {
                users::touch(conn, user.id, now)?;
            }
            Ok(user)
        })
        .await
}

/// Marks a connected user as seen now: a session calls it when a new UTC day begins while it is
/// open (so retention counts a player who never disconnects) and when it closes.
pub async fn seen(store: &Store, user_id: i64, now: chrono::NaiveDateTime) -> StoreResult<()> {
    store.run(move |conn| users::touch(conn, user_id, now)).await
}

/// Seen-times are kept to the minute (and every new UTC day), so reads stay reads.
fn needs_touch(last_seen: chrono::NaiveDateTime, now: chrono::NaiveDateTime) -> bool {
    now.date() != last_seen.date() || now - last_seen > chrono::Duration::seconds(60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nickname_rules() {
        assert_eq!(validate_nickname("  Ada ").unwrap(), "Ada");
        assert!(validate_nickname("   ").is_err());
        assert!(validate_nickname("Ada\n").is_err());
        assert!(validate_nickname("\tAda").is_err());
        assert!(validate_nickname(&"x".repeat(33)).is_err());
        assert!(validate_nickname(&"é".repeat(32)).is_ok());
        assert!(validate_nickname("A\u{7}da").is_err());
    }

    #[test]
    fn variant_is_a_function_of_the_id() {
        assert_eq!(Variant::of(2), Variant::Control);
        assert_eq!(Variant::of(3), Variant::Treatment);
        assert_eq!(Variant::of(3), Variant::of(3));
    }

    #[test]
    fn tokens_are_random_and_hashed() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert_eq!(hash_token(&a).len(), 64);
        assert_ne!(hash_token(&a), a);
    }
}
