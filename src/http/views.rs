//! Response bodies: how a stored task is shown. Status values render per `STATUS_LABELS`.

use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::{
    domain::{StatusLabels, TaskStatus},
    store::{ReportState, TaskRecord},
    topics::ProcessingStep,
};

fn iso(d: bson::DateTime) -> String {
    d.to_chrono().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Timestamps {
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
    pub last_updated: String,
    /// When a retrying task runs again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StepView {
    pub step: String,
    pub status: String,
    pub at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl From<&ProcessingStep> for StepView {
    fn from(s: &ProcessingStep) -> Self {
        Self {
            step: s.step.clone(),
            status: s.status.clone(),
            at: s.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            detail: s.detail.clone(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Metadata {
    /// Retryable failures so far.
    pub retries: u32,
    pub max_attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    pub processing_steps: Vec<StepView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub processing_time_ms: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CamundaView {
    pub report_state: ReportState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report_attempts: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_report_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reported_at: Option<String>,
    /// What Camunda was told: `complete`, `bpmn_error CODE`, `incident` or `unlock`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reported_as: Option<String>,
    /// `completed_elsewhere`: the worker id Camunda's history names as having ended the task.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed_by: Option<String>,
}

/// One hand-made change: who (API key id) did what, when.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditView {
    /// `cancel`, `retry` or `resend_report`.
    pub action: String,
    pub by: String,
    pub at: String,
}

/// `GET /tasks/{task_id}/status`, and each item of `GET /tasks`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskView {
    pub task_id: String,
    pub worker_id: String,
    pub topic: String,
    /// queued, processing, retrying, succeeded, failed, cancelled (or the seed's labels).
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub substatus: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub result: Option<Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    /// Attempts started so far.
    pub attempts: u32,
    pub timestamps: Timestamps,
    pub metadata: Metadata,
    pub camunda: CamundaView,
    /// The task's input variables, with `?include=variables` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variables: Option<Map<String, Value>>,
    /// The W3C trace id every hop of this task joins (logs, AMQP headers, downstream and
    /// Camunda calls): the submitter's `traceparent`, or one begun for the task.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// Cancels, retries and report re-sends by hand, oldest first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub audit: Vec<AuditView>,
}

/// The status a caller sees. With the seed's labels, for the seed's workers, which know only
/// `sucesso` and `erro` and complete or fail the Camunda task themselves on seeing one:
/// - a task whose outcome the gateway reports to Camunda shows `em_andamento` until the report
///   has failed for good, so the worker never races the gateway to complete it, and completes it
///   itself only as the fallback;
/// - `cancelled` shows `erro` (its error message says it was cancelled), so a worker fails the
///   task instead of waiting for a label it does not know.
pub fn shown_status(t: &TaskRecord, labels: StatusLabels) -> &'static str {
    if labels == StatusLabels::English {
        return labels.render(t.status);
    }
    let gateway_reports = t.camunda.linked && t.camunda.report_state != ReportState::ReportFailed;
    match t.status {
        status if status.is_final() && gateway_reports => labels.render(TaskStatus::Processing),
        TaskStatus::Cancelled => labels.render(TaskStatus::Failed),
        status => labels.render(status),
    }
}

impl TaskView {
    pub fn new(t: &TaskRecord, labels: StatusLabels) -> Self {
        Self {
            task_id: t.task_id.clone(),
            worker_id: t.worker_id.clone(),
            topic: t.topic.clone(),
            status: shown_status(t, labels).to_owned(),
            substatus: t.substatus.clone(),
            result: t.result.clone(),
            error_message: t.error_message.clone(),
            attempts: t.attempts,
            timestamps: Timestamps {
                created_at: iso(t.created_at),
                started_at: t.started_at.map(iso),
                completed_at: t.completed_at.map(iso),
                last_updated: iso(t.updated_at),
                next_attempt_at: t.next_attempt_at.filter(|_| !t.status.is_final()).map(iso),
            },
            metadata: Metadata {
                retries: t.retries,
                max_attempts: t.max_attempts,
                error_message: t.error_message.clone(),
                error_code: t.error_code.clone(),
                processing_steps: t.processing_steps.iter().map(StepView::from).collect(),
                processing_time_ms: t.processing_time_ms,
            },
            camunda: CamundaView {
                report_state: t.camunda.report_state,
                report_attempts: t.camunda.report_attempts,
                last_report_error: t.camunda.last_report_error.clone(),
                reported_at: t.camunda.reported_at.map(iso),
                reported_as: t.camunda.reported_as.clone(),
                completed_by: t.camunda.completed_by.clone(),
            },
            variables: None,
            trace_id: t.trace_id.clone(),
            audit: t
                .audit
                .iter()
                .map(|a| AuditView { action: a.action.clone(), by: a.by.clone(), at: iso(a.at) })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::CamundaLink;

    fn task(status: TaskStatus, camunda: CamundaLink) -> TaskRecord {
        let record = crate::store::NewTask::sample("t").into_record(bson::DateTime::now());
        TaskRecord { status, attempts: 1, camunda, ..record }
    }

    #[test]
    fn seed_workers_see_a_final_label_only_when_they_must_act_on_it() {
        let seed = StatusLabels::Seed;
        let mut failed_report = CamundaLink::pending();
        failed_report.report_state = ReportState::ReportFailed;
        let mut reported = CamundaLink::pending();
        reported.report_state = ReportState::Reported;
        let cases = [
            // Seed style: the worker reports, so it sees the outcome at once.
            (TaskStatus::Succeeded, CamundaLink::not_applicable(), "sucesso"),
            (TaskStatus::Cancelled, CamundaLink::not_applicable(), "erro"),
            // Report mode: the gateway reports; the worker keeps waiting...
            (TaskStatus::Succeeded, CamundaLink::pending(), "em_andamento"),
            (TaskStatus::Failed, reported, "em_andamento"),
            (TaskStatus::Cancelled, CamundaLink::pending(), "em_andamento"),
            // ...unless the report failed for good: then it completes the task itself.
            (TaskStatus::Succeeded, failed_report.clone(), "sucesso"),
            (TaskStatus::Cancelled, failed_report, "erro"),
            (TaskStatus::Queued, CamundaLink::pending(), "aguardando"),
        ];
        for (status, link, shown) in cases {
            let report_state = link.report_state;
            assert_eq!(shown_status(&task(status, link), seed), shown, "{status:?} with report {report_state:?}");
        }
        assert_eq!(
            shown_status(&task(TaskStatus::Succeeded, CamundaLink::pending()), StatusLabels::English),
            "succeeded"
        );
    }
}
