//! Where a generated item stands (a content item, or a lobby message's mood): pending until its
//! job commits, then ready (the model's answer) or fallback. Pure; never does I/O.

use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = ContentStatus)]
#[cfg_attr(test, derive(ts_rs::TS))]
pub enum Status {
    Pending,
    Ready,
    Fallback,
}

impl Status {
    pub const ALL: [Status; 3] = [Status::Pending, Status::Ready, Status::Fallback];

    pub const fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Ready => "ready",
            Status::Fallback => "fallback",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|status| status.as_str() == s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for status in Status::ALL {
            assert_eq!(Status::parse(status.as_str()), Some(status));
            assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
        }
        assert_eq!(Status::parse("Ready"), None);
    }
}
