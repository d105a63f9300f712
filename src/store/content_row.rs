//! A content item's row as stored, and the item as clients see it read from it.

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;

use super::schema::content;
use super::StoreError;
use crate::domain::content::{Content, ContentKind, ContentScope, ContentStatus, FallbackReason, SHARED_OWNER};

/// What a content row holds while its job has not committed a result.
pub(super) const PENDING: &str = ContentStatus::Pending.as_str();

/// The columns of a content row, in [`ContentRow`]'s order (for the statements written out).
pub(super) const COLUMNS: &str = "id, kind, subject_id, status, fields, context, model, reason, version, created_at, \
    updated_at, owner_id";

#[derive(Debug, Clone, Queryable, QueryableByName)]
#[diesel(table_name = content)]
pub struct ContentRow {
    pub id: i64,
    pub kind: String,
    pub subject_id: i64,
    pub status: String,
    pub fields: String,
    pub context: String,
    pub model: Option<String>,
    pub reason: Option<String>,
    pub version: i64,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
    /// The player whose own item it is, or [`SHARED_OWNER`].
    pub owner_id: i64,
}

impl ContentRow {
    fn corrupt(&self, what: &str) -> StoreError {
        StoreError::Corrupt(format!("content {}: {what}", self.id))
    }
    /// Its kind; an unknown one is [`StoreError::Corrupt`], naming the row.
    pub fn kind(&self) -> Result<ContentKind, StoreError> {
        ContentKind::parse(&self.kind).ok_or_else(|| self.corrupt("unknown kind"))
    }
    /// Whether its job has yet to commit a result.
    pub fn is_pending(&self) -> bool {
        self.status == ContentStatus::Pending.as_str()
    }
    /// The item as clients see it; a row that breaks the rules is [`StoreError::Corrupt`].
    pub fn content(&self) -> Result<Content, StoreError> {
        let corrupt = |what: &str| self.corrupt(what);
        Ok(Content {
            kind: self.kind()?,
            subject_id: u64::try_from(self.subject_id).map_err(|_| corrupt("negative subject_id"))?,
            scope: if self.owner_id == SHARED_OWNER { ContentScope::Shared } else { ContentScope::Player },
            owner_id: self.owner_id,
            status: ContentStatus::parse(&self.status).ok_or_else(|| corrupt("unknown status"))?,
            fields: serde_json::from_str(&self.fields).map_err(|_| corrupt("fields are not a JSON object"))?,
            model: self.model.clone(),
            reason: match &self.reason {
                Some(reason) => Some(FallbackReason::parse(reason).ok_or_else(|| corrupt("unknown fallback reason"))?),
                None => None,
            },
            updated_at: DateTime::from_naive_utc_and_offset(self.updated_at, Utc),
            version: self.version,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(kind: &str, status: &str) -> ContentRow {
        let t = chrono::DateTime::from_timestamp(0, 0).unwrap().naive_utc();
        ContentRow {
            id: 4,
            kind: kind.into(),
            subject_id: 7,
            status: status.into(),
            fields: "{}".into(),
            context: "{}".into(),
            model: None,
            reason: None,
            version: 1,
            created_at: t,
            updated_at: t,
            owner_id: 0,
        }
    }

    #[test]
    fn a_row_reads_as_its_domain_types() {
        for kind in ContentKind::ALL {
            for status in ContentStatus::ALL {
                let row = row(kind.as_str(), status.as_str());
                assert_eq!(row.kind().unwrap(), kind);
                assert_eq!(row.is_pending(), status == ContentStatus::Pending);
                let content = row.content().unwrap();
                assert_eq!((content.kind, content.status), (kind, status));
            }
        }
    }

    #[test]
    fn a_corrupt_value_is_an_error_naming_the_row() {
        let corrupt = |e: StoreError| match e {
            StoreError::Corrupt(why) => why,
            other => panic!("not corrupt: {other:?}"),
        };
        assert_eq!(corrupt(row("dragon", "ready").kind().unwrap_err()), "content 4: unknown kind");
        assert_eq!(corrupt(row("dragon", "ready").content().unwrap_err()), "content 4: unknown kind");
        assert_eq!(corrupt(row("quest", "done").content().unwrap_err()), "content 4: unknown status");
        assert!(!row("quest", "Pending").is_pending());
        let odd_reason = ContentRow { reason: Some("gremlins".into()), ..row("quest", "fallback") };
        assert_eq!(corrupt(odd_reason.content().unwrap_err()), "content 4: unknown fallback reason");
        let reason = ContentRow { reason: Some("api_error_503".into()), ..row("quest", "fallback") };
        assert_eq!(reason.content().unwrap().reason, Some(FallbackReason::ApiError(503)));
    }
}
