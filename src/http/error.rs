//! The one error body of the API (the seed's shape, UTC time) and the error enum every handler
//! returns. 5xx bodies are generic; the cause goes to the log only.

use axum::{
    Json,
    extract::Request,
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use serde::Serialize;
use utoipa::ToSchema;

use crate::{domain::FieldError, store::StoreError};

/// The body of every error answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Always `"error"`.
    pub status: &'static str,
    /// VALIDATION_ERROR, NOT_FOUND, CONFLICT, PAYLOAD_TOO_LARGE, UNSUPPORTED_MEDIA_TYPE,
    /// METHOD_NOT_ALLOWED, REQUEST_TIMEOUT, TOO_MANY_REQUESTS, SERVICE_UNAVAILABLE or
    /// INTERNAL_ERROR.
    pub error_code: &'static str,
    pub error_message: String,
    /// True for 408, 429 and 5xx: the same request may succeed later.
    pub retry_allowed: bool,
    /// UTC, RFC 3339.
    pub timestamp: String,
    /// The request path.
    pub path: String,
    /// For validation errors: each offending field.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Vec<FieldError>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 (malformed) or 422 (well-formed but invalid); lists each offending field.
    #[error("{message}")]
    Validation { status: StatusCode, message: String, details: Vec<FieldError> },
    /// 401: no key where one is needed, or a key that is not in the key file.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: a valid key without the scope, topic or `worker_id` the request needs.
    #[error("{0}")]
    Forbidden(String),
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 405.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 409.
    #[error("{0}")]
    Conflict(String),
    /// 413.
    #[error("request body larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// 415.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 408: the request's body did not arrive in time (`BODY_READ_TIMEOUT_SECONDS`).
    #[error("{0}")]
    RequestTimeout(String),
    /// 429 with `Retry-After`: over the caller's rate limit.
    #[error("{message}")]
    TooManyRequests { message: String, retry_after: std::time::Duration },
    /// 503 with `Retry-After`: the gateway is shedding load, or did not answer in time.
    #[error("{message}")]
    Overloaded { message: String, retry_after: std::time::Duration },
    /// 503 with `Retry-After`: a dependency is down or failing over; the cause is logged, not
    /// shown.
    #[error("service temporarily unavailable")]
    Unavailable(String),
    /// 500: the cause is logged, not shown.
    #[error("internal error")]
    Internal(String),
}

/// What a 503 for an unavailable dependency suggests: a replica set elects a new primary within
/// seconds, and a client retrying sooner only adds load to the one that is catching up.
const UNAVAILABLE_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(2);

impl ApiError {
    pub fn invalid(message: impl Into<String>, details: Vec<FieldError>) -> Self {
        Self::Validation { status: StatusCode::UNPROCESSABLE_ENTITY, message: message.into(), details }
    }

    pub fn malformed(message: impl Into<String>) -> Self {
        Self::Validation { status: StatusCode::BAD_REQUEST, message: message.into(), details: Vec::new() }
    }

    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            Self::Validation { status, .. } => (*status, "VALIDATION_ERROR"),
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "FORBIDDEN"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "CONFLICT"),
            Self::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE"),
            Self::UnsupportedMediaType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "UNSUPPORTED_MEDIA_TYPE"),
            Self::RequestTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "REQUEST_TIMEOUT"),
            Self::TooManyRequests { .. } => (StatusCode::TOO_MANY_REQUESTS, "TOO_MANY_REQUESTS"),
            Self::Overloaded { .. } => (StatusCode::SERVICE_UNAVAILABLE, "SERVICE_UNAVAILABLE"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "SERVICE_UNAVAILABLE"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR"),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(m) => Self::Unavailable(m),
            StoreError::Other(m) => Self::Internal(m),
        }
    }
}

pub fn now_utc() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.parts();
        match &self {
            Self::Unavailable(cause) => tracing::warn!(%cause, "answering 503"),
            Self::Internal(cause) => tracing::error!(%cause, "answering 500"),
            _ => {}
        }
        let details = match &self {
            Self::Validation { details, .. } if !details.is_empty() => Some(details.clone()),
            _ => None,
        };
        let body = ErrorBody {
            status: "error",
            error_code: code,
            error_message: self.to_string(),
            retry_allowed: status == StatusCode::REQUEST_TIMEOUT
                || status == StatusCode::TOO_MANY_REQUESTS
                || status.is_server_error(),
            timestamp: now_utc(),
            path: String::new(),
            details,
        };
        let mut response = (status, Json(body.clone())).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        let retry_after = match &self {
            Self::TooManyRequests { retry_after, .. } | Self::Overloaded { retry_after, .. } => Some(*retry_after),
            Self::Unavailable(_) => Some(UNAVAILABLE_RETRY_AFTER),
            _ => None,
        };
        if let Some(retry_after) = retry_after {
            // Whole seconds, rounded up: never "0", which would invite an immediate retry.
            let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        }
        // The path is filled in by `error_path` below, which sees the request.
        response.extensions_mut().insert(body);
        response
    }
}

/// Middleware: writes the request path into error bodies.
pub async fn error_path(request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    match response.extensions().get::<ErrorBody>().cloned() {
        Some(mut body) => {
            body.path = path;
            // A new body, but the status and headers (`Retry-After`, `WWW-Authenticate`) stay.
            let (parts, _) = response.into_parts();
            let mut fresh = Json(body).into_response();
            *fresh.status_mut() = parts.status;
            for (name, value) in &parts.headers {
                if name != header::CONTENT_LENGTH && name != header::CONTENT_TYPE {
                    fresh.headers_mut().append(name.clone(), value.clone());
                }
            }
            fresh
        }
        None => response,
    }
}

/// Unknown routes answer with the error body too.
pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
