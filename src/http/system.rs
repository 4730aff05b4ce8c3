//! Service routes: identity, health, liveness, metrics and the topic registry.

use std::time::Duration;

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use serde::Serialize;
use utoipa::ToSchema;

use super::{AppState, error::now_utc};
use crate::topics::TopicSpec;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(root))
        .route("/health", get(health))
        .route("/live", get(live))
        .route("/metrics", get(metrics))
        .route("/topics", get(topics))
}

#[derive(Serialize, ToSchema)]
pub struct RootView {
    pub service: &'static str,
    pub status: &'static str,
    pub version: &'static str,
}

/// Who answers.
#[utoipa::path(get, path = "/", tag = "system", responses((status = 200, body = RootView)))]
pub async fn root() -> Json<RootView> {
    Json(RootView { service: "worker-api-gateway", status: "running", version: env!("CARGO_PKG_VERSION") })
}

#[derive(Serialize, ToSchema)]
pub struct HealthView {
    /// healthy, degraded (RabbitMQ or Camunda down, or a topic's queue not consumed: tasks are
    /// still accepted) or unhealthy (MongoDB down, or it cannot commit a majority write).
    pub status: &'static str,
    /// healthy or unhealthy: answers a ping and commits majority writes.
    pub mongodb: &'static str,
    /// The write probe's last verdict: up, no_majority (a primary, but no majority within
    /// `MONGODB_WRITE_TIMEOUT_MS`), down (no primary took the write) or unknown (not probed yet).
    pub mongodb_writes: &'static str,
    pub rabbitmq: &'static str,
    /// Per topic, whether its queue is being consumed (absent where nothing consumes,
    /// `GATEWAY_MODE=api`). A topic not consumed makes the status `degraded`: the others flow.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub topics: std::collections::BTreeMap<String, ConsumerView>,
    /// The dead-letter queue's consumer (see `GET /dead-letters`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_letters: Option<ConsumerView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub camunda: Option<&'static str>,
    pub timestamp: String,
    pub version: &'static str,
    pub uptime_s: u64,
    /// `keys`, or `open` when `AUTH_MODE=open` lets anyone in.
    pub auth: &'static str,
    /// The change stream behind `/events` and status waits: live, connecting, retrying (after
    /// an error, resuming from the last change seen) or off (`GATEWAY_MODE=worker`).
    pub events: &'static str,
}

fn word(ok: bool) -> &'static str {
    if ok { "healthy" } else { "unhealthy" }
}

/// 200 while tasks can be accepted (MongoDB reachable and committing majority writes), 503
/// otherwise.
#[utoipa::path(get, path = "/health", tag = "system", responses(
    (status = 200, body = HealthView, description = "healthy or degraded"),
    (status = 503, body = HealthView, description = "MongoDB unreachable or not committing majority writes"),
))]
pub async fn health(State(state): State<AppState>) -> impl IntoResponse {
    // Bounded so a hung store cannot hang the health check.
    let pinged = matches!(tokio::time::timeout(Duration::from_secs(3), state.store.ping()).await, Ok(Ok(())));
    // A ping answers from any node; the probe says whether a majority write commits.
    let writes = state.store_health.writes();
    let mongo = pinged && !writes.failing();
    let rabbit = state.broker.is_connected();
    let camunda = match &state.camunda {
        Some(client) => Some(word(client.ping().await)),
        None => None,
    };
    let consumers = state.broker.consumers();
    let consuming = consumers.topics.iter().map(|(_, s)| s).chain(&consumers.dead_letters).all(|s| s.consuming);
    let status = match (mongo, rabbit && consuming && camunda != Some("unhealthy")) {
        (true, true) => "healthy",
        (true, false) => "degraded",
        (false, _) => "unhealthy",
    };
    let view = HealthView {
        status,
        mongodb: word(mongo),
        mongodb_writes: writes.as_str(),
        rabbitmq: word(rabbit),
        topics: consumers.topics.into_iter().map(|(topic, s)| (topic, s.into())).collect(),
        dead_letters: consumers.dead_letters.map(Into::into),
        camunda,
        timestamp: now_utc(),
        version: env!("CARGO_PKG_VERSION"),
        uptime_s: state.started.elapsed().as_secs(),
        auth: state.auth.mode().as_str(),
        events: state.events.state().as_str(),
    };
    let code = if mongo { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(view))
}

/// 200 while the process runs.
#[utoipa::path(get, path = "/live", tag = "system", responses((status = 200, description = "alive")))]
pub async fn live() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "alive"}))
}

/// The metrics: OpenMetrics 1.0.0 when `Accept` asks for `application/openmetrics-text` (as
/// Prometheus does), the Prometheus text format 0.0.4 otherwise.
#[utoipa::path(get, path = "/metrics", tag = "system",
    params(("Accept" = Option<String>, Header, description = "`application/openmetrics-text` for OpenMetrics",
        example = "application/openmetrics-text; version=1.0.0")),
    responses((status = 200, description = "the exposition, in the format negotiated", content(
        (String = "text/plain; version=0.0.4", example = json!("# HELP gateway_task_submits_total Accepted task submissions.\n# TYPE gateway_task_submits_total counter\ngateway_task_submits_total{topic=\"say_hello\",result=\"created\"} 1\n")),
        (String = "application/openmetrics-text; version=1.0.0", example = json!("# HELP gateway_task_submits Accepted task submissions.\n# TYPE gateway_task_submits counter\ngateway_task_submits_total{topic=\"say_hello\",result=\"created\"} 1\n# EOF\n")),
    ))))]
pub async fn metrics(State(state): State<AppState>, headers: axum::http::HeaderMap) -> impl IntoResponse {
    let format = crate::metrics::Exposition::negotiate(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    // Vary: a cache between scraper and gateway must not hand one format to the other's Accept.
    ([(header::CONTENT_TYPE, format.content_type()), (header::VARY, "accept")], state.metrics.render_as(format))
}

/// The topic registry: name, handler, timeout, retry policy, concurrency.
#[utoipa::path(get, path = "/topics", tag = "system", responses((status = 200, body = Vec<TopicSpec>)))]
pub async fn topics(State(state): State<AppState>) -> Json<Vec<TopicSpec>> {
    Json(state.registry.iter().map(|t| t.spec.clone()).collect())
}

/// One queue consumer's state.
#[derive(Serialize, ToSchema)]
pub struct ConsumerView {
    pub consuming: bool,
    /// Why not, while it is not; it is retried with backoff.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When it entered this state (RFC 3339, UTC).
    pub since: String,
    /// Times it was started again after its queue could not be consumed.
    pub restarts: u64,
}

impl From<crate::broker::ConsumerState> for ConsumerView {
    fn from(s: crate::broker::ConsumerState) -> Self {
        let since = s.since.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        Self { consuming: s.consuming, error: s.error, since, restarts: s.restarts }
    }
}
