//! The task lifecycle in one place: which events move a task from which state to which. The store
//! turns each transition into a single conditional update whose filter is the set of states the
//! event may leave from, so two racing writers can never both win.

use serde::{Deserialize, Serialize};

/// Where a task is in its life. Stored in English; rendered per [`StatusLabels`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Queued,
    Processing,
    Retrying,
    Succeeded,
    Failed,
    Cancelled,
}

impl TaskStatus {
    pub const ALL: [TaskStatus; 6] =
        [Self::Queued, Self::Processing, Self::Retrying, Self::Succeeded, Self::Failed, Self::Cancelled];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Processing => "processing",
            Self::Retrying => "retrying",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// The seed gateway's Portuguese label; workers written for it compare with these.
    pub fn seed_label(self) -> &'static str {
        match self {
            Self::Queued | Self::Retrying => "aguardando",
            Self::Processing => "em_andamento",
            Self::Succeeded => "sucesso",
            Self::Failed => "erro",
            Self::Cancelled => "cancelado",
        }
    }

    /// Accepts either vocabulary, so `GET /tasks?status=sucesso` works in seed mode too.
    /// `aguardando` is ambiguous (queued or retrying) and maps to queued.
    pub fn parse_label(label: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str() == label)
            .or_else(|| Self::ALL.into_iter().find(|s| s.seed_label() == label))
    }

    /// Queued or retrying: waiting for a delivery to claim it.
    pub fn is_waiting(self) -> bool {
        matches!(self, Self::Queued | Self::Retrying)
    }

    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

/// How status values are rendered in API answers (`STATUS_LABELS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatusLabels {
    #[default]
    English,
    Seed,
}

impl StatusLabels {
    pub fn render(self, status: TaskStatus) -> &'static str {
        match self {
            Self::English => status.as_str(),
            Self::Seed => status.seed_label(),
        }
    }
}

/// Something that happens to a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A consumer takes the task for an attempt.
    Claim,
    /// The handler returned variables.
    Succeed,
    /// The handler failed and may be retried later (attempts remain).
    FailRetryable,
    /// The handler failed for good: business error, or attempts exhausted.
    FailFinal,
    /// A processing lease expired with attempts left: the consumer is presumed dead.
    LeaseExpired,
    /// `DELETE /tasks/{id}`.
    Cancel,
    /// `POST /tasks/{id}/retry`.
    ManualRetry,
}

/// A legal move: the states it may start from and the state it ends in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub from: &'static [TaskStatus],
    pub to: TaskStatus,
}

impl Event {
    /// The single source of truth for the lifecycle diagram in DESIGN.md.
    pub fn transition(self) -> Transition {
        use TaskStatus::*;
        let (from, to): (&'static [TaskStatus], TaskStatus) = match self {
            Event::Claim => (&[Queued, Retrying], Processing),
            Event::Succeed => (&[Processing], Succeeded),
            Event::FailRetryable => (&[Processing], Retrying),
            Event::FailFinal => (&[Processing], Failed),
            Event::LeaseExpired => (&[Processing], Retrying),
            Event::Cancel => (&[Queued, Retrying], Cancelled),
            Event::ManualRetry => (&[Failed, Cancelled], Queued),
        };
        Transition { from, to }
    }

    /// The state after this event, or `None` if the event is not allowed from `state`.
    pub fn apply(self, state: TaskStatus) -> Option<TaskStatus> {
        let t = self.transition();
        t.from.contains(&state).then_some(t.to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_allows_exactly_the_documented_moves() {
        use TaskStatus::*;
        assert_eq!(Event::Claim.apply(Queued), Some(Processing));
        assert_eq!(Event::Claim.apply(Retrying), Some(Processing));
        assert_eq!(Event::Claim.apply(Processing), None);
        assert_eq!(Event::Claim.apply(Succeeded), None);
        assert_eq!(Event::Succeed.apply(Processing), Some(Succeeded));
        assert_eq!(Event::Succeed.apply(Queued), None);
        assert_eq!(Event::FailRetryable.apply(Processing), Some(Retrying));
        assert_eq!(Event::Cancel.apply(Processing), None);
        assert_eq!(Event::Cancel.apply(Retrying), Some(Cancelled));
        assert_eq!(Event::ManualRetry.apply(Succeeded), None);
        assert_eq!(Event::ManualRetry.apply(Cancelled), Some(Queued));
    }

    #[test]
    fn final_states_have_no_way_out_but_manual_retry() {
        let events =
            [Event::Claim, Event::Succeed, Event::FailRetryable, Event::FailFinal, Event::LeaseExpired, Event::Cancel];
        for state in TaskStatus::ALL.into_iter().filter(|s| s.is_final()) {
            for event in events {
                assert_eq!(event.apply(state), None, "{event:?} from {state:?}");
            }
        }
    }

    #[test]
    fn seed_labels_round_trip() {
        assert_eq!(StatusLabels::Seed.render(TaskStatus::Succeeded), "sucesso");
        assert_eq!(TaskStatus::parse_label("erro"), Some(TaskStatus::Failed));
        assert_eq!(TaskStatus::parse_label("processing"), Some(TaskStatus::Processing));
        assert_eq!(TaskStatus::parse_label("nope"), None);
    }
}
