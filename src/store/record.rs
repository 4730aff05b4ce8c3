//! The stored shape of a task. Field names are the MongoDB document's; timestamps are BSON dates
//! so range queries and indexes work on them.

use bson::DateTime as BsonDate;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{domain::TaskStatus, topics::ProcessingStep};

/// How the task reached the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskSource {
    Http,
    Amqp,
    Camunda,
}

/// Delivery of the final outcome to Camunda.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReportState {
    /// No Camunda link: the worker reports itself.
    NotApplicable,
    Pending,
    Reported,
    /// Camunda's history shows another hand ended the task; the gateway's outcome never arrived.
    CompletedElsewhere,
    ReportFailed,
}

/// The task's link to Camunda.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CamundaLink {
    /// Whether outcomes are reported to Camunda (report mode, or a pulled task).
    #[serde(default)]
    pub linked: bool,
    pub report_state: ReportState,
    /// When the owed report may be sent (or sent again); held forward while a reporter sends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_due_at: Option<BsonDate>,
    /// Pull mode: when the gateway's lock at Camunda runs out unless extended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_expires_at: Option<BsonDate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_instance_id: Option<String>,
    /// Pull mode: the replica (one gateway process) whose poller locked the task, so that its
    /// shutdown hands back its own locks and no other replica's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pulled_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_attempts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_report_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_at: Option<BsonDate>,
    /// What Camunda was told: `complete`, `bpmn_error CODE`, `incident`, `unlock`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_as: Option<String>,
    /// `completed_elsewhere`: the worker id Camunda's history names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_by: Option<String>,
}

impl CamundaLink {
    pub fn not_applicable() -> Self {
        Self {
            linked: false,
            report_state: ReportState::NotApplicable,
            report_due_at: None,
            lock_expires_at: None,
            process_instance_id: None,
            pulled_by: None,
            report_attempts: None,
            last_report_error: None,
            reported_at: None,
            reported_as: None,
            completed_by: None,
        }
    }

    /// A task whose final outcome is owed to Camunda.
    pub fn pending() -> Self {
        Self { linked: true, report_state: ReportState::Pending, ..Self::not_applicable() }
    }
}

/// Who did what to a task by hand (cancel, retry, report re-send), and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// `cancel`, `retry` or `resend_report`.
    pub action: String,
    /// The API key id (`anonymous` without one), or the gateway itself (`gateway`).
    pub by: String,
    pub at: BsonDate,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    #[serde(rename = "_id")]
    pub task_id: String,
    pub worker_id: String,
    pub topic: String,
    #[serde(default)]
    pub variables: Map<String, Value>,
    /// Digest of worker, topic and variables: tells an idempotent resubmit from a conflict.
    pub fingerprint: String,
    pub source: TaskSource,
    pub status: TaskStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub substatus: Option<String>,
    pub attempts: u32,
    pub max_attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    /// Retryable failures so far (the seed's `metadata.retries`).
    #[serde(default)]
    pub retries: u32,
    #[serde(default)]
    pub processing_steps: Vec<ProcessingStep>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processing_time_ms: Option<i64>,
    pub created_at: BsonDate,
    pub updated_at: BsonDate,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<BsonDate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<BsonDate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_until: Option<BsonDate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<BsonDate>,
    /// Set while a publish is owed: the relay publishes once this time has passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish_due_at: Option<BsonDate>,
    pub camunda: CamundaLink,
    /// The W3C trace the task belongs to (32 hex digits): the submitter's, or one begun for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// Hand-made changes, oldest first (the last 50).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audit: Vec<AuditEntry>,
}
