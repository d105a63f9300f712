//! Game content (quest / event / npc): the item as clients see it, and the service that
//! validates a request, writes the pending row and its durable job in one transaction, and
//! wakes the LLM actor. Never calls the LLM itself and never leaves an item without a job.

pub mod kinds;

use std::sync::Arc;

use actix::prelude::*;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};

pub use kinds::{ContentKind, Context};

use crate::clock::SharedClock;
use crate::hub::{Hub, Publish, Topic};
use crate::llm::JobsAvailable;
use crate::store::content::{self as rows, ContentRow, RequestItem, Requested};
use crate::store::{Store, StoreError};
use crate::ws::protocol::Typed;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ContentStatus {
    Pending,
    Ready,
    Fallback,
}

impl ContentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ContentStatus::Pending => "pending",
            ContentStatus::Ready => "ready",
            ContentStatus::Fallback => "fallback",
        }
    }
    fn parse(s: &str) -> Option<ContentStatus> {
        match s {
            "pending" => Some(ContentStatus::Pending),
            "ready" => Some(ContentStatus::Ready),
            "fallback" => Some(ContentStatus::Fallback),
            _ => None,
        }
    }
}

/// Why an item got its fallback text (PROTOCOL §2 "Game content").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FallbackReason {
    NoConfig,
    CircuitOpen,
    RateLimited,
    ApiError(u16),
    NetworkError,
    Timeout,
    InvalidJson,
    InvalidResponse,
}

impl std::fmt::Display for FallbackReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FallbackReason::NoConfig => f.write_str("no_config"),
            FallbackReason::CircuitOpen => f.write_str("circuit_open"),
            FallbackReason::RateLimited => f.write_str("rate_limited"),
            FallbackReason::ApiError(status) => write!(f, "api_error_{status}"),
            FallbackReason::NetworkError => f.write_str("network_error"),
            FallbackReason::Timeout => f.write_str("timeout"),
            FallbackReason::InvalidJson => f.write_str("invalid_json"),
            FallbackReason::InvalidResponse => f.write_str("invalid_response"),
        }
    }
}

/// A content item as clients see it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Content {
    pub kind: ContentKind,
    pub subject_id: u64,
    pub status: ContentStatus,
    pub fields: Map<String, Value>,
    pub model: Option<String>,
    pub reason: Option<String>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
}

impl Content {
    pub fn from_row(row: &ContentRow) -> Result<Content, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("content {}: {what}", row.id));
        Ok(Content {
            kind: ContentKind::parse(&row.kind).ok_or_else(|| corrupt("unknown kind"))?,
            subject_id: u64::try_from(row.subject_id).map_err(|_| corrupt("negative subject_id"))?,
            status: ContentStatus::parse(&row.status).ok_or_else(|| corrupt("unknown status"))?,
            fields: serde_json::from_str(&row.fields).map_err(|_| corrupt("fields are not a JSON object"))?,
            model: row.model.clone(),
            reason: row.reason.clone(),
            updated_at: DateTime::from_naive_utc_and_offset(row.updated_at, Utc),
            version: row.version,
        })
    }

    pub fn topic(&self) -> Topic {
        Topic::Content(self.kind, self.subject_id)
    }
}

/// A validated `content:request`.
#[derive(Debug, Clone)]
pub struct ValidRequest {
    pub kind: ContentKind,
    pub subject_id: u64,
    pub context: Option<Context>,
    pub regenerate: bool,
}

/// Checks a request's fields; the message is shown to the client as it is.
pub fn validate(
    kind: ContentKind,
    subject_id: u64,
    context: Option<&Value>,
    regenerate: bool,
) -> Result<ValidRequest, String> {
    check_subject_id(subject_id)?;
    let context = match context {
        None | Some(Value::Null) => None,
        Some(v) => Some(Context::parse(Some(v)).map_err(|e| e.to_string())?),
    };
    Ok(ValidRequest { kind, subject_id, context, regenerate })
}

/// Subject ids are the game's u64 ids, stored as signed 64-bit integers.
pub fn check_subject_id(subject_id: u64) -> Result<i64, String> {
    i64::try_from(subject_id).map_err(|_| format!("subject_id must be at most {}", i64::MAX))
}

/// Requests, lookups and the wake-up of the LLM actor.
#[derive(Clone)]
pub struct ContentService {
    origin: Arc<str>,
    store: Store,
    clock: SharedClock,
    hub: Addr<Hub>,
    llm: Recipient<JobsAvailable>,
}

impl ContentService {
    pub fn new(
        origin: Arc<str>,
        store: Store,
        clock: SharedClock,
        hub: Addr<Hub>,
        llm: Recipient<JobsAvailable>,
    ) -> Self {
        ContentService { origin, store, clock, hub, llm }
    }

    /// Returns the item as it is, or creates / regenerates it (pending row + job, one
    /// transaction) and wakes the LLM actor.
    pub async fn request(&self, req: ValidRequest) -> Result<Content, StoreError> {
        let kind = req.kind.as_str();
        let subject_id = req.subject_id as i64;
        let context = req.context.as_ref().map(|c| serde_json::to_string(c).expect("context serializes"));
        let empty = Value::Object(req.kind.empty_fields()).to_string();
        let regenerate = req.regenerate;
        let now = self.clock.now_naive();
        let origin = self.origin.clone();
        let requested = self
            .store
            .run(move |conn| {
                let item = RequestItem {
                    origin: &origin,
                    kind,
                    subject_id,
                    context: context.as_deref(),
                    empty_fields: &empty,
                    regenerate,
                };
                rows::request(conn, &item, now)
            })
            .await?;
        let content = Content::from_row(requested.row())?;
        if requested.enqueued() {
            self.llm.do_send(JobsAvailable);
        }
        if let Requested::Regenerating(_) = requested {
            // Sessions already watching this item see it go back to pending.
            self.hub.do_send(Publish {
                topic: content.topic(),
                version: Some(content.version),
                frame: Typed::ContentUpdate { content: content.clone() }.into(),
            });
        }
        Ok(content)
    }

    pub async fn get(&self, kind: ContentKind, subject_id: u64) -> Result<Option<Content>, StoreError> {
        let Ok(subject_id) = check_subject_id(subject_id) else { return Ok(None) };
        let row = self.store.run(move |conn| rows::find(conn, kind.as_str(), subject_id)).await?;
        row.as_ref().map(Content::from_row).transpose()
    }
}
