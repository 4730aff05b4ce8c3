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
    /// healthy, degraded (RabbitMQ or Camunda down: tasks are still accepted) or unhealthy
    /// (MongoDB down).
    pub status: &'static str,
    pub mongodb: &'static str,
    pub rabbitmq: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub camunda: Option<&'static str>,
    pub timestamp: String,
    pub version: &'static str,
    pub uptime_s: u64,
    /// `keys`, or `open` when `AUTH_MODE=open` lets anyone in.
    pub auth: &'static str,
}

fn word(ok: bool) -> &'static str {
    if ok { "healthy" } else { "unhealthy" }
}

/// 200 while tasks can be accepted (MongoDB reachable), 503 otherwise.
#[utoipa::path(get, path = "/health", tag = "system", responses(
    (status = 200, body = HealthView, description = "healthy or degraded"),
    (status = 503, body = HealthView, description = "MongoDB unreachable"),
))]
pub async fn health(State(state): State<AppState>) -> impl IntoResponse {
    // Bounded so a hung store cannot hang the health check.
    let mongo = matches!(tokio::time::timeout(Duration::from_secs(3), state.store.ping()).await, Ok(Ok(())));
    let rabbit = state.broker.is_connected();
    let camunda = match &state.camunda {
        Some(client) => Some(word(client.ping().await)),
        None => None,
    };
    let status = match (mongo, rabbit && camunda != Some("unhealthy")) {
        (true, true) => "healthy",
        (true, false) => "degraded",
        (false, _) => "unhealthy",
    };
    let view = HealthView {
        status,
        mongodb: word(mongo),
        rabbitmq: word(rabbit),
        camunda,
        timestamp: now_utc(),
        version: env!("CARGO_PKG_VERSION"),
        uptime_s: state.started.elapsed().as_secs(),
        auth: state.auth.mode().as_str(),
    };
    let code = if mongo { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(view))
}

/// 200 while the process runs.
#[utoipa::path(get, path = "/live", tag = "system", responses((status = 200, description = "alive")))]
pub async fn live() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "alive"}))
}

/// Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "system", responses((status = 200, content_type = "text/plain", body = String)))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.metrics.render())
}

/// The topic registry: name, handler, timeout, retry policy, concurrency.
#[utoipa::path(get, path = "/topics", tag = "system", responses((status = 200, body = Vec<TopicSpec>)))]
pub async fn topics(State(state): State<AppState>) -> Json<Vec<TopicSpec>> {
    Json(state.registry.iter().map(|t| t.spec.clone()).collect())
}
