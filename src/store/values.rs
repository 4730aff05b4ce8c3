//! The store's value types: what callers hand the [`TaskStore`](super::TaskStore) and what it
//! answers (outcomes, counts, queries, errors). Plain data with no behaviour of their own beyond
//! what a new task becomes when stored; the stored task itself is in `record`.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::{CamundaLink, TaskRecord, TaskSource};
use crate::{
    domain::{Submission, TaskStatus},
    topics::ProcessingStep,
};

/// A store failure. `Unavailable` means "try again later" (503 at the HTTP edge).
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store error: {0}")]
    Other(String),
}

/// What `insert` found.
#[derive(Debug, Clone, PartialEq)]
pub enum InsertOutcome {
    /// A new task was stored.
    Created(Box<TaskRecord>),
    /// The id existed with the same body: an idempotent resubmit.
    Existing(Box<TaskRecord>),
    /// The id existed with a different body.
    Conflict(Box<TaskRecord>),
}

/// A new task as the store receives it.
#[derive(Debug, Clone)]
pub struct NewTask {
    pub submission: Submission,
    pub max_attempts: u32,
    pub source: TaskSource,
    pub camunda: CamundaLink,
    /// How long after it is stored the relay may publish it if the submitter's own publish has
    /// not been confirmed by then (the store turns it into a time on its own clock). `None` when
    /// a publish debt (see [`TaskStore::owe_publishes`](super::TaskStore::owe_publishes)) written before the task stands for it.
    pub publish_after: Option<std::time::Duration>,
    /// The trace it belongs to (see `trace`), stored so every later hop joins it.
    pub trace_id: Option<String>,
}

impl NewTask {
    /// The record the store writes for it, stored at `now`: queued, no attempt yet, its publish
    /// owed from `now` + `publish_after` (or by a publish debt). One constructor for the store's
    /// inserts and for whoever needs a record exactly as the store would write it.
    pub fn into_record(self, now: bson::DateTime) -> TaskRecord {
        super::mongo_docs::new_record(self, now)
    }

    /// A new `t` task from worker `w` with no variables, nothing owed to Camunda: for unit tests
    /// that need a record in some state.
    #[cfg(test)]
    pub(crate) fn sample(task_id: &str) -> Self {
        let body = serde_json::json!({"task_id": task_id, "worker_id": "w", "topic": "t"});
        let submission = Submission::parse(&body, &crate::domain::Limits::default())
            .expect("a sample submission is valid: the test chose its id");
        Self {
            submission,
            max_attempts: 3,
            source: TaskSource::Http,
            camunda: CamundaLink::not_applicable(),
            publish_after: None,
            trace_id: None,
        }
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum AttemptOutcome {
    Succeeded {
        result: Map<String, Value>,
    },
    /// Retryable failure with attempts left: run again `backoff` from now (the store's now).
    Retry {
        error: String,
        backoff: std::time::Duration,
    },
    /// Final failure: business error (with its code) or attempts exhausted.
    Failed {
        error: String,
        error_code: Option<String>,
    },
}

/// What became of one attempt to report a final outcome to Camunda.
#[derive(Debug, Clone, PartialEq)]
pub enum ReportOutcome {
    /// Delivered; `how` is what Camunda was told (`complete`, `bpmn_error CODE`, `incident`,
    /// `unlock`).
    Reported { how: String },
    /// Camunda's history shows the task ended by someone else's hand (`by`: its worker id), so
    /// the gateway's outcome never arrived.
    CompletedElsewhere { by: Option<String> },
    /// Final: Camunda refused (404/400) or the reporter gave up.
    Failed { error: String },
    /// Camunda unreachable: try again `after` from now (the store's now).
    Retry { error: String, after: std::time::Duration },
}

/// Owed reports to Camunda as the store counts them (for the gauges).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReportCounts {
    /// Final tasks whose report is still owed (`pending`).
    pub owed: u64,
    /// Reports given up (`report_failed`), waiting for a re-send by hand.
    pub failed: u64,
    /// When the earliest-completed task whose report is owed completed.
    pub oldest_owed: Option<DateTime<Utc>>,
}

/// One attempt's end, for `finish_batch`.
#[derive(Debug, Clone)]
pub struct Finish {
    pub task_id: String,
    pub attempt: u32,
    pub elapsed_ms: i64,
    pub steps: Vec<ProcessingStep>,
    pub outcome: AttemptOutcome,
    /// Whether the caller needs the task as it stands afterwards (to report it to Camunda);
    /// if not, the batch spares itself the read.
    pub read_back: bool,
}

/// How recording an attempt's end went.
#[derive(Debug, Clone)]
pub enum Finished {
    /// Written; the task as it now stands, if it was asked for.
    Written(Option<Box<TaskRecord>>),
    /// Matched nothing: the attempt no longer holds the task.
    Missed,
}

/// Why a user-requested transition (cancel, retry) was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransitionError {
    #[error("task not found")]
    NotFound,
    #[error("task is {0:?}")]
    WrongState(TaskStatus),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Filters and page for `GET /tasks`.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub status: Option<TaskStatus>,
    pub topic: Option<String>,
    pub worker_id: Option<String>,
    /// Continue after this (created_at millis, task id).
    pub after: Option<(i64, String)>,
    pub limit: u32,
}

/// Counts for `GET /tasks/statistics`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Statistics {
    pub total: u64,
    pub by_status: Vec<(TaskStatus, u64)>,
    pub by_topic: Vec<(String, u64)>,
    pub by_worker: Vec<(String, u64)>,
    pub average_processing_time_ms: Option<f64>,
}
