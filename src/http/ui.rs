//! The dashboard (`/ui`): three files in `src/http/ui/`, embedded in the binary at build time and
//! served with an ETag, so it works offline and fetches nothing from elsewhere. The pages are
//! clients of the public API and `/events` like any other, signed in with an API key; nothing
//! here reads the store. `GET /auth/whoami` (here too) tells a client which key it holds and what
//! the key may do, so the pages show only the actions it may take.

use std::sync::OnceLock;

use axum::{
    Json, Router,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
    routing::get,
};
use serde::Serialize;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::AppState;
use crate::auth::Caller;

/// One embedded file: its bytes, content type and ETag (a digest of the bytes).
struct Asset {
    body: &'static str,
    content_type: &'static str,
    etag: OnceLock<String>,
}

impl Asset {
    const fn new(body: &'static str, content_type: &'static str) -> Self {
        Self { body, content_type, etag: OnceLock::new() }
    }

    fn etag(&self) -> &str {
        self.etag.get_or_init(|| {
            let digest = Sha256::digest(self.body.as_bytes());
            let hex: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
            format!("\"{hex}\"")
        })
    }

    /// 200 with the file, or 304 when the client holds this version. Revalidated on every use
    /// (`no-cache`): the files are small and a new binary must show its own pages at once.
    fn serve(&self, headers: &HeaderMap) -> Response {
        let etag = self.etag();
        let fresh = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()).is_some_and(|v| v == etag);
        let mut response = if fresh { StatusCode::NOT_MODIFIED.into_response() } else { self.body.into_response() };
        let h = response.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(self.content_type));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        if let Ok(value) = HeaderValue::from_str(etag) {
            h.insert(header::ETAG, value);
        }
        // The pages run only their own script and talk only to this origin.
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'self'; img-src 'self' data:; style-src 'self'; frame-ancestors 'none'",
            ),
        );
        h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        response
    }
}

static INDEX: Asset = Asset::new(include_str!("ui/index.html"), "text/html; charset=utf-8");
static SCRIPT: Asset = Asset::new(include_str!("ui/app.js"), "text/javascript; charset=utf-8");
static STYLE: Asset = Asset::new(include_str!("ui/app.css"), "text/css; charset=utf-8");

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/ui", get(|headers: HeaderMap| async move { INDEX.serve(&headers) }))
        .route("/ui/", get(|| async { Redirect::permanent("/ui") }))
        .route("/ui/app.js", get(|headers: HeaderMap| async move { SCRIPT.serve(&headers) }))
        .route("/ui/app.css", get(|headers: HeaderMap| async move { STYLE.serve(&headers) }))
        .route("/auth/whoami", get(whoami))
}

/// Who a request's key is and what it may do.
#[derive(Serialize, ToSchema)]
pub struct WhoAmI {
    /// The key's id; absent for an anonymous caller (`ANONYMOUS_SCOPES`, or `AUTH_MODE=open`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// `submit`, `read`, `operate`, `admin`.
    pub scopes: Vec<&'static str>,
    /// The topics it may submit to; absent: any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topics: Option<Vec<String>>,
    /// The `worker_id`s it may act as; absent: any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_ids: Option<Vec<String>>,
    /// `keys` or `open`.
    pub auth: &'static str,
}

/// The key this request presents, and its scopes. Any valid key may ask (no scope needed);
/// without a key, the anonymous caller's scopes. An unknown key is a 401.
#[utoipa::path(get, path = "/auth/whoami", tag = "system",
    responses((status = 200, body = WhoAmI), (status = 401, body = super::ErrorBody)))]
pub async fn whoami(axum::extract::State(state): axum::extract::State<AppState>, caller: Caller) -> Json<WhoAmI> {
    Json(WhoAmI {
        key_id: caller.key_id.clone(),
        scopes: caller.scopes.iter().map(|s| s.as_str()).collect(),
        topics: caller.topics.clone(),
        worker_ids: caller.worker_ids.clone(),
        auth: state.auth.mode().as_str(),
    })
}
