//! `GET /tasks/{task_id}/status`: one task as the API shows it, at once or, with `?wait=`, once
//! its shown status is final (woken by the live event feed, see `events`); `?include=variables`
//! adds its input. Only reads: it never changes a task.

use axum::{
    Json,
    extract::{Path, Query, State, rejection::QueryRejection},
    http::StatusCode,
};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::{
    domain::{FieldError, TaskStatus},
    http::{ApiError, AppState, ErrorBody, TaskView},
};

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
    let with_variables = include_variables(p.include.as_deref())?;
    let wait = crate::events::parse_wait(p.wait.as_deref(), state.settings.events.status_wait_max).map_err(|e| {
        ApiError::Validation { status: StatusCode::BAD_REQUEST, message: "invalid query".into(), details: vec![e] }
    })?;
    let labels = state.settings.status_labels;
    let shown_final = |t: &crate::store::TaskRecord| {
        TaskStatus::parse_label(crate::http::views::shown_status(t, labels)).is_some_and(TaskStatus::is_final)
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

/// `?include=`: whether the answer carries the variables (`variables`); nothing else is known.
fn include_variables(include: Option<&str>) -> Result<bool, ApiError> {
    match include {
        None | Some("") => Ok(false),
        Some("variables") => Ok(true),
        Some(other) => {
            let detail = FieldError::new("include", format!("{other:?} is not `variables`"));
            Err(ApiError::Validation {
                status: StatusCode::BAD_REQUEST,
                message: "invalid query".into(),
                details: vec![detail],
            })
        }
    }
}
