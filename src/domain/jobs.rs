//! The durable job queue's closed sets: what a job does ([`JobKind`]) and where it stands
//! ([`JobStatus`]), with the names the `jobs` table stores. Pure; the queue itself is
//! `store::jobs` and the worker `jobs/`.

/// What a job works on; `target_id` names the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobKind {
    /// Generate the fields of a content item (`target_id` = content.id).
    Content,
    /// Execute one attempt of a generation run (`target_id` = runs.id).
    Run,
    /// Classify the mood of a lobby message (`target_id` = messages.id).
    Mood,
}

impl JobKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            JobKind::Content => "content",
            JobKind::Run => "run",
            JobKind::Mood => "mood",
        }
    }

    /// `None` for a kind this version does not run (a newer version's, or a corrupt row).
    pub fn parse(s: &str) -> Option<JobKind> {
        match s {
            "content" => Some(JobKind::Content),
            "run" => Some(JobKind::Run),
            "mood" => Some(JobKind::Mood),
            _ => None,
        }
    }
}

/// Where a job stands: waiting its turn, held by a worker, or buried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobStatus {
    /// Due at its `run_after`, for any worker to claim.
    Queued,
    /// Claimed: `locked_by` a worker whose lease (`locked_at`) it renews.
    Running,
    /// Buried: its target could not be given even its final state; never claimed again.
    Dead,
}

impl JobStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> Option<JobStatus> {
        [JobStatus::Queued, JobStatus::Running, JobStatus::Dead].into_iter().find(|status| status.as_str() == s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for kind in [JobKind::Content, JobKind::Run, JobKind::Mood] {
            assert_eq!(JobKind::parse(kind.as_str()), Some(kind));
        }
        for status in [JobStatus::Queued, JobStatus::Running, JobStatus::Dead] {
            assert_eq!(JobStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(JobKind::parse("content_v2"), None);
        assert_eq!(JobStatus::parse("done"), None);
    }
}
