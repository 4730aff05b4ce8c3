//! The check in front of every route: which access each route needs ([`ROUTES`], one table, so
//! a route added without an entry is held to `admin` rather than left open), the key a request
//! presents (`Authorization: Bearer …` or `X-API-Key`; on `/events` also `?access_token=`), and
//! the [`Caller`] it becomes.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, RwLock},
};

use axum::{
    extract::{ConnectInfo, FromRequestParts, MatchedPath, Request, State},
    http::{HeaderMap, Method, header, request::Parts},
    middleware::Next,
    response::{IntoResponse, Response},
};

use super::{AuthMode, AuthSettings, Caller, KeySet, Scope};
use crate::http::{ApiError, AppState};

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (`/live`, `/health`, the API's documentation).
    Public,
    /// A key with this scope, or `ANONYMOUS_SCOPES` holding it.
    Scope(Scope),
    /// `METRICS_AUTH`: a scope, or anyone.
    Metrics,
    /// Any valid key, whatever its scopes, or an anonymous caller (`/auth/whoami`): an unknown
    /// key is still a 401.
    Identified,
}

/// Every route and what it needs: (method, path as the router matches it, access).
pub const ROUTES: &[(&str, &str, Access)] = &[
    ("GET", "/live", Access::Public),
    ("GET", "/health", Access::Public),
    ("GET", "/", Access::Scope(Scope::Read)),
    ("GET", "/metrics", Access::Metrics),
    ("GET", "/topics", Access::Scope(Scope::Admin)),
    ("POST", "/tasks/submit", Access::Scope(Scope::Submit)),
    ("GET", "/tasks/{task_id}/status", Access::Scope(Scope::Read)),
    ("GET", "/tasks", Access::Scope(Scope::Read)),
    ("GET", "/tasks/statistics", Access::Scope(Scope::Read)),
    ("GET", "/events", Access::Scope(Scope::Read)),
    ("POST", "/tasks/{task_id}/retry", Access::Scope(Scope::Operate)),
    ("POST", "/tasks/{task_id}/report", Access::Scope(Scope::Operate)),
    ("DELETE", "/tasks/{task_id}", Access::Scope(Scope::Operate)),
    ("GET", "/dead-letters", Access::Scope(Scope::Read)),
    ("GET", "/auth/whoami", Access::Identified),
];

/// The access a matched route needs. The documentation (`/docs`, `/openapi.json`) and the
/// dashboard's files (`/ui`: they hold no data; its pages call the API with the user's key) are
/// public; a route missing from [`ROUTES`] needs `admin`.
pub fn access(method: &Method, path: &str) -> Access {
    let files = |prefix: &str| path == prefix || path.starts_with(&format!("{prefix}/"));
    if path == "/openapi.json" || files("/docs") || files("/ui") {
        return Access::Public;
    }
    ROUTES
        .iter()
        .find(|(m, p, _)| *m == method.as_str() && *p == path)
        .map_or(Access::Scope(Scope::Admin), |(_, _, access)| *access)
}

/// The keys and the rules, shared by every request; the key set is swapped whole on reload, so
/// a request sees the old set or the new one, never half of each.
#[derive(Clone)]
pub struct Auth {
    settings: Arc<AuthSettings>,
    keys: Arc<RwLock<Arc<KeySet>>>,
}

impl Auth {
    /// Loads the key file, if any; a bad file stops start-up (the message names it).
    pub fn new(settings: &AuthSettings) -> Result<Self, String> {
        let keys = match &settings.keys_file {
            Some(path) => KeySet::load(path)?,
            None => KeySet::default(),
        };
        Ok(Self { settings: Arc::new(settings.clone()), keys: Arc::new(RwLock::new(Arc::new(keys))) })
    }

    pub fn mode(&self) -> AuthMode {
        self.settings.mode
    }

    pub fn keys_file(&self) -> Option<&PathBuf> {
        self.settings.keys_file.as_ref()
    }

    /// Reads the key file again (SIGHUP). On a bad file the keys in use stay.
    pub fn reload(&self) -> Result<usize, String> {
        let Some(path) = &self.settings.keys_file else { return Ok(0) };
        let keys = KeySet::load(path)?;
        let count = keys.len();
        if let Ok(mut current) = self.keys.write() {
            *current = Arc::new(keys);
        }
        Ok(count)
    }

    fn keys(&self) -> Arc<KeySet> {
        self.keys.read().map(|k| k.clone()).unwrap_or_default()
    }

    fn anonymous(&self, addr: Option<std::net::IpAddr>) -> Caller {
        let scopes = if self.settings.mode == AuthMode::Open {
            Scope::ALL.to_vec()
        } else {
            self.settings.anonymous_scopes.clone()
        };
        Caller { key_id: None, scopes, topics: None, worker_ids: None, rate: None, addr }
    }

