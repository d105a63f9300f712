//! Moderation (PROTOCOL §6): every text a player would see is checked against the studio's
//! word list (`domain::moderation`) and, when configured, a moderation endpoint speaking
//! OpenAI's `POST /v1/moderations` format. The endpoint is asked with a short timeout and at
//! most `concurrency` checks in flight; when it is slow, failing or busy the word list alone
//! decides and `lorewire_moderation_unchecked_total` counts it, so it never stops the game.
//! Every flag is recorded (surface, author, text, categories) for the admin; with
//! `LOREWIRE_MODERATION_BLOCK_AFTER`, the flag that makes that many of one player within 24 h
//! blocks the player (the admin's stored flag: its sessions close with 4003 on every process).
//!
//! Decides only whether a text is flagged and where; what a flag does on each surface is the
//! feature's (chat blocks or masks, a nickname is refused).

use std::ops::Range;
use std::sync::Arc;

use actix::Addr;
use chrono::NaiveDateTime;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::core::clock::SharedClock;
use crate::core::metrics::Metrics;
use crate::core::moderation::{ChatModeration, ModerationConfig};
use crate::core::process::ProcessId;
use crate::core::secret::Secret;
use crate::domain::moderation::{Flag, Surface, WordList, WORD_LIST};
use crate::hub::{CloseTopic, Hub};
use crate::store::moderation::{self as flags, NewFlag};
use crate::store::{usage, DbConn, Store, StoreResult};

/// Largest answer read from the moderation endpoint.
const MAX_ANSWER_BYTES: usize = 256 * 1024;

/// The flags of a player that count towards `LOREWIRE_MODERATION_BLOCK_AFTER`: those this recent.
const BLOCK_WINDOW: chrono::Duration = chrono::Duration::hours(24);

/// What a check found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    pub flagged: bool,
    /// What flagged it: `word_list`, and the endpoint's categories.
    pub categories: Vec<String>,
    /// Where the word list matched (byte ranges), for masking.
    pub spans: Vec<Range<usize>>,
}

/// Why the moderation settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ModerationSetupError {
    #[error("LOREWIRE_MODERATION_WORDS: cannot read {path}: {source}")]
    Words { path: String, source: std::io::Error },
    #[error("LOREWIRE_MODERATION_WORDS: {path}, {source}")]
    Pattern { path: String, source: crate::domain::moderation::BadPattern },
}

struct Endpoint {
    url: String,
    key: Option<Secret>,
    timeout: std::time::Duration,
    permits: Semaphore,
}

#[derive(Clone)]
pub struct Moderation {
    words: Arc<WordList>,
    endpoint: Option<Arc<Endpoint>>,
    chat: ChatModeration,
    block_after: Option<u32>,
    store: Store,
    clock: SharedClock,
    metrics: Arc<Metrics>,
    /// A block closes the player's sessions here at once (the other processes hear it).
    hub: Addr<Hub>,
    origin: ProcessId,
}

impl Moderation {
    /// Reads the word list (a file that cannot be read stops the start: running unchecked by
    /// mistake would be worse).
    pub fn new(
        config: &ModerationConfig,
        store: Store,
        clock: SharedClock,
        metrics: Arc<Metrics>,
        hub: Addr<Hub>,
        origin: ProcessId,
    ) -> Result<Moderation, ModerationSetupError> {
        let words = match &config.words {
            Some(path) => {
                let source = std::fs::read_to_string(path)
                    .map_err(|source| ModerationSetupError::Words { path: path.display().to_string(), source })?;
                WordList::parse(&source)
                    .map_err(|source| ModerationSetupError::Pattern { path: path.display().to_string(), source })?
            }
            None => WordList::default(),
        };
        let endpoint = config.url.clone().map(|url| {
            Arc::new(Endpoint {
                url,
                key: config.api_key.clone(),
                timeout: config.timeout,
                permits: Semaphore::new(config.concurrency),
            })
        });
        Ok(Moderation {
            words: Arc::new(words),
            endpoint,
            chat: config.chat,
            block_after: config.block_after,
            store,
            clock,
            metrics,
            hub,
            origin,
        })
    }

    /// Whether anything is checked at all.
    pub fn is_on(&self) -> bool {
        !self.words.is_empty() || self.endpoint.is_some()
    }

    pub fn chat_mode(&self) -> ChatModeration {
        self.chat
    }

    /// Checks `text` for `surface`; a flag is recorded with `user_id` (the author, or the
    /// player whose request made the text).
    pub async fn check(&self, surface: Surface, user_id: Option<i64>, text: &str) -> Verdict {
        if !self.is_on() || text.trim().is_empty() {
            return Verdict::default();
        }
        self.metrics.moderation_checked.with_label_values(&[surface.as_str()]).inc();
        let spans = self.words.find(text);
        let mut categories = Vec::new();
        if !spans.is_empty() {
            categories.push(WORD_LIST.to_owned());
        }
        if let Some(endpoint) = &self.endpoint {
            match endpoint.ask(text).await {
                Ok(found) => categories.extend(found),
                Err(why) => {
                    self.metrics.moderation_unchecked.inc();
                    tracing::info!(surface = surface.as_str(), %why, "the moderation endpoint did not answer; the word list decided");
                }
            }
        }
        let verdict = Verdict { flagged: !categories.is_empty(), categories, spans };
        if verdict.flagged {
            self.record(surface, user_id, text, &verdict).await;
        }
        verdict
    }

