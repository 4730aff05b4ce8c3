//! Typed settings, read once from the environment (and a `.env` file when present) through the
//! `config` crate, validated once. A bad value stops start-up with a message naming the variable.
//! Secrets live in [`Secret`], whose `Debug`/`Display` never show the value.

use std::{collections::HashMap, fmt, net::IpAddr, path::PathBuf, str::FromStr, time::Duration};

use crate::domain::{Limits, StatusLabels};

mod otlp;
mod peers;
mod redact;

pub use otlp::OtlpSettings;
pub use peers::{CamundaSettings, MongoSettings, RabbitSettings};
pub use redact::redact_uri;

/// A value that must never reach a log line (a password, or a URI that may hold one).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The raw value, for the one place that needs it (a driver's connect call).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URI with its password, query values and fragment masked ([`redact_uri`]), safe to log.
    pub fn redacted_uri(&self) -> String {
        redact_uri(&self.0)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Which parts of the gateway this process runs (`GATEWAY_MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// HTTP API, consumers and relay.
    All,
    /// HTTP API and relay; no consumers.
    Api,
    /// Consumers and relay; HTTP serves only `/health`, `/live`, `/metrics`.
    Worker,
}

impl Mode {
    pub fn consumes(self) -> bool {
        matches!(self, Self::All | Self::Worker)
    }
    pub fn serves_api(self) -> bool {
        matches!(self, Self::All | Self::Api)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// What `POST /tasks/submit` does with a submission that fails validation (`INVALID_SUBMISSIONS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InvalidSubmissions {
    /// Answer 400/422 with every offending field.
    #[default]
    Reject,
    /// Answer 200 and store a `failed` task whose error says why (when its ids are usable).
    Record,
}

#[derive(Debug, Clone)]
pub struct Settings {
    /// `HOST` (0.0.0.0): address to bind.
    pub host: IpAddr,
    /// `PORT` (8000): HTTP port; 0 picks a free one.
    pub port: u16,
    /// `GATEWAY_MODE` (all): all | api | worker.
    pub mode: Mode,
    /// `DEBUG` (false): when true the default log level is debug.
    pub debug: bool,
    /// `LOG_LEVEL` (info, or debug with DEBUG=true): a tracing filter.
    pub log_level: String,
    /// `LOG_FORMAT` (json): json | pretty.
    pub log_format: LogFormat,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` (unset: no export): where spans are sent over OTLP/HTTP.
    pub otlp: Option<OtlpSettings>,
    pub mongodb: MongoSettings,
    pub rabbitmq: RabbitSettings,
    /// `TASK_TIMEOUT` (300 s): default handler timeout; topic files override.
    pub task_timeout: Duration,
    /// `TASK_RETRY_LIMIT` (3): default attempt limit; topic files override.
    pub task_retry_limit: u32,
    /// `TOPICS_DIR` (./topics): one TOML file per topic.
    pub topics_dir: PathBuf,
    /// `STATUS_LABELS` (english): english | seed.
    pub status_labels: StatusLabels,
    /// `INVALID_SUBMISSIONS` (reject): reject answers an invalid submission 4xx; record answers
    /// 200 and stores it as a `failed` task saying why, for worker fleets (the seed's) that read
    /// every non-200 as an outage.
    pub invalid_submissions: InvalidSubmissions,
    /// `MAX_ID_LENGTH` (128), `MAX_VARIABLES` (1000), `MAX_VARIABLE_DEPTH` (10), `MAX_STRING_LENGTH` (65536).
    pub limits: Limits,
    /// `MAX_BODY_BYTES` (1 MiB): larger request bodies get 413.
    pub max_body_bytes: usize,
    /// `RELAY_INTERVAL_MS` (1000): period of the relay's sweeps.
    pub relay_interval: Duration,
    /// `SHUTDOWN_GRACE_SECONDS` (30): how long in-flight handlers may finish after SIGTERM.
    pub shutdown_grace: Duration,
    /// Set when `CAMUNDA_URL` is.
    pub camunda: Option<CamundaSettings>,
    /// `SUBMIT_BATCH_MAX` (100): most submissions written in one batch (group commit); 1 turns
    /// batching off.
    pub submit_batch_max: usize,
    /// API keys, scopes and modes (`crate::auth`).
    pub auth: crate::auth::AuthSettings,
    /// Rate limits, load shedding, server timeouts (`crate::guard`).
    pub guard: crate::guard::GuardSettings,
    /// CA bundle, client certificates, the API's certificate (`crate::tls`).
    pub tls: crate::tls::TlsSettings,
    /// `/events` and status waits: ring size, lag limit, keep-alive, wait cap (`crate::events`).
    pub events: crate::events::EventsSettings,
    /// `REPUBLISH_AFTER_SECONDS` (120), `REPUBLISH_RATE` (200 a second): re-sending tasks whose
    /// messages the broker lost (`crate::resend`).
    pub resend: crate::resend::ResendSettings,
    /// `TASK_RETENTION_DAYS`, `RETENTION_SWEEP_SECONDS`: how long finished tasks are kept (`crate::retention`).
    pub retention: crate::retention::RetentionSettings,
    /// `STATISTICS_MAX_AGE_SECONDS`: how old the cached statistics may get (`crate::statistics`).
    pub statistics: crate::statistics::StatisticsSettings,
}

/// A variable that could not be used; the message names it.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {var}: {message}")]
pub struct ConfigError {
    pub var: &'static str,
    pub message: String,
}

impl Settings {
    /// Reads `.env` (if present, without overriding the real environment), then the environment.
    pub fn load() -> Result<Self, ConfigError> {
        // A missing .env is normal; a malformed one is worth stopping for.
        if let Err(e) = dotenvy::dotenv()
            && !e.not_found()
        {
            return Err(ConfigError { var: ".env", message: e.to_string() });
        }
        let env = config::Config::builder()
            .add_source(config::Environment::default().try_parsing(false))
            .build()
            .and_then(|c| c.try_deserialize::<HashMap<String, config::Value>>())
            .map_err(|e| ConfigError { var: "environment", message: e.to_string() })?;
        let vars: HashMap<String, String> =
            env.into_iter().filter_map(|(k, v)| v.into_string().ok().map(|v| (k.to_ascii_uppercase(), v))).collect();
        Self::from_vars(&vars)
    }

    /// Builds settings from variable names → values (upper-case names); used by `load` and tests.
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let r = Reader(vars);
        let debug = r.parse_or("DEBUG", false, parse_bool)?;
        let camunda = CamundaSettings::from_vars(vars)?;
        let settings = Settings {
            host: r.parse_or("HOST", IpAddr::from([0, 0, 0, 0]), |s| s.parse().ok())?,
            port: r.parse_or("PORT", 8000, |s| s.parse().ok())?,
            mode: r.parse_or("GATEWAY_MODE", Mode::All, |s| match s {
                "all" => Some(Mode::All),
                "api" => Some(Mode::Api),
                "worker" => Some(Mode::Worker),
                _ => None,
            })?,
            debug,
            log_level: r.get("LOG_LEVEL").unwrap_or(if debug { "debug" } else { "info" }).to_owned(),
            log_format: r.parse_or("LOG_FORMAT", LogFormat::Json, |s| match s {
                "json" => Some(LogFormat::Json),
                "pretty" => Some(LogFormat::Pretty),
                _ => None,
            })?,
            otlp: OtlpSettings::from_vars(vars)?,
            mongodb: MongoSettings::from_vars(vars)?,
            rabbitmq: RabbitSettings::from_vars(vars)?,
            task_timeout: Duration::from_secs(r.parse_or("TASK_TIMEOUT", 300, positive)?),
            task_retry_limit: r.parse_or("TASK_RETRY_LIMIT", 3, |s| s.parse().ok().filter(|n| *n > 0))?,
            topics_dir: PathBuf::from(r.get("TOPICS_DIR").unwrap_or("./topics")),
            status_labels: r.parse_or("STATUS_LABELS", StatusLabels::English, |s| match s {
                "english" => Some(StatusLabels::English),
                "seed" => Some(StatusLabels::Seed),
                _ => None,
            })?,
            invalid_submissions: r.parse_or("INVALID_SUBMISSIONS", InvalidSubmissions::Reject, |s| match s {
                "reject" => Some(InvalidSubmissions::Reject),
                "record" => Some(InvalidSubmissions::Record),
                _ => None,
            })?,
            limits: Limits {
                max_id_length: r.parse_or("MAX_ID_LENGTH", 128, positive_usize)?,
                max_variables: r.parse_or("MAX_VARIABLES", Limits::default().max_variables, positive_usize)?,
                max_depth: r.parse_or("MAX_VARIABLE_DEPTH", 10, positive_usize)?,
                max_string_length: r.parse_or("MAX_STRING_LENGTH", 65_536, positive_usize)?,
            },
            max_body_bytes: r.parse_or("MAX_BODY_BYTES", 1024 * 1024, positive_usize)?,
            relay_interval: Duration::from_millis(r.parse_or("RELAY_INTERVAL_MS", 1000, positive)?),
            shutdown_grace: Duration::from_secs(r.parse_or("SHUTDOWN_GRACE_SECONDS", 30, |s| s.parse().ok())?),
            camunda,
            submit_batch_max: r.parse_or("SUBMIT_BATCH_MAX", 100, positive_usize)?,
            auth: crate::auth::AuthSettings::from_vars(vars)?,
            guard: crate::guard::GuardSettings::from_vars(vars)?,
            tls: crate::tls::TlsSettings::from_vars(vars)?,
            events: crate::events::EventsSettings::from_vars(vars)?,
            retention: crate::retention::RetentionSettings::from_vars(vars)?,
            statistics: crate::statistics::StatisticsSettings::from_vars(vars)?,
            resend: crate::resend::ResendSettings::from_vars(vars)?,
        };
        Ok(settings)
    }
}

/// Reads typed values from the variables, naming the variable in any error. Settings of other
/// modules (`auth`, `guard`, `tls`) read theirs through it too.
pub(crate) struct Reader<'a>(pub(crate) &'a HashMap<String, String>);

impl Reader<'_> {
    pub(crate) fn get(&self, var: &str) -> Option<&str> {
        self.0.get(var).map(|s| s.trim()).filter(|s| !s.is_empty())
    }

    pub(crate) fn parse_or<T>(
        &self,
        var: &'static str,
        default: T,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<T, ConfigError> {
        match self.get(var) {
            None => Ok(default),
            Some(raw) => parse(raw).ok_or_else(|| ConfigError { var, message: format!("invalid value {raw:?}") }),
        }
    }
}

pub(crate) fn parse_bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

pub(crate) fn positive(s: &str) -> Option<u64> {
    u64::from_str(s).ok().filter(|n| *n > 0)
}

/// A positive number of milliseconds, as a duration (the `*_MS` settings).
pub(crate) fn positive_millis(s: &str) -> Option<std::time::Duration> {
    positive(s).map(std::time::Duration::from_millis)
}

pub(crate) fn positive_usize(s: &str) -> Option<usize> {
    usize::from_str(s).ok().filter(|n| *n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_match_the_seed() {
        // Only the key file has no default: AUTH_MODE=keys needs one (or ANONYMOUS_SCOPES).
        let s = Settings::from_vars(&vars(&[("API_KEYS_FILE", "keys.toml")])).expect("defaults are valid");
        assert_eq!(s.port, 8000);
        assert_eq!(s.task_timeout, Duration::from_secs(300));
        assert_eq!(s.task_retry_limit, 3);
        assert_eq!(s.rabbitmq.exchange, "worker_gateway");
        assert!(s.camunda.is_none());
    }

    #[test]
    fn a_bad_value_names_its_variable() {
        let err = Settings::from_vars(&vars(&[("PORT", "eighty")])).err().map(|e| e.to_string());
        assert_eq!(err.as_deref(), Some("configuration: PORT: invalid value \"eighty\""));
        let err = Settings::from_vars(&vars(&[("TASK_RETRY_LIMIT", "0")])).err().map(|e| e.var);
        assert_eq!(err, Some("TASK_RETRY_LIMIT"));
    }

    #[test]
    fn passwords_never_show() {
        let s = Secret::new("mongodb://admin:hunter2@db:27017/x");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert_eq!(s.redacted_uri(), "mongodb://admin:***@db:27017/x");
        assert_eq!(redact_uri("mongodb://u:p@h1:1,h2:2/db"), "mongodb://***@h1:1,h2:2/db");
        assert_eq!(redact_uri("amqp://guest:guest@localhost:5672/%2f"), "amqp://guest:***@localhost:5672/%2f");
    }
}
