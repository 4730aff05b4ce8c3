//! Task routes: submit, status, retry, cancel, list and statistics. Input is validated here,
//! completely, before anything reaches the store.

use std::collections::BTreeMap;

use axum::{
    Json, Router,
    body::Bytes,
    extract::{
        Path, Query, State,
        rejection::{BytesRejection, QueryRejection},
    },
    http::{HeaderMap, StatusCode, header},
    routing::{delete, get, post},
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{ApiError, AppState, TaskView, error::ErrorBody};
use crate::{
    auth::Caller,
    config::InvalidSubmissions,
    domain::{FieldError, Submission, TaskStatus},
    store::{CamundaLink, InsertOutcome, ListQuery, NewTask, TaskSource},
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

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatusParams {
    /// Seconds (up to `STATUS_WAIT_MAX_SECONDS`, 60) to wait for the task to be final — its
    /// shown status succeeded, failed or cancelled (with seed labels: `sucesso`/`erro`) — before
    /// answering; on timeout the answer is the current state. Absent or 0: answer at once.
    #[param(value_type = Option<f64>, minimum = 0)]
    wait: Option<String>,
    /// `variables`: the answer carries the task's input variables too (left out by default:
    /// workers poll this route, and the variables may be large).
    #[param(example = "variables")]
    include: Option<String>,
}

/// A task's status, result and history; with `?wait=`, once it is final.
#[utoipa::path(get, path = "/tasks/{task_id}/status", tag = "tasks",
    params(("task_id" = String, Path, description = "task id", example = "demo-1"), StatusParams),
    responses((status = 200, body = TaskView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn status(
    State(state): State<AppState>,
    Path(task_id): Path<String>,
    params: Result<Query<StatusParams>, QueryRejection>,
) -> Result<Json<TaskView>, ApiError> {
    let Query(p) = params.map_err(|e| ApiError::malformed(format!("bad query: {}", e.body_text())))?;
    let with_variables = match p.include.as_deref() {
        None | Some("") => false,
        Some("variables") => true,
        Some(other) => {
            let detail = crate::domain::FieldError::new("include", format!("{other:?} is not `variables`"));
            return Err(ApiError::Validation {
                status: StatusCode::BAD_REQUEST,
                message: "invalid query".into(),
                details: vec![detail],
            });
        }
    };
    let wait = crate::events::parse_wait(p.wait.as_deref(), state.settings.events.status_wait_max).map_err(|e| {
        ApiError::Validation { status: StatusCode::BAD_REQUEST, message: "invalid query".into(), details: vec![e] }
    })?;
    let labels = state.settings.status_labels;
    let shown_final = |t: &crate::store::TaskRecord| {
        TaskStatus::parse_label(super::views::shown_status(t, labels)).is_some_and(TaskStatus::is_final)
    };
    match state.events.wait_for_task(state.store.as_ref(), &task_id, wait, shown_final).await? {
        Some(task) => {
            let mut view = TaskView::new(&task, state.settings.status_labels);
            if with_variables {
                view.variables = Some(task.variables);
            }
            Ok(Json(view))
        }
        None => Err(ApiError::NotFound(format!("task {task_id} not found"))),
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Filter by status (English or seed label).
    status: Option<String>,
    topic: Option<String>,
    worker_id: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
}

#[derive(Serialize, ToSchema)]
pub struct TaskPage {
    pub tasks: Vec<TaskView>,
    pub count: usize,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

const CURSOR_SEP: char = '~';

/// Tasks, newest first, with filters and cursor pagination.
#[utoipa::path(get, path = "/tasks", tag = "tasks", params(ListParams),
    responses((status = 200, body = TaskPage),
        (status = 400, body = ErrorBody, description = "a malformed query (`limit=abc`), an unknown status, a limit outside 1..500 or a cursor this API did not issue; `details` lists each")))]
pub async fn list(
    State(state): State<AppState>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<TaskPage>, ApiError> {
    let Query(mut p) = params.map_err(|e| ApiError::malformed(format!("bad query: {}", e.body_text())))?;
    // `?status=` (a form left blank) means "no filter", as it does for most web APIs.
    for field in [&mut p.status, &mut p.topic, &mut p.worker_id, &mut p.cursor] {
        field.take_if(|v| v.is_empty());
    }
    let mut errors = Vec::new();
    let status = p.status.as_deref().and_then(|s| {
        let parsed = TaskStatus::parse_label(s);
        if parsed.is_none() {
            errors.push(FieldError::new("status", format!("unknown status {s:?}")));
        }
        parsed
    });
    let limit = p.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        errors.push(FieldError::new("limit", "must be between 1 and 500"));
    }
    let after = p.cursor.as_deref().and_then(|c| {
        let parsed = c.split_once(CURSOR_SEP).and_then(|(ms, id)| Some((ms.parse::<i64>().ok()?, id.to_owned())));
        if parsed.is_none() {
            errors.push(FieldError::new("cursor", "not a cursor this API issued"));
        }
        parsed
    });
    if !errors.is_empty() {
        return Err(ApiError::Validation {
            status: StatusCode::BAD_REQUEST,
            message: "invalid query".into(),
            details: errors,
        });
    }
    let query = ListQuery { status, topic: p.topic, worker_id: p.worker_id, after, limit };
    let tasks = state.store.list(&query).await?;
    let next_cursor = (tasks.len() == limit as usize)
        .then(|| tasks.last().map(|t| format!("{}{CURSOR_SEP}{}", t.created_at.timestamp_millis(), t.task_id)))
        .flatten();
    let tasks: Vec<TaskView> = tasks.iter().map(|t| TaskView::new(t, state.settings.status_labels)).collect();
    Ok(Json(TaskPage { count: tasks.len(), tasks, next_cursor }))
}

#[derive(Serialize, ToSchema)]
pub struct StatisticsView {
    pub total_tasks: u64,
    pub by_status: BTreeMap<String, u64>,
    pub by_topic: BTreeMap<String, u64>,
    pub by_worker: BTreeMap<String, u64>,
    /// Mean duration of the last attempt of finished tasks.
    pub average_processing_time_ms: Option<f64>,
    /// succeeded / (succeeded + failed); null before any task finished.
    pub success_rate: Option<f64>,
    /// When these figures were counted (the store's clock): they are cached, and counted again
    /// in the background once older than `STATISTICS_MAX_AGE_SECONDS`.
    pub computed_at: chrono::DateTime<chrono::Utc>,
    /// Seconds between `computed_at` and this answer.
    pub age_seconds: f64,
}

/// Counts by status, topic and worker; mean processing time; success rate. Served from a cache
/// (`computed_at`, `age_seconds`): the cost of an answer does not grow with the store.
#[utoipa::path(get, path = "/tasks/statistics", tag = "tasks", responses((status = 200, body = StatisticsView)))]
pub async fn statistics(State(state): State<AppState>) -> Result<Json<StatisticsView>, ApiError> {
    let snapshot = state.statistics.get().await?;
    let s = &snapshot.stats;
    let labels = state.settings.status_labels;
    let mut by_status = BTreeMap::new();
    for (status, n) in &s.by_status {
        *by_status.entry(labels.render(*status).to_owned()).or_insert(0) += n;
    }
    let count = |wanted: TaskStatus| s.by_status.iter().filter(|(st, _)| *st == wanted).map(|(_, n)| n).sum::<u64>();
    let (ok, failed) = (count(TaskStatus::Succeeded), count(TaskStatus::Failed));
    Ok(Json(StatisticsView {
        total_tasks: s.total,
        by_status,
        by_topic: s.by_topic.iter().cloned().collect(),
        by_worker: s.by_worker.iter().cloned().collect(),
        average_processing_time_ms: s.average_processing_time_ms,
        success_rate: (ok + failed > 0).then(|| ok as f64 / (ok + failed) as f64),
        computed_at: snapshot.computed_at,
        age_seconds: snapshot.age_seconds(state.store.now()),
    }))
}