    /// Who is calling, from the request's headers: `Ok(None)` without a key, `Err` for a key
    /// that is not in the key file.
    fn identify(
        &self,
        headers: &HeaderMap,
        query_secret: Option<&str>,
        addr: Option<std::net::IpAddr>,
    ) -> Result<Option<Caller>, ApiError> {
        let Some(secret) = presented_secret(headers).or(query_secret) else { return Ok(None) };
        let keys = self.keys();
        let Some(key) = keys.find(secret) else {
            tracing::warn!(client = ?addr, "request with an unknown API key refused");
            return Err(ApiError::Unauthorized("invalid API key".into()));
        };
        Ok(Some(Caller {
            key_id: Some(key.id.clone()),
            scopes: key.scopes.clone(),
            topics: key.topics.clone(),
            worker_ids: key.worker_ids.clone(),
            rate: key.rate,
            addr,
        }))
    }
}

/// The secret a request presents: `Authorization: Bearer <secret>`, else `X-API-Key: <secret>`.
fn presented_secret(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| {
        let (scheme, rest) = v.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
    });
    bearer.or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::trim)).filter(|s| !s.is_empty())
}

/// The routes that take the key as `?access_token=` too: `/events`, because browsers'
/// `EventSource` cannot send headers. A URL is a worse place for a key than a header (browser
/// history, proxies' logs), so only where there is no other way.
const QUERY_KEY_ROUTES: &[&str] = &["/events"];

/// Takes `access_token` out of the request's query, so nothing after this layer (a handler, a
/// log line) ever sees it; returns it.
fn take_query_secret(request: &mut Request) -> Option<String> {
    let query = request.uri().query()?;
    let mut secret = None;
    let mut rest = url::form_urlencoded::Serializer::new(String::new());
    for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
        if name == "access_token" {
            secret = Some(value.trim().to_owned()).filter(|s| !s.is_empty());
        } else {
            rest.append_pair(&name, &value);
        }
    }
    secret.as_ref()?;
    let rest = rest.finish();
    let path = request.uri().path();
    let path_and_query = if rest.is_empty() { path.to_owned() } else { format!("{path}?{rest}") };
    let mut parts = request.uri().clone().into_parts();
    parts.path_and_query = path_and_query.parse().ok();
    if let Ok(uri) = axum::http::Uri::from_parts(parts) {
        *request.uri_mut() = uri;
    }
    secret
}

/// Middleware on every matched route: answers 401/403 itself, or stores the [`Caller`] in the
/// request's extensions and goes on.
pub async fn authenticate(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let auth = &state.auth;
    let addr = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    let path = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_default();
    let needed = match access(request.method(), &path) {
        Access::Metrics => state.settings.auth.metrics_scope.map_or(Access::Public, Access::Scope),
        other => other,
    };
    let query_secret = if QUERY_KEY_ROUTES.contains(&path.as_str()) { take_query_secret(&mut request) } else { None };
    let caller = match (auth.mode(), needed) {
        (AuthMode::Open, _) | (_, Access::Public) => auth.anonymous(addr),
        (AuthMode::Keys, Access::Scope(scope)) => match auth.identify(request.headers(), query_secret.as_deref(), addr)
        {
            Err(e) => return e.into_response(),
            Ok(Some(caller)) if caller.scopes.contains(&scope) => caller,
            Ok(Some(caller)) => {
                let key = caller.name();
                tracing::warn!(key_id = key, scope = scope.as_str(), %path, "API key lacks the scope");
                return ApiError::Forbidden(format!("key {key} lacks the {} scope", scope.as_str())).into_response();
            }
            Ok(None) if auth.anonymous(addr).scopes.contains(&scope) => auth.anonymous(addr),
            Ok(None) => {
                return ApiError::Unauthorized(format!(
                    "an API key with the {} scope is required (Authorization: Bearer <key>, or X-API-Key)",
                    scope.as_str()
                ))
                .into_response();
            }
        },
        (AuthMode::Keys, Access::Metrics) => auth.anonymous(addr),
        (AuthMode::Keys, Access::Identified) => match auth.identify(request.headers(), query_secret.as_deref(), addr) {
            Err(e) => return e.into_response(),
            Ok(caller) => caller.unwrap_or_else(|| auth.anonymous(addr)),
        },
    };
    request.extensions_mut().insert(caller);
    next.run(request).await
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError::Internal("route served without the auth layer".into()))
    }
}

impl Caller {
    /// Whether the caller may submit to `topic` as `worker_id`; the 403 names what is missing.
    pub fn may_submit(&self, topic: &str, worker_id: &str) -> Result<(), ApiError> {
        let allowed =
            |list: &Option<Vec<String>>, value: &str| list.as_ref().is_none_or(|l| l.iter().any(|v| v == value));
        if !allowed(&self.topics, topic) {
            tracing::warn!(key_id = self.name(), topic, "API key may not submit to this topic");
            return Err(ApiError::Forbidden(format!("key {} may not submit to topic {topic:?}", self.name())));
        }
        if !allowed(&self.worker_ids, worker_id) {
            tracing::warn!(key_id = self.name(), worker_id, "API key may not act as this worker");
            return Err(ApiError::Forbidden(format!("key {} may not act as worker_id {worker_id:?}", self.name())));
        }
        Ok(())
    }
}
