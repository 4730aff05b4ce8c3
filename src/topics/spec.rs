//! One topic file (`topics/<name>.toml`) parsed into a [`TopicSpec`]. Parsing names the file and
//! the field on any mistake; unknown fields are mistakes too, so a typo never silently falls back
//! to a default.

use std::{path::Path, time::Duration};

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::domain::TopicName;

/// Which code runs a topic's tasks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HandlerKind {
    /// Compiled into the gateway (`say_hello`, `nova_publicacao`).
    Native,
    /// POST the task to `url` and map the answer.
    Http,
}

/// Where a topic's tasks come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Workers submit them (HTTP or straight to the exchange).
    #[default]
    Push,
    /// The gateway fetches and locks them at Camunda itself.
    Camunda,
}

/// Where result variables land at Camunda.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VariableScope {
    #[default]
    Process,
    Local,
}

/// How objects and arrays in result variables are typed at Camunda.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JsonVariables {
    /// `Object`, serialized as `application/json` with a Java map or list type: what the seed's
    /// Python workers deliver, readable in BPMN expressions as `${var.field}`.
    #[default]
    Object,
    /// Spin `Json`, for processes that read the value with Spin (`S(var)`, `var.prop("x")`).
    Spin,
}

/// The topic's `[errors]` table: which BPMN error code each kind of business error a handler
/// reports is thrown as at Camunda. A kind with no code (and no `default`) becomes an incident,
/// and so does a code no boundary event or event subprocess of the process catches.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorCodes {
    /// Code for a kind not listed in `by_kind`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    /// Kind (e.g. `validation`, `processing`) → BPMN error code.
    #[serde(flatten)]
    pub by_kind: std::collections::BTreeMap<String, String>,
}

impl ErrorCodes {
    /// The BPMN error code for a business error of `kind`, if the topic maps one.
    pub fn code_for(&self, kind: &str) -> Option<&str> {
        self.by_kind.get(kind).or(self.default.as_ref()).map(String::as_str)
    }
}

/// Exponential backoff with jitter between attempts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (default `TASK_RETRY_LIMIT`).
    pub max_attempts: u32,
    /// Delay before the second attempt, in milliseconds.
    #[serde(default = "default_initial")]
    pub initial_backoff_ms: u64,
    /// Upper bound of any delay, in milliseconds.
    #[serde(default = "default_max")]
    pub max_backoff_ms: u64,
    /// Growth factor per attempt.
    #[serde(default = "default_multiplier")]
    pub multiplier: f64,
}

fn default_initial() -> u64 {
    1_000
}
fn default_max() -> u64 {
    60_000
}
fn default_multiplier() -> f64 {
    2.0
}

impl RetryPolicy {
    /// Delay before the attempt after `failed_attempt` (1-based): the exponential value, with the
    /// upper half jittered so that a burst of failures does not retry in lock step.
    pub fn backoff(&self, failed_attempt: u32) -> Duration {
        let exp = self.multiplier.powi(failed_attempt.saturating_sub(1).min(63) as i32);
        let base = ((self.initial_backoff_ms as f64) * exp).min(self.max_backoff_ms as f64).max(0.0);
        let jittered = base / 2.0 + rand::rng().random_range(0.0..=base / 2.0);
        Duration::from_millis(jittered as u64)
    }
}

/// Everything the gateway knows about one topic.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct TopicSpec {
    pub name: String,
    pub description: String,
    pub handler: HandlerKind,
    /// Target of an `http` handler (shown with any password or key in it replaced by `***`).
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "redacted")]
    pub url: Option<String>,
    /// The native handler to run (default: the topic's own name), so one handler can serve
    /// several topics.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub native: Option<String>,
    /// `http` handler: the downstream speaks HTTP/2. On `http://` that is h2c with prior
    /// knowledge through the gateway's lean client, every concurrent call a stream on one shared
    /// connection; on `https://` it is HTTP/2 negotiated by TLS (ALPN), through reqwest.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub http2: bool,
    /// Handler timeout in seconds.
    pub timeout_seconds: u64,
    pub retry: RetryPolicy,
    /// Messages in flight at once for this topic (the consumer's prefetch).
    pub concurrency: u16,
    /// Variables that must be present in a submission.
    pub required_variables: Vec<String>,
    pub source: Source,
    pub variable_scope: VariableScope,
    /// How objects and arrays in results reach Camunda: `object` (default) or `spin`.
    pub json_variables: JsonVariables,
    /// Business error kind → BPMN error code (`[errors]`).
    pub errors: ErrorCodes,
    /// Pull mode: lock duration asked of Camunda; extended while the task is unfinished.
    pub lock_duration_seconds: u64,
    /// `http` handler on `https://`: client certificate (chain), PEM, presented when the
    /// downstream asks for one (mTLS); set with `client_key_file`. Relative paths are read from
    /// the working directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cert_file: Option<String>,
    /// The private key, PEM, of `client_cert_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_key_file: Option<String>,
    /// Days a finished task of this topic is kept (fractions allowed; 0 keeps it for ever);
    /// absent: `TASK_RETENTION_DAYS`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention_days: Option<f64>,
}

