//! The topic registry: built once at start-up from `topics/*.toml` plus the native handlers
//! compiled in. It decides which topics exist and which code runs them; it does not run them
//! (that is `dispatch`).

mod h2c;
mod handler;
mod http_handler;
mod nova_publicacao;
mod say_hello;
mod spec;

use std::{collections::BTreeMap, path::Path, sync::Arc};

pub use handler::{Handler, HandlerContext, HandlerError, MemoryProgress, ProcessingStep, ProgressSink, Variables};
pub use http_handler::{HttpHandler, redirect_policy};
pub use nova_publicacao::NovaPublicacao;
pub use say_hello::SayHello;
pub use spec::{
    ErrorCodes, HandlerKind, JsonVariables, RetryPolicy, Source, SpecDefaults, SpecError, TopicSpec, VariableScope,
};

/// A registered topic: its settings and the handler that runs it.
#[derive(Clone)]
pub struct Topic {
    pub spec: TopicSpec,
    pub handler: Arc<dyn Handler>,
}

/// What native handlers may need from the running gateway.
pub struct NativeDeps {
    pub database: mongodb::Database,
    /// For `http` handlers (HTTP/1.1, or HTTP/2 when TLS negotiates it). Both clients must be
    /// built with [`redirect_policy`]: reqwest's default follows redirects to any host.
    pub http: reqwest::Client,
    /// For `http` handlers with `http2 = true` on an `https://` URL: HTTP/2 only (ALPN). On
    /// `http://` such topics use their own lean HTTP/2 cleartext connection instead.
    pub http2: reqwest::Client,
    /// CA bundle for the clients of topics with their own client certificate (`client_cert_file`).
    pub tls: crate::tls::TlsSettings,
}

/// Every topic this gateway serves, by name. Cheap to clone (shared): the HTTP layer's state
/// holds one, and axum clones that state for every connection.
#[derive(Clone, Default)]
pub struct Registry {
    topics: Arc<BTreeMap<String, Topic>>,
}

impl Registry {
    /// Reads every `*.toml` in `dir`. A bad file, a duplicate name, or a native topic with no
    /// compiled handler stops start-up.
    pub fn load(dir: &Path, defaults: SpecDefaults, deps: &NativeDeps) -> Result<Self, SpecError> {
        let dir_err = |message: String| SpecError { file: dir.display().to_string(), message };
        let entries = std::fs::read_dir(dir).map_err(|e| dir_err(format!("cannot read topics folder: {e}")))?;
        let mut paths: Vec<_> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        paths.sort();
        let mut registry = Registry::default();
        for path in paths {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| SpecError { file: path.display().to_string(), message: e.to_string() })?;
            let spec = TopicSpec::parse(&path, &text, defaults)?;
            let handler = build_handler(&spec, deps)
                .map_err(|message| SpecError { file: path.display().to_string(), message })?;
            registry.insert(Topic { spec, handler }).map_err(|name| SpecError {
                file: path.display().to_string(),
                message: format!("field `name`: topic {name:?} is defined twice"),
            })?;
        }
        if registry.topics.is_empty() {
            return Err(dir_err("no topic files (*.toml) found".into()));
        }
        Ok(registry)
    }

    /// Adds a topic; `Err(name)` if one of that name exists.
    pub fn insert(&mut self, topic: Topic) -> Result<(), String> {
        let name = topic.spec.name.clone();
        if self.topics.contains_key(&name) {
            return Err(name);
        }
        Arc::make_mut(&mut self.topics).insert(name, topic);
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&Topic> {
        self.topics.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.topics.keys().map(String::as_str)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Topic> {
        self.topics.values()
    }
}

const NATIVE: &[&str] = &["say_hello", "nova_publicacao"];

/// The handler for a topic, or why there is none (the message names the field).
fn build_handler(spec: &TopicSpec, deps: &NativeDeps) -> Result<Arc<dyn Handler>, String> {
    match spec.handler {
        HandlerKind::Http => {
            let url = spec.url.clone().ok_or("field `url` is required when handler = \"http\"")?;
            if spec.http2 && url::Url::parse(&url).is_ok_and(|u| u.scheme() == "http") {
                let handler = HttpHandler::h2c(&url, spec.timeout()).map_err(|e| format!("field `url`: {e}"))?;
                return Ok(Arc::new(handler));
            }
            let client = match client_with_certificate(spec, deps)? {
                Some(own) => own,
                None if spec.http2 => deps.http2.clone(),
                None => deps.http.clone(),
            };
            Ok(Arc::new(HttpHandler::new(client, url, spec.timeout())))
        }
        HandlerKind::Native => match spec.native.as_deref().unwrap_or(&spec.name) {
            "say_hello" => Ok(Arc::new(SayHello)),
            "nova_publicacao" => Ok(Arc::new(NovaPublicacao::new(&deps.database))),
            other => Err(format!("field `handler`: no native handler named {other:?} (native: {})", NATIVE.join(", "))),
        },
    }
}

/// A client of its own for a topic with `client_cert_file` (mTLS): the shared clients' trust and
/// redirect policy, plus the topic's certificate. The files are read now, so a missing or bad
/// one stops start-up naming the file and the field.
fn client_with_certificate(spec: &TopicSpec, deps: &NativeDeps) -> Result<Option<reqwest::Client>, String> {
    let (Some(cert), Some(key)) = (&spec.client_cert_file, &spec.client_key_file) else { return Ok(None) };
    let files = crate::tls::CertKeyFiles {
        cert: cert.into(),
        key: key.into(),
        cert_var: "field `client_cert_file`",
        key_var: "field `client_key_file`",
    };
    let mut builder = crate::tls::http_client_builder(&deps.tls, Some(&files))?.redirect(redirect_policy());
    if spec.http2 {
        builder = builder.http2_prior_knowledge();
    }
    builder.build().map(Some).map_err(|e| format!("client for `client_cert_file`: {}", crate::tls::reason(&e)))
}
