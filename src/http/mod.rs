//! The HTTP API: one router per resource, merged here with the OpenAPI document (generated from
//! the handlers' annotations), Swagger UI, the body limit and the shared error shape.

mod dead_letters;
mod error;
mod events;
mod operate;
mod refusals;
mod system;
mod tasks;
mod ui;
mod views;

use std::{sync::Arc, time::Instant};

use axum::{Router, extract::DefaultBodyLimit, middleware};
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

pub use error::{ApiError, ErrorBody};
pub use views::TaskView;

use crate::{
    broker::Broker, camunda::CamundaClient, config::Settings, domain::TaskStatus, metrics::Metrics, store::TaskStore,
    topics::Registry,
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
    /// API keys and the rules of `AUTH_MODE`.
    pub auth: crate::auth::Auth,
    /// The live task events (`/events`, status waits).
    pub events: crate::events::Events,
    /// The cached aggregate `GET /tasks/statistics` answers from.
    pub statistics: crate::statistics::StatisticsCache,
    /// Whether the store commits majority writes (its probe's last verdict, for `/health`).
    pub store_health: crate::store::StoreHealth,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "worker-api-gateway", description = "Camunda 7 external-task gateway: durable in MongoDB, dispatched through RabbitMQ."),
    paths(
        system::root, system::health, system::live, system::metrics, system::topics,
        tasks::submit, tasks::status, events::events, operate::retry, operate::cancel, operate::resend_report, tasks::list, tasks::statistics, ui::whoami,
        dead_letters::list,
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
        let document = openapi_document(&state.settings, &state.registry);
        app = app
            .merge(tasks::router())
            .merge(events::router())
            .merge(ui::router())
            .merge(SwaggerUi::new("/docs").external_url_unchecked("/openapi.json", document));
        app = app.merge(dead_letters::router());
    }
    // After every route is in: a route layer runs for matched routes only, and knows which.
    // The later `route_layer` wraps the earlier, so auth runs first and the guard's limits see
    // its `Caller`.
    let guard = crate::guard::Guard::new(&state.settings, state.metrics.clone());
    app.route_layer(middleware::from_fn_with_state(guard.clone(), crate::guard::admit))
        .route_layer(middleware::from_fn_with_state(state.clone(), crate::auth::authenticate))
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(guard, crate::guard::deadlines))
        .layer(middleware::from_fn(error::error_path))
        // Outermost: every request, refused ones too, has its trace and request id.
        .layer(middleware::from_fn(crate::trace::edge))
        .with_state(state)
}

/// The API keys in the document: two ways to present one (Swagger UI's "Authorize" offers
/// both), required by every operation but the public ones, each of which may then answer 401
/// (no key, or an unknown one) and 403 (a key without the scope, topic or worker).
fn document_access(doc: &mut serde_json::Value) {
    let unauthorized = serde_json::json!({"description": "no API key, or an unknown one",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}});
    let forbidden = serde_json::json!({"description": "the key lacks the scope, topic or worker_id",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}});
    if let Some(components) = doc.get_mut("components").and_then(|c| c.as_object_mut()) {
        components.insert(
            "securitySchemes".into(),
            serde_json::json!({
                "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <API key>"},
                "api_key": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            }),
        );
    }
    doc["security"] = serde_json::json!([{"bearer": []}, {"api_key": []}]);
    let Some(paths) = doc.get_mut("paths").and_then(|p| p.as_object_mut()) else { return };
    for (path, ops) in paths.iter_mut() {
        let Some(ops) = ops.as_object_mut() else { continue };
        for (method, op) in ops.iter_mut() {
            let method = axum::http::Method::from_bytes(method.to_ascii_uppercase().as_bytes());
            let public = method.is_ok_and(|m| crate::auth::access(&m, path) == crate::auth::Access::Public);
            if public {
                op["security"] = serde_json::json!([]);
            } else if let Some(responses) = op.get_mut("responses").and_then(|r| r.as_object_mut()) {
                responses.entry("401").or_insert_with(|| unauthorized.clone());
                responses.entry("403").or_insert_with(|| forbidden.clone());
            }
        }
    }
}