/// A handler URL may carry credentials (`https://user:key@host/`): never show them.
fn redacted<S: serde::Serializer>(url: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match url {
        Some(u) => s.serialize_some(&crate::config::redact_uri(u)),
        None => s.serialize_none(),
    }
}

impl TopicSpec {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_seconds)
    }

    pub fn lock_duration(&self) -> Duration {
        Duration::from_secs(self.lock_duration_seconds)
    }

    /// How long a finished task of this topic is kept: its own `retention_days`, else `default`
    /// (`TASK_RETENTION_DAYS`); `None` keeps it for ever.
    pub fn retention(&self, default: Option<Duration>) -> Option<Duration> {
        match self.retention_days {
            Some(days) => crate::retention::retention_from_days(days).flatten(),
            None => default,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicFile {
    name: Option<String>,
    #[serde(default)]
    description: String,
    handler: HandlerKind,
    url: Option<String>,
    native: Option<String>,
    #[serde(default)]
    http2: bool,
    timeout_seconds: Option<u64>,
    retry: Option<RetryFile>,
    concurrency: Option<u16>,
    #[serde(default)]
    required_variables: Vec<String>,
    #[serde(default)]
    source: Source,
    #[serde(default)]
    variable_scope: VariableScope,
    #[serde(default)]
    json_variables: JsonVariables,
    #[serde(default)]
    errors: ErrorCodes,
    lock_duration_seconds: Option<u64>,
    client_cert_file: Option<String>,
    client_key_file: Option<String>,
    retention_days: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryFile {
    max_attempts: Option<u32>,
    initial_backoff_ms: Option<u64>,
    max_backoff_ms: Option<u64>,
    multiplier: Option<f64>,
}

/// Defaults a topic file falls back to (from `TASK_TIMEOUT`, `TASK_RETRY_LIMIT`).
#[derive(Debug, Clone, Copy)]
pub struct SpecDefaults {
    pub timeout: Duration,
    pub max_attempts: u32,
}

/// A topic file that cannot be used; the message names the file and the field.
#[derive(Debug, thiserror::Error)]
#[error("topic file {file}: {message}")]
pub struct SpecError {
    pub file: String,
    pub message: String,
}

impl TopicSpec {
    /// Parses one file's text. `stem` (the file name without `.toml`) is the topic unless `name` says otherwise.
    pub fn parse(path: &Path, text: &str, defaults: SpecDefaults) -> Result<Self, SpecError> {
        let err = |message: String| SpecError { file: path.display().to_string(), message };
        let file: TopicFile = toml::from_str(text).map_err(|e| err(e.to_string().trim_end().to_owned()))?;
        check_client_cert(&file).map_err(err)?;
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        let name = file.name.unwrap_or_else(|| stem.to_owned());
        TopicName::parse(&name, 64).map_err(|e| err(format!("field `name` ({name:?}) {e}")))?;
        match (&file.handler, &file.url) {
            (HandlerKind::Http, None) => return Err(err("field `url` is required when handler = \"http\"".into())),
            (HandlerKind::Http, Some(url)) => {
                let parsed = url::Url::parse(url).map_err(|e| err(format!("field `url`: {e}")))?;
                if !matches!(parsed.scheme(), "http" | "https") {
                    return Err(err("field `url` must be http or https".into()));
                }
            }
            (HandlerKind::Native, Some(_)) => return Err(err("field `url` is only for handler = \"http\"".into())),
            (HandlerKind::Native, None) => {}
        }
        if file.http2 && file.handler != HandlerKind::Http {
            return Err(err("field `http2` is only for handler = \"http\"".into()));
        }
        if file.native.is_some() && file.handler != HandlerKind::Native {
            return Err(err("field `native` is only for handler = \"native\"".into()));
        }
        let retry = file.retry.unwrap_or(RetryFile {
            max_attempts: None,
            initial_backoff_ms: None,
            max_backoff_ms: None,
            multiplier: None,
        });
        let retry = RetryPolicy {
            max_attempts: retry.max_attempts.unwrap_or(defaults.max_attempts),
            initial_backoff_ms: retry.initial_backoff_ms.unwrap_or_else(default_initial),
            max_backoff_ms: retry.max_backoff_ms.unwrap_or_else(default_max),
            multiplier: retry.multiplier.unwrap_or_else(default_multiplier),
        };
        if retry.max_attempts == 0 {
            return Err(err("field `retry.max_attempts` must be at least 1".into()));
        }
        if !(retry.multiplier >= 1.0 && retry.multiplier.is_finite()) {
            return Err(err("field `retry.multiplier` must be a finite number >= 1".into()));
        }
        let timeout_seconds = file.timeout_seconds.unwrap_or(defaults.timeout.as_secs());
        if timeout_seconds == 0 {
            return Err(err("field `timeout_seconds` must be at least 1".into()));
        }
        let blank = |code: &String| code.trim().is_empty();
        let blank_kind = (file.errors.default.as_ref().is_some_and(blank).then_some("default"))
            .or_else(|| file.errors.by_kind.iter().find(|(_, code)| blank(code)).map(|(kind, _)| kind.as_str()));
        if let Some(kind) = blank_kind {
            return Err(err(format!("field `errors.{kind}` must be a non-empty BPMN error code")));
        }
        if let Some(days) = file.retention_days {
            crate::retention::retention_from_days(days)
                .ok_or_else(|| err("field `retention_days` must be a number of days >= 0 (0 keeps for ever)".into()))?;
        }
        let concurrency = file.concurrency.unwrap_or(8);
        if concurrency == 0 {
            return Err(err("field `concurrency` must be at least 1".into()));
        }
        Ok(TopicSpec {
            name,
            description: file.description,
            handler: file.handler,
            url: file.url,
            native: file.native,
            http2: file.http2,
            timeout_seconds,
            retry,
            concurrency,
            required_variables: file.required_variables,
            source: file.source,
            variable_scope: file.variable_scope,
            json_variables: file.json_variables,
            errors: file.errors,
            lock_duration_seconds: file.lock_duration_seconds.unwrap_or(60).max(1),
            client_cert_file: file.client_cert_file,
            client_key_file: file.client_key_file,
            retention_days: file.retention_days,
        })
    }
}

/// A client certificate comes with its key, on an `http` handler calling `https://` (a client
/// certificate is presented in a TLS handshake; the h2c path of `http2 = true` has none). That
/// the files load is checked when the handler is built.
fn check_client_cert(file: &TopicFile) -> Result<(), String> {
    match (&file.client_cert_file, &file.client_key_file) {
        (None, None) => return Ok(()),
        (Some(_), None) => return Err("field `client_key_file` must be set with `client_cert_file`".into()),
        (None, Some(_)) => return Err("field `client_cert_file` must be set with `client_key_file`".into()),
        (Some(_), Some(_)) => {}
    }
    if file.handler != HandlerKind::Http {
        return Err("field `client_cert_file` is only for handler = \"http\"".into());
    }
    if !file.url.as_deref().is_some_and(|u| u.starts_with("https://")) {
        let h2c = if file.http2 { " (http2 = true on http:// is cleartext HTTP/2)" } else { "" };
        return Err(format!(
            "field `client_cert_file` needs an https:// `url`: there is no TLS handshake to present it in{h2c}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: SpecDefaults = SpecDefaults { timeout: Duration::from_secs(300), max_attempts: 3 };

    #[test]
    fn a_minimal_file_takes_the_defaults() {
        let spec = TopicSpec::parse(Path::new("topics/say_hello.toml"), "handler = \"native\"", D);
        let spec = spec.expect("valid");
        assert_eq!((spec.name.as_str(), spec.timeout_seconds, spec.retry.max_attempts), ("say_hello", 300, 3));
    }

    #[test]
    fn mistakes_name_file_and_field() {
        let e = TopicSpec::parse(Path::new("t/x.toml"), "handler = \"native\"\ntimeout_secs = 5", D);
        let msg = e.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("t/x.toml") && msg.contains("timeout_secs"), "{msg}");
        let e = TopicSpec::parse(Path::new("t/x.toml"), "handler = \"http\"", D);
        assert!(e.err().map(|e| e.to_string()).unwrap_or_default().contains("`url`"));
        let e = TopicSpec::parse(Path::new("t/x.toml"), "handler = \"native\"\nhttp2 = true", D);
        assert!(e.err().map(|e| e.to_string()).unwrap_or_default().contains("`http2`"));
    }

    #[test]
    fn a_handler_urls_credentials_are_never_shown() {
        let text = "handler = \"http\"\nurl = \"https://svc:k3y@example.invalid/run\"";
        let spec = TopicSpec::parse(Path::new("t/x.toml"), text, D).expect("valid");
        let shown = serde_json::to_string(&spec).unwrap_or_default();
        assert!(!shown.contains("k3y") && shown.contains("svc:***@"), "{shown}");
    }

    #[test]
    fn the_errors_table_maps_kinds_to_codes_with_a_default() {
        let text = "handler = \"native\"\n[errors]\ndefault = \"ERR_ANY\"\nvalidation = \"ERR_INPUT\"\n";
        let spec = TopicSpec::parse(Path::new("t/x.toml"), text, D).expect("valid");
        assert_eq!(spec.errors.code_for("validation"), Some("ERR_INPUT"));
        assert_eq!(spec.errors.code_for("processing"), Some("ERR_ANY"));
        let bare = TopicSpec::parse(Path::new("t/x.toml"), "handler = \"native\"", D).expect("valid");
        assert_eq!(bare.errors.code_for("validation"), None, "no code configured: an incident");
        let e = TopicSpec::parse(Path::new("t/x.toml"), "handler = \"native\"\n[errors]\nvalidation = \" \"", D);
        assert!(e.err().map(|e| e.to_string()).unwrap_or_default().contains("errors.validation"));
    }

    #[test]
    fn a_client_certificate_needs_its_key_and_an_https_url() {
        let https = "handler = \"http\"\nurl = \"https://svc.internal/run\"\n";
        let ok = format!("{https}client_cert_file = \"c.pem\"\nclient_key_file = \"k.pem\"");
        let spec = TopicSpec::parse(Path::new("t/x.toml"), &ok, D).expect("valid");
        assert_eq!(spec.client_key_file.as_deref(), Some("k.pem"));
        let message = |text: &str| {
            TopicSpec::parse(Path::new("t/x.toml"), text, D).err().map(|e| e.to_string()).unwrap_or_default()
        };
        let lone = message(&format!("{https}client_cert_file = \"c.pem\""));
        assert!(lone.contains("t/x.toml") && lone.contains("`client_key_file`"), "{lone}");
        let h2c = "handler = \"http\"\nurl = \"http://svc/run\"\nhttp2 = true\nclient_cert_file = \"c\"\nclient_key_file = \"k\"";
        assert!(message(h2c).contains("needs an https://"), "{}", message(h2c));
        let native = "handler = \"native\"\nclient_cert_file = \"c\"\nclient_key_file = \"k\"";
        assert!(message(native).contains("only for handler"), "{}", message(native));
    }

    #[test]
    fn retention_days_allow_fractions_and_zero_keeps() {
        let spec = |text: &str| TopicSpec::parse(Path::new("t/x.toml"), &format!("handler = \"native\"\n{text}"), D);
        let default = Some(Duration::from_secs(86_400));
        let tiny = spec("retention_days = 0.00002").expect("valid");
        assert_eq!(tiny.retention(default), Some(Duration::from_micros(1_728_000)));
        assert_eq!(spec("retention_days = 0").expect("valid").retention(default), None);
        assert_eq!(spec("").expect("valid").retention(default), default);
        let e = spec("retention_days = -1").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("`retention_days`"), "{e}");
        assert!(spec("retention_days = \"30d\"").is_err());
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy { max_attempts: 5, initial_backoff_ms: 1000, max_backoff_ms: 5000, multiplier: 2.0 };
        for _ in 0..50 {
            let first = p.backoff(1).as_millis();
            assert!((500..=1000).contains(&first), "{first}");
            let third = p.backoff(3).as_millis();
            assert!((2000..=4000).contains(&third), "{third}");
            assert!(p.backoff(30).as_millis() <= 5000);
        }
    }
}
