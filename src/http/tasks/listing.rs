//! `GET /tasks` (newest first, filtered, a page at a time behind an opaque cursor) and
//! `GET /tasks/statistics` (answered from `statistics::StatisticsCache`, which decides when to
//! count). Only reads: neither changes a task.

use std::collections::BTreeMap;

use axum::{
    Json,
    extract::{Query, State, rejection::QueryRejection},
    http::StatusCode,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::{
    domain::{FieldError, TaskStatus},
    http::{ApiError, AppState, ErrorBody, TaskView},
    store::ListQuery,
};

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
