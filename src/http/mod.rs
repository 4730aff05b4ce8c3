//! The HTTP API: one router per resource, merged here with the OpenAPI document (generated from
//! the handlers' annotations), Swagger UI, the body limit and the shared error shape.

mod error;
mod system;
mod tasks;
mod views;

use std::{sync::Arc, time::Instant};

use axum::{Router, extract::DefaultBodyLimit, middleware};
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

pub use error::{ApiError, ErrorBody};
pub use views::TaskView;

use crate::{
    broker::Broker, camunda::CamundaClient, config::Settings, metrics::Metrics, store::TaskStore, topics::Registry,
};

/// Cheap handles shared by every request.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn TaskStore>,
    pub broker: Arc<dyn Broker>,
    pub registry: Registry,
    pub metrics: Metrics,
    pub settings: Arc<Settings>,
    pub started: Instant,
    /// Set in report mode (`CAMUNDA_URL`).
    pub camunda: Option<CamundaClient>,
    /// Group commit for submissions.
    pub intake: crate::intake::Intake,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "worker-api-gateway", description = "Camunda 7 external-task gateway: durable in MongoDB, dispatched through RabbitMQ."),
    paths(
        system::root, system::health, system::live, system::metrics, system::topics,
        tasks::submit, tasks::status, tasks::retry, tasks::cancel, tasks::list, tasks::statistics,
    ),
    components(schemas(ErrorBody, crate::domain::FieldError)),
    tags((name = "tasks", description = "Submit and follow external tasks"), (name = "system", description = "Health, metrics and registry"))
)]
pub struct ApiDoc;

/// The whole API. In `worker` mode only the system routes are served.
pub fn router(state: AppState) -> Router {
    let limit = state.settings.max_body_bytes;
    let mut app = Router::new().merge(system::router());
    if state.settings.mode.serves_api() {
        app = app.merge(tasks::router()).merge(SwaggerUi::new("/docs").url("/openapi.json", ApiDoc::openapi()));
    }
    app.fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn(error::error_path))
        .with_state(state)
}