/// The OpenAPI document with this instance's own rules filled in where the annotations cannot
/// know them: the registered topics, and the identifier limits (`MAX_ID_LENGTH`). A client
/// generated from it, or a fuzzer, then sends what this gateway accepts.
pub fn openapi_document(settings: &Settings, registry: &Registry) -> serde_json::Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    let properties = doc.pointer_mut("/components/schemas/SubmitRequest/properties").and_then(|p| p.as_object_mut());
    if let Some(properties) = properties {
        let max = settings.limits.max_id_length;
        for id in ["task_id", "worker_id"] {
            if let Some(field) = properties.get_mut(id).and_then(|f| f.as_object_mut()) {
                field.insert("minLength".into(), 1.into());
                field.insert("maxLength".into(), max.into());
                field.insert("pattern".into(), "^[A-Za-z0-9_.:-]+$".into());
            }
        }
        if let Some(field) = properties.get_mut("topic").and_then(|f| f.as_object_mut()) {
            let mut names: Vec<&str> = registry.names().collect();
            names.sort_unstable();
            field.insert("enum".into(), names.into());
        }
    }
    // Variable names MongoDB can store, at any depth: not empty, no `$` first, no `.`, no NUL.
    let name = serde_json::json!({"minLength": 1, "pattern": "^[^$.\\x00][^.\\x00]*$"});
    if let Some(schemas) = doc.pointer_mut("/components/schemas").and_then(|s| s.as_object_mut()) {
        schemas.insert(
            "VariableValue".into(),
            serde_json::json!({"anyOf": [
                {"type": ["null", "boolean", "number", "string"]},
                {"type": "array", "items": {"$ref": "#/components/schemas/VariableValue"}},
                {"type": "object", "propertyNames": name,
                 "additionalProperties": {"$ref": "#/components/schemas/VariableValue"}},
            ]}),
        );
    }
    if let Some(variables) = doc.pointer_mut("/components/schemas/SubmitRequest/properties/variables") {
        *variables = serde_json::json!({
            "type": ["object", "null"],
            "description": "Input variables: names MongoDB can store (not empty, no `$` first, no `.`), at any depth.",
            "maxProperties": settings.limits.max_variables,
            "propertyNames": name,
            "additionalProperties": {"$ref": "#/components/schemas/VariableValue"},
        });
    }
    // The list's status filter: the English labels and the seed's (blank: no filter); the cursor
    // as the list issues it (`<millis>~<task id>`).
    let mut labels: Vec<&str> = TaskStatus::ALL.iter().flat_map(|s| [s.as_str(), s.seed_label()]).collect();
    labels.push("");
    labels.sort_unstable();
    labels.dedup();
    if let Some(params) = doc.pointer_mut("/paths/~1tasks/get/parameters").and_then(|p| p.as_array_mut()) {
        for param in params.iter_mut() {
            if param["name"] == "status" {
                param["schema"] = serde_json::json!({"type": ["string", "null"], "enum": labels});
            } else if param["name"] == "cursor" {
                param["schema"] = serde_json::json!({"type": ["string", "null"], "pattern": "^([0-9]+~.+)?$"});
            }
        }
    }
    document_access(&mut doc);
    // A topic's required variables, as "if the topic is T, then variables has these keys".
    let mut rules: Vec<serde_json::Value> = registry
        .iter()
        .filter(|t| !t.spec.required_variables.is_empty())
        .map(|t| {
            serde_json::json!({
                "if": {"properties": {"topic": {"const": t.spec.name}}, "required": ["topic"]},
                "then": {
                    "required": ["variables"],
                    "properties": {"variables": {"type": "object", "required": t.spec.required_variables}},
                },
            })
        })
        .collect();
    rules.sort_by_key(|r| r.to_string());
    if let Some(schema) = doc.pointer_mut("/components/schemas/SubmitRequest").and_then(|s| s.as_object_mut())
        && !rules.is_empty()
    {
        schema.insert("allOf".into(), rules.into());
    }
    doc
}
