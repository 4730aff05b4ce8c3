//! `INVALID_SUBMISSIONS=record`: a submission that fails validation is answered 200 and stored as
//! a task already `failed`, its error saying exactly why. The seed's workers count any answer but
//! 200 as the gateway being down and fail the Camunda task minutes later with "Worker API Gateway
//! is unavailable"; recorded, the reason reaches them through their own status poll (and, in
//! report mode, reaches Camunda as the topic's validation error or an incident).
//!
//! Only what has an identity can be recorded: a body whose `task_id`, `worker_id` or `topic` is
//! unusable is still refused with the usual 4xx, as is malformed JSON.

use serde_json::{Map, Value};

use super::{ApiError, AppState, tasks::SubmitResponse};
use crate::{
    domain::{FieldError, Submission, TaskId, TopicName, WorkerId},
    store::{CamundaLink, InsertOutcome, NewTask, TaskSource},
};

/// Stores the refused submission `value` as a failed task; `message` and `details` say why.
pub async fn record(
    state: &AppState,
    value: &Value,
    message: &str,
    details: Vec<FieldError>,
) -> Result<SubmitResponse, ApiError> {
    let Some(submission) = identity(state, value) else {
        return Err(ApiError::invalid(message, details));
    };
    let fields: Vec<String> = details.iter().map(|d| format!("{} {}", d.field, d.message)).collect();
    let reason = format!("invalid submission: {}", fields.join("; "));
    let topic = state.registry.get(submission.topic.as_str());
    let task_id = submission.task_id.to_string();
    let new = NewTask {
        submission,
        max_attempts: topic.map_or(1, |t| t.spec.retry.max_attempts),
        source: TaskSource::Http,
        camunda: if state.camunda.is_some() { CamundaLink::pending() } else { CamundaLink::not_applicable() },
        publish_after: None,
        trace_id: crate::trace::current().map(|t| t.trace_id),
    };
    let created = match state.store.insert_refused(new, &reason).await? {
        InsertOutcome::Created(task) => {
            state.metrics.submitted(&task.topic, "refused");
            tracing::warn!(task_id, %reason, "invalid submission recorded as a failed task");
            true
        }
        InsertOutcome::Existing(_) => false,
        InsertOutcome::Conflict(_) => {
            return Err(ApiError::Conflict(format!(
                "task {task_id} exists with a different worker_id, topic or variables; the original is unchanged"
            )));
        }
    };
    Ok(SubmitResponse { status: "submitted", task_id, message: format!("Task recorded as failed: {reason}"), created })
}

/// The submission as far as it can be stored: its ids, and its variables when they passed the
/// checks (otherwise none: some may not even be storable, and the error names them).
fn identity(state: &AppState, value: &Value) -> Option<Submission> {
    if let Ok(valid) = Submission::parse(value, &state.settings.limits) {
        return Some(valid);
    }
    let max = state.settings.limits.max_id_length;
    let field = |name: &str| value.get(name).and_then(Value::as_str);
    Some(Submission {
        task_id: TaskId::parse(field("task_id")?, max).ok()?,
        worker_id: WorkerId::parse(field("worker_id")?, max).ok()?,
        topic: TopicName::parse(field("topic")?, max).ok()?,
        variables: Map::new(),
    })
}
