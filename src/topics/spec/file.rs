//! Reading a topic file (`topics/<name>.toml`) into a [`TopicSpec`]: the file's own shape (every
//! field optional where a default exists, unknown fields refused), the defaults it falls back to,
//! and every check a value must pass. A mistake names the file and the field.

use std::{path::Path, time::Duration};

use serde::Deserialize;

use super::{
    ErrorCodes, HandlerKind, JsonVariables, RetryPolicy, Source, TopicSpec, VariableScope, default_initial,
    default_max, default_multiplier,
};
use crate::domain::TopicName;

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
}
