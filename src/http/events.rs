//! `GET /events`: task events as Server-Sent Events (the contract: `docs/events.md`). The
//! feed itself is `crate::events`; this is its HTTP face: query filters, `Last-Event-ID`, the
//! SSE framing and keep-alive comments.

use std::convert::Infallible;

use axum::{
    Extension, Router,
    extract::State,
    http::{HeaderMap, StatusCode, Uri},
    response::{
        IntoResponse,
        sse::{Event, KeepAlive, Sse},
    },
    routing::get,
};
use futures::StreamExt;
use serde::Deserialize;
use utoipa::IntoParams;

use super::{ApiError, AppState, error::ErrorBody};
use crate::{
    events::{Filter, Out},
    guard::CloseConnection,
};

pub fn router() -> Router<AppState> {
    Router::new().route("/events", get(events))
}

/// The query `GET /events` reads (documentation; parsing goes through [`Filter`], which also
/// takes repeated parameters).
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct EventParams {
    /// Only these topics: repeat the parameter or separate with commas.
    topic: Option<String>,
    /// Only these statuses (queued, processing, retrying, succeeded, failed, cancelled): repeat
    /// the parameter or separate with commas.
    status: Option<String>,
    /// Only this task.
    task_id: Option<String>,
    /// The API key, for browsers' `EventSource`, which cannot send headers. Accepted on this
    /// route only; prefer the `Authorization` header wherever a client can set one.
    access_token: Option<String>,
}

/// Live task events (Server-Sent Events). Every status change and Camunda report-state change
/// of a task is one `event: task` whose `data` is a JSON object (`task_id`, `topic`,
/// `worker_id`, `status`, `substatus`, `attempts`, `report_state`, `error_message`,
/// `updated_at`, `trace_id`) and whose `id` resumes the stream: reconnect with
/// `Last-Event-ID` to get every event after it, then live ones. An id too old to resume from
/// gets `event: reset` first (reload your view). A subscriber too slow to keep up gets
/// `event: lagged` (`{"dropped_after": id}`) and the stream ends. A `: keep-alive` comment is
/// sent every 15 s (`EVENTS_KEEP_ALIVE_SECONDS`). Events made by every replica arrive.
#[utoipa::path(get, path = "/events", tag = "tasks",
    params(EventParams, ("Last-Event-ID" = Option<String>, Header, description = "resume after this event id")),
    responses(
        (status = 200, content_type = "text/event-stream", body = String, description = "an endless event stream"),
        (status = 400, body = ErrorBody, description = "unknown status in the filter"),
    ))]
pub async fn events(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    close: Option<Extension<CloseConnection>>,
) -> Result<impl IntoResponse, ApiError> {
    let filter = Filter::from_query(uri.query()).map_err(|details| ApiError::Validation {
        status: StatusCode::BAD_REQUEST,
        message: "invalid query".into(),
        details,
    })?;
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .map(str::to_owned);
    let closer = close.map(|Extension(CloseConnection(token))| token);
    let subscription = state.events.subscribe(filter, last_event_id, closer);
    let stream = subscription.into_stream().map(|out| Ok::<_, Infallible>(frame(out)));
    let keep_alive = KeepAlive::new().interval(state.settings.events.keep_alive).text("keep-alive");
    // Proxies that buffer responses (nginx) would hold events back.
    Ok(([("x-accel-buffering", "no")], Sse::new(stream).keep_alive(keep_alive)))
}

fn frame(out: Out) -> Event {
    match out {
        Out::Event(shared) => Event::default().id(&*shared.event.id).event("task").data(&shared.json),
        Out::Reset(reason) => Event::default().event("reset").data(serde_json::json!({"reason": &*reason}).to_string()),
        Out::Lagged(after) => {
            Event::default().event("lagged").data(serde_json::json!({"dropped_after": after.as_deref()}).to_string())
        }
    }
}
