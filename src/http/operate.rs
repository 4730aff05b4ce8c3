//! What an operator does to a task by hand: cancel it, retry it, re-send its report to Camunda.
//! Each needs the `operate` scope and leaves an audit record (who, when) on the task and in the
//! log. A retry never makes Camunda hear twice about one task: a Camunda-linked task whose
//! outcome was delivered is refused; resolving the incident in Camunda re-offers it instead.

use axum::{
    Json,
    extract::{Path, State},
};
use serde::Serialize;
use utoipa::ToSchema;

use super::{ApiError, AppState, error::ErrorBody};
use crate::{
    auth::Caller,
    relay::{PUBLISH_HOLD, publish_held},
    store::{ReportState, TransitionError},
};

#[derive(Serialize, ToSchema)]
pub struct ActionResponse {
    /// `retrying`, `cancelled` or `report_pending`.
    pub status: &'static str,
    pub task_id: String,
    pub message: String,
}

fn refused(task_id: &str, action: &str, allowed: &str, e: TransitionError) -> ApiError {
    match e {
        TransitionError::NotFound => ApiError::NotFound(format!("task {task_id} not found")),
        TransitionError::WrongState(s) => {
            ApiError::Conflict(format!("task {task_id} is {}; only {allowed} tasks can be {action}", s.as_str()))
        }
        TransitionError::Store(e) => e.into(),
    }
}

/// Run a failed or cancelled task again, attempts reset. A Camunda-linked task only while
/// Camunda has no outcome for it (its report failed for good).
#[utoipa::path(post, path = "/tasks/{task_id}/retry", tag = "tasks",
    params(("task_id" = String, Path, description = "task id", example = "demo-1")),
    responses((status = 200, body = ActionResponse, example = json!({"status": "retrying", "task_id": "demo-1", "message": "Task queued again"})),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "not failed or cancelled, or its outcome already reached Camunda")))]
#[tracing::instrument(skip_all, fields(task_id = %task_id, by = caller.name()))]
pub async fn retry(
    State(state): State<AppState>,
    caller: Caller,
    Path(task_id): Path<String>,
) -> Result<Json<ActionResponse>, ApiError> {
    if let Some(task) = state.store.get(&task_id).await?
        && task.camunda.linked
        && task.camunda.report_state != ReportState::ReportFailed
        && task.status.is_final()
    {
        let message = match task.camunda.report_state {
            ReportState::Pending => {
                format!("task {task_id}'s outcome is being reported to Camunda; it cannot be retried")
            }
            _ => format!(
                "task {task_id}'s outcome already reached Camunda; resolve the incident in Camunda (set its retries), \
                 which offers the task again"
            ),
        };
        return Err(ApiError::Conflict(message));
    }
    let task = state
        .store
        .manual_retry(&task_id, PUBLISH_HOLD, caller.name(), true)
        .await
        .map_err(|e| refused(&task_id, "retried", "failed or cancelled", e))?;
    tracing::info!("task retried by hand");
    publish_held(state.store.as_ref(), state.broker.as_ref(), &state.metrics, &task).await;
    Ok(Json(ActionResponse { status: "retrying", task_id, message: "Task queued again".into() }))
}

/// Cancel a queued or retrying task. A Camunda-linked one is reported as an incident ("cancelled
/// via the gateway"), or unlocked if it was pulled and never started.
#[utoipa::path(delete, path = "/tasks/{task_id}", tag = "tasks",
    params(("task_id" = String, Path, description = "task id", example = "demo-1")),
    responses((status = 200, body = ActionResponse, example = json!({"status": "cancelled", "task_id": "demo-1", "message": "Task cancelled"})),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "not queued or retrying")))]
#[tracing::instrument(skip_all, fields(task_id = %task_id, by = caller.name()))]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(task_id): Path<String>,
) -> Result<Json<ActionResponse>, ApiError> {
    state
        .store
        .cancel(&task_id, caller.name())
        .await
        .map_err(|e| refused(&task_id, "cancelled", "queued or retrying", e))?;
    tracing::info!("task cancelled by hand");
    Ok(Json(ActionResponse { status: "cancelled", task_id, message: "Task cancelled".into() }))
}

/// Send a report that failed for good (`report_failed`) to Camunda again.
#[utoipa::path(post, path = "/tasks/{task_id}/report", tag = "tasks",
    params(("task_id" = String, Path, description = "task id", example = "demo-1")),
    responses((status = 200, body = ActionResponse), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "its report has not failed")))]
#[tracing::instrument(skip_all, fields(task_id = %task_id, by = caller.name()))]
pub async fn resend_report(
    State(state): State<AppState>,
    caller: Caller,
    Path(task_id): Path<String>,
) -> Result<Json<ActionResponse>, ApiError> {
    match state.store.resend_report(&task_id, caller.name()).await {
        Ok(_) => {
            tracing::info!("report to Camunda re-sent by hand");
            Ok(Json(ActionResponse {
                status: "report_pending",
                task_id,
                message: "Report owed to Camunda again".into(),
            }))
        }
        Err(TransitionError::WrongState(_)) => Err(ApiError::Conflict(format!(
            "task {task_id}'s report to Camunda has not failed; only report_failed reports can be re-sent"
        ))),
        Err(e) => Err(refused(&task_id, "re-sent", "report_failed", e)),
    }
}