    async fn record(&self, surface: Surface, user_id: Option<i64>, text: &str, verdict: &Verdict) {
        self.metrics.moderation_flagged.with_label_values(&[surface.as_str()]).inc();
        tracing::info!(surface = surface.as_str(), user = ?user_id, categories = ?verdict.categories, "text flagged");
        let categories = serde_json::to_string(&verdict.categories).expect("strings serialize");
        let (text, now) = (text.to_owned(), self.clock.now_naive());
        let block_after = user_id.zip(self.block_after);
        let (origin, hub, metrics) = (self.origin.clone(), self.hub.clone(), self.metrics.clone());
        let recorded = self
            .store
            .write_then(
                move |conn| {
                    let flag = NewFlag {
                        surface: surface.as_str(),
                        user_id,
                        text: &text,
                        categories: &categories,
                        created_at: now,
                    };
                    flags::record(conn, &flag)?;
                    match block_after {
                        Some((user_id, after)) => block_after_flags(conn, &origin, user_id, after, now),
                        None => Ok(None),
                    }
                },
                // Right after the commit, even when the caller is gone (the session it closes).
                move |blocked| {
                    if let (Some(count), Some((user_id, _))) = (blocked, block_after) {
                        hub.do_send(CloseTopic::blocked(user_id));
                        metrics.players_blocked.with_label_values(&["moderation"]).inc();
                        tracing::info!(user = user_id, flags = count, "player blocked after {count} moderation flags");
                    }
                },
            )
            .await;
        if let Err(e) = recorded {
            tracing::warn!(error = %e, "a moderation flag could not be recorded");
        }
    }

    /// The newest `limit` flags, newest first.
    pub async fn flags(&self, limit: i64) -> StoreResult<Vec<Flag>> {
        let rows = self.store.run(move |conn| flags::newest(conn, limit)).await?;
        Ok(rows
            .into_iter()
            .map(|row| Flag {
                id: row.id,
                surface: row.surface,
                user_id: row.user_id,
                text: row.text,
                categories: serde_json::from_str(&row.categories).unwrap_or_default(),
                created_at: chrono::DateTime::from_naive_utc_and_offset(row.created_at, chrono::Utc),
            })
            .collect())
    }
}

/// Blocks `user_id` when it now has `after` flags or more within [`BLOCK_WINDOW`] (the one just
/// recorded included) and is not blocked yet: `Some(count)` when this blocked it. The player's
/// row is held first, so concurrent flags of one player (on any process) are counted one after
/// the other and the one that reaches `after` sees every other.
fn block_after_flags(
    conn: &mut DbConn,
    origin: &str,
    user_id: i64,
    after: u32,
    now: NaiveDateTime,
) -> StoreResult<Option<i64>> {
    let Some(player) = usage::hold_player(conn, user_id, now)? else { return Ok(None) };
    if player.blocked {
        return Ok(None);
    }
    let count = flags::count_since(conn, user_id, now - BLOCK_WINDOW)?;
    if count < i64::from(after) {
        return Ok(None);
    }
    usage::block(conn, origin, user_id, now)?;
    Ok(Some(count))
}

thread_local! {
    /// One HTTP client per thread (awc's are not Send), so connections are kept and reused.
    static CLIENT: awc::Client = awc::Client::builder().disable_timeout().finish();
}

impl Endpoint {
    /// The categories the endpoint flags `text` for (none when it is not flagged), or why it
    /// could not say in time.
    async fn ask(&self, text: &str) -> Result<Vec<String>, String> {
        let call = async {
            let _permit = self.permits.try_acquire().map_err(|_| "too many checks in flight".to_owned())?;
            let mut request = CLIENT.with(|c| c.post(&self.url));
            if let Some(key) = &self.key {
                request = request.bearer_auth(key.expose());
            }
            let mut response = request.send_json(&json!({ "input": text })).await.map_err(|e| e.to_string())?;
            if !response.status().is_success() {
                return Err(format!("HTTP {}", response.status().as_u16()));
            }
            let body = response.body().limit(MAX_ANSWER_BYTES).await.map_err(|e| e.to_string())?;
            categories(&body)
        };
        tokio::time::timeout(self.timeout, call).await.map_err(|_| "timed out".to_owned())?
    }
}

/// An OpenAI moderation answer's verdict: `results[0].flagged` and the categories set true
/// (`flagged` alone when it names none).
fn categories(body: &[u8]) -> Result<Vec<String>, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let result = value.get("results").and_then(|r| r.get(0)).ok_or("no `results`")?;
    let flagged = result.get("flagged").and_then(Value::as_bool).ok_or("no `flagged`")?;
    if !flagged {
        return Ok(Vec::new());
    }
    let mut named: Vec<String> = result
        .get("categories")
        .and_then(Value::as_object)
        .map(|c| c.iter().filter(|(_, v)| v.as_bool() == Some(true)).map(|(k, _)| k.clone()).collect())
        .unwrap_or_default();
    if named.is_empty() {
        named.push("flagged".into());
    }
    Ok(named)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoints_answer_names_its_categories() {
        let flagged = br#"{"id":"m","results":[{"flagged":true,"categories":{"hate":true,"violence":false}}]}"#;
        assert_eq!(categories(flagged).unwrap(), ["hate"]);
        assert_eq!(categories(br#"{"results":[{"flagged":true}]}"#).unwrap(), ["flagged"]);
        assert!(categories(br#"{"results":[{"flagged":false,"categories":{"hate":false}}]}"#).unwrap().is_empty());
        assert!(categories(b"{}").is_err());
        assert!(categories(b"oops").is_err());
    }
}
