//! `GET /dead-letters`: the messages RabbitMQ dead-lettered, as the dead-letter consumer recorded
//! them (`broker::dead_letters`), newest first, a page at a time. Read-only: a dead letter whose
//! task was still unfinished has already been handed back to the relay.

use axum::{
    Json, Router,
    extract::{Query, State, rejection::QueryRejection},
    http::StatusCode,
    routing::get,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{ApiError, AppState, error::ErrorBody};
use crate::{
    domain::FieldError,
    store::{DeadLetter, DeadLetterQuery},
};

pub fn router() -> Router<AppState> {
    Router::new().route("/dead-letters", get(list))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeadLetterParams {
    /// Only this topic's dead letters.
    topic: Option<String>,
    /// Only this task's dead letters.
    task_id: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
}

/// One dead-lettered message.
#[derive(Serialize, ToSchema)]
pub struct DeadLetterView {
    pub id: String,
    /// The task its body names, when the body parses.
    pub task_id: Option<String>,
    pub topic: Option<String>,
    pub routing_key: String,
    /// Why the broker dead-lettered it (`rejected`: the gateway refused it as unusable or as a
    /// task whose attempts are spent; `delivery_limit`: delivered too many times).
    pub reason: Option<String>,
    /// Times it died that way in that queue.
    pub count: Option<i64>,
    /// The queue it died in.
    pub queue: Option<String>,
    /// When it died, by the broker's clock (RFC 3339).
    pub died_at: Option<String>,
    /// When the gateway recorded it (RFC 3339).
    pub received_at: String,
    /// The body as text, cut to 4 KiB.
    pub body: String,
    pub body_bytes: u64,
    pub body_truncated: bool,
    /// Its task was still queued or retrying, and was published again.
    pub republished: bool,
}

impl From<DeadLetter> for DeadLetterView {
    fn from(d: DeadLetter) -> Self {
        let time = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        Self {
            id: d.id,
            task_id: d.task_id,
            topic: d.topic,
            routing_key: d.routing_key,
            reason: d.reason,
            count: d.count,
            queue: d.queue,
            died_at: d.died_at.map(time),
            received_at: time(d.received_at),
            body: d.body,
            body_bytes: d.body_bytes,
            body_truncated: d.body_truncated,
            republished: d.republished,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct DeadLetterPage {
    pub dead_letters: Vec<DeadLetterView>,
    pub count: usize,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Dead-lettered messages, newest first, kept for `DEAD_LETTER_RETENTION_DAYS`.
#[utoipa::path(get, path = "/dead-letters", tag = "system", params(DeadLetterParams),
    responses((status = 200, body = DeadLetterPage), (status = 400, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    params: Result<Query<DeadLetterParams>, QueryRejection>,
) -> Result<Json<DeadLetterPage>, ApiError> {
    let Query(mut p) = params.map_err(|e| ApiError::malformed(format!("bad query: {}", e.body_text())))?;
    for field in [&mut p.topic, &mut p.task_id, &mut p.cursor] {
        field.take_if(|v| v.is_empty());
    }
    let mut errors = Vec::new();
    let limit = p.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        errors.push(FieldError::new("limit", "must be between 1 and 500"));
    }
    if p.cursor.as_deref().is_some_and(|c| bson::oid::ObjectId::parse_str(c).is_err()) {
        errors.push(FieldError::new("cursor", "not a cursor this API issued"));
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation {
            status: StatusCode::BAD_REQUEST,
            message: "invalid query".into(),
            details: errors,
        });
    }
    let query = DeadLetterQuery { topic: p.topic, task_id: p.task_id, after: p.cursor, limit };
    let found = state.store.dead_letters(&query).await?;
    let next_cursor = (found.len() == limit as usize).then(|| found.last().map(|d| d.id.clone())).flatten();
    let dead_letters: Vec<DeadLetterView> = found.into_iter().map(Into::into).collect();
    Ok(Json(DeadLetterPage { count: dead_letters.len(), dead_letters, next_cursor }))
}
