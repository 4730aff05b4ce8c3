//! Task routes: submit, status, retry, cancel, list and statistics. Input is validated here,
//! completely, before anything reaches the store. Submitting lives here; the status read (with
//! its wait) is in `tasks/status`, the list and statistics in `tasks/listing`, and the hand-made
//! transitions in `operate`.

mod listing;
mod status;

use axum::{
    Json, Router,
    body::Bytes,
    extract::{State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode, header},
    routing::{delete, get, post},
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

// The `__path_*` items are what `#[utoipa::path]` generates beside each handler; `ApiDoc` names
// the handlers as `tasks::…`, so they are re-exported with them.
pub use listing::{__path_list, __path_statistics, list, statistics};
pub use status::{__path_status, status};

use super::{ApiError, AppState, error::ErrorBody};
use crate::{
    auth::Caller,
    config::InvalidSubmissions,
    domain::{FieldError, Submission},
    store::{CamundaLink, InsertOutcome, NewTask, TaskSource},
    topics::Topic,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/tasks/submit", post(submit))
        .route("/tasks/statistics", get(statistics))
        .route("/tasks", get(list))
        .route("/tasks/{task_id}/status", get(status))
        .route("/tasks/{task_id}/retry", post(super::operate::retry))
        .route("/tasks/{task_id}/report", post(super::operate::resend_report))
        .route("/tasks/{task_id}", delete(super::operate::cancel))
}

/// What a worker submits. The variables a topic needs are its own (`GET /topics`), e.g.:
///
/// - `say_hello`: `name` (optional, default `World`).
/// - `nova_publicacao`: required `numero_processo`, `data_publicacao` (`dd/mm/yyyy`,
///   `dd-mm-yyyy` or `dd.mm.yyyy`, a real date), `texto_publicacao` (with letters or digits) and
///   `fonte` (`dw`, `manual` or `escavador`); optional `tribunal` (string) and `instancia` (string
///   or number). Missing fields are refused here (422); wrong formats fail the task as a
///   `validation` business error, never retried.
#[derive(Deserialize, ToSchema)]
#[allow(dead_code)] // documents the body; parsing goes through `Submission::parse`
pub struct SubmitRequest {
    /// Camunda's external task id (or any unique id): letters, digits, `-_.:`, at most 128.
    task_id: String,
    /// The submitting (Camunda-locking) worker's id.
    worker_id: String,
    /// A registered topic (see `GET /topics`).
    topic: String,
    /// Input variables: names MongoDB can store (no `$` prefix, no `.`).
    #[schema(value_type = Option<Object>)]
    variables: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Serialize, ToSchema)]
pub struct SubmitResponse {
    /// Always `submitted`.
    pub status: &'static str,
    pub task_id: String,
    pub message: String,
    /// False when this was an idempotent resubmit of an existing task.
    pub created: bool,
}

/// Parses a JSON body, answering with the shared error shape for every way it can be wrong.
fn json_body(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<serde_json::Value, ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if !(essence == "application/json" || essence.ends_with("+json")) {
        return Err(ApiError::UnsupportedMediaType(format!(
            "expected Content-Type application/json, got {:?}",
            if content_type.is_empty() { "nothing" } else { content_type }
        )));
    }
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(limit)
        } else {
            ApiError::malformed(format!("could not read the body: {e}"))
        }
    })?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::malformed(format!("malformed JSON: {e}")))
}

/// Store a task durably and queue it. A 200 means it is in MongoDB; it will be processed even
/// if RabbitMQ is down right now.
#[utoipa::path(post, path = "/tasks/submit", tag = "tasks",
    request_body(content = SubmitRequest, description = "a task for a registered topic", examples(
        ("hello" = (summary = "say_hello: greets `name`", value = json!(
            {"task_id": "demo-1", "worker_id": "demo-worker", "topic": "say_hello", "variables": {"name": "Ada"}}))),
        ("publication" = (summary = "nova_publicacao: records a court publication once", value = json!(
            {"task_id": "demo-2", "worker_id": "demo-worker", "topic": "nova_publicacao", "variables": {
                "numero_processo": "0001234-56.2024.8.26.0100", "data_publicacao": "15/03/2024",
                "texto_publicacao": "Intimação: o réu deverá se manifestar em 15 dias.", "fonte": "dw",
                "tribunal": "TJSP", "instancia": 1}}))),
    )),
    responses(
    (status = 200, body = SubmitResponse, description = "stored (created:false on an idempotent resubmit)",
        example = json!({"status": "submitted", "task_id": "demo-1", "message": "Task submitted successfully", "created": true})),
    (status = 400, body = ErrorBody, description = "malformed JSON"),
    (status = 409, body = ErrorBody, description = "same task_id, different body"),
    (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
    (status = 422, body = ErrorBody, description = "invalid fields or unknown topic; `details` lists each",
        example = json!({"status": "error", "error_code": "VALIDATION_ERROR", "error_message": "required variables missing",
            "retry_allowed": false, "timestamp": "2024-03-15T12:00:00Z", "path": "/tasks/submit",
            "details": [{"field": "variables.fonte", "message": "is required by topic nova_publicacao"}]})),
    (status = 503, body = ErrorBody, description = "store unreachable"),
))]
#[tracing::instrument(skip_all, fields(task_id, topic))]
pub async fn submit(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<SubmitResponse>, ApiError> {
    let value = json_body(&headers, body, state.settings.max_body_bytes)?;
    // Who may submit what comes before whether it is valid (and before recording it as failed).
    let field = |name: &str| value.get(name).and_then(serde_json::Value::as_str).unwrap_or_default();
    caller.may_submit(field("topic"), field("worker_id"))?;
    let (submission, topic) = match validate(&state, &value) {
        Ok(valid) => valid,
        Err((message, details)) if state.settings.invalid_submissions == InvalidSubmissions::Record => {
            return super::refusals::record(&state, &value, &message, details).await.map(Json);
        }
        Err((message, details)) => return Err(ApiError::invalid(message, details)),
    };
    let span = tracing::Span::current();
    span.record("task_id", submission.task_id.as_str());
    span.record("topic", submission.topic.as_str());
    let new = NewTask {
        submission: submission.clone(),
        max_attempts: topic.spec.retry.max_attempts,
        source: TaskSource::Http,
        camunda: if state.camunda.is_some() { CamundaLink::pending() } else { CamundaLink::not_applicable() },
        // The intake's publish window owes this task's publish.
        publish_after: None,
        trace_id: crate::trace::current().map(|t| t.trace_id),
    };
    let task_id = submission.task_id.to_string();
    match state.intake.submit(new).await? {
        InsertOutcome::Created(task) => {
            state.metrics.submitted(&task.topic, "created");
            // Stored; the intake publishes it next, and the relay does if that publish fails.
            tracing::info!("task submitted");
            Ok(Json(SubmitResponse {
                status: "submitted",
                task_id,
                message: "Task submitted successfully".into(),
                created: true,
            }))
        }
        InsertOutcome::Existing(task) => {
            state.metrics.submitted(&task.topic, "existing");
            Ok(Json(SubmitResponse {
                status: "submitted",
                task_id,
                message: "Task already submitted with the same body".into(),
                created: false,
            }))
        }
        InsertOutcome::Conflict(_) => Err(ApiError::Conflict(format!(
            "task {task_id} exists with a different worker_id, topic or variables; the original is unchanged"
        ))),
    }
}

/// Everything a submission must be, checked before anything is stored: its fields, a registered
/// topic, and the variables the topic requires. `Err` carries the summary and every offending
/// field.
fn validate<'s>(
    state: &'s AppState,
    value: &serde_json::Value,
) -> Result<(Submission, &'s Topic), (String, Vec<FieldError>)> {
    let submission = Submission::parse(value, &state.settings.limits)
        .map_err(|details| ("invalid submission".to_owned(), details))?;
    let Some(topic) = state.registry.get(submission.topic.as_str()) else {
        let known: Vec<&str> = state.registry.names().collect();
        let message =
            format!("topic {:?} is not registered; registered topics: {}", submission.topic.as_str(), known.join(", "));
        return Err((message.clone(), vec![FieldError::new("topic", message)]));
    };
    let missing: Vec<FieldError> = topic
        .spec
        .required_variables
        .iter()
        .filter(|v| !submission.variables.contains_key(*v))
        .map(|v| FieldError::new(format!("variables.{v}"), format!("is required by topic {}", topic.spec.name)))
        .collect();
    if !missing.is_empty() {
        return Err(("required variables missing".to_owned(), missing));
    }
    Ok((submission, topic))
}
