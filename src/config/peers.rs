//! `MONGODB_*`, `RABBITMQ_*` and `CAMUNDA_*`: where the gateway's three peers are and how it talks
//! to them. URIs and passwords are [`Secret`]s (or shown redacted), so no `Debug` of these
//! settings puts a credential in a log line. The policies that ride along (consumer retries,
//! report re-sends) are read by their own modules.

use std::{collections::HashMap, fmt, time::Duration};

use super::{ConfigError, Reader, Secret, positive, redact_uri};

#[derive(Debug, Clone)]
pub struct MongoSettings {
    /// `MONGODB_URI` (mongodb://localhost:27017); may hold credentials.
    pub uri: Secret,
    /// `MONGODB_DATABASE` (worker_gateway).
    pub database: String,
    /// `MONGODB_TIMEOUT_MS` (5000): server selection and connect timeout, so a submit answers 503
    /// quickly when MongoDB is unreachable.
    pub timeout: Duration,
    /// `MONGODB_MAX_POOL_SIZE` (10): connections per process.
    pub max_pool_size: u32,
    /// `MONGODB_WRITE_TIMEOUT_MS` (10000): how long a write waits for a majority (`wtimeout`);
    /// past it the write is "unavailable" (503, retried inside) instead of hanging.
    pub write_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct RabbitSettings {
    /// `RABBITMQ_URL` (amqp://guest:guest@localhost:5672/%2f); may hold credentials.
    pub url: Secret,
    /// `RABBITMQ_EXCHANGE` (worker_gateway): the topic exchange; queue names derive from it.
    pub exchange: String,
    /// `RABBITMQ_DELIVERY_LIMIT` (10): quorum-queue deliveries before a message is dead-lettered.
    pub delivery_limit: u32,
    /// `RABBITMQ_CONSUME_TIMEOUT_MS`, `RABBITMQ_CONSUMER_RETRY_*_MS`, `DEAD_LETTER_RETENTION_DAYS`:
    /// how a topic whose queue cannot be consumed is retried, and how long dead letters are kept.
    pub consumers: crate::broker::ConsumerPolicy,
}

/// `Debug` shows the URL redacted (it may carry a password or a `?token=`).
#[derive(Clone)]
pub struct CamundaSettings {
    /// `CAMUNDA_URL`: the engine's REST base, e.g. http://localhost:8080/engine-rest; may hold
    /// credentials (user info) or a token in its query, which every call then carries.
    pub url: String,
    /// `CAMUNDA_USERNAME` (unset): basic auth user.
    pub username: Option<String>,
    /// `CAMUNDA_PASSWORD` (unset): basic auth password.
    pub password: Option<Secret>,
    /// `CAMUNDA_WORKER_ID` (worker-api-gateway): worker id for pull mode.
    pub worker_id: String,
    /// `CAMUNDA_REPORT_*`: how owed reports are re-sent and when they are given up.
    pub report: crate::camunda::ReportPolicy,
}

impl fmt::Debug for CamundaSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CamundaSettings")
            .field("url", &redact_uri(&self.url))
            .field("username", &self.username)
            .field("password", &self.password)
            .field("worker_id", &self.worker_id)
            .field("report", &self.report)
            .finish()
    }
}

impl MongoSettings {
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let r = Reader(vars);
        Ok(Self {
            uri: Secret::new(r.get("MONGODB_URI").unwrap_or("mongodb://localhost:27017")),
            database: r.parse_or("MONGODB_DATABASE", "worker_gateway".to_owned(), |s| {
                let ok = !s.is_empty() && s.len() <= 63 && !s.contains(['/', '\\', '.', ' ', '"', '$', '\0']);
                ok.then(|| s.to_owned())
            })?,
            timeout: Duration::from_millis(r.parse_or("MONGODB_TIMEOUT_MS", 5000, positive)?),
            max_pool_size: r.parse_or("MONGODB_MAX_POOL_SIZE", 10, |s| s.parse().ok().filter(|n| *n > 0))?,
            write_timeout: Duration::from_millis(r.parse_or("MONGODB_WRITE_TIMEOUT_MS", 10_000, positive)?),
        })
    }
}

impl RabbitSettings {
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let r = Reader(vars);
        Ok(Self {
            url: Secret::new(r.get("RABBITMQ_URL").unwrap_or("amqp://guest:guest@localhost:5672/%2f")),
            exchange: r.parse_or("RABBITMQ_EXCHANGE", "worker_gateway".to_owned(), |s| {
                let ok = !s.is_empty()
                    && s.len() <= 100
                    && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
                ok.then(|| s.to_owned())
            })?,
            delivery_limit: r.parse_or("RABBITMQ_DELIVERY_LIMIT", 10, |s| s.parse().ok().filter(|n| *n > 0))?,
            consumers: crate::broker::ConsumerPolicy::from_vars(vars)?,
        })
    }
}

impl CamundaSettings {
    /// `None` unless `CAMUNDA_URL` is set: without it the gateway runs with no Camunda link.
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Option<Self>, ConfigError> {
        let r = Reader(vars);
        Ok(match r.get("CAMUNDA_URL") {
            None => None,
            Some(url) => {
                url::Url::parse(url).map_err(|e| ConfigError { var: "CAMUNDA_URL", message: e.to_string() })?;
                Some(CamundaSettings {
                    url: url.trim_end_matches('/').to_owned(),
                    username: r.get("CAMUNDA_USERNAME").map(str::to_owned),
                    password: r.get("CAMUNDA_PASSWORD").map(Secret::new),
                    worker_id: r.get("CAMUNDA_WORKER_ID").unwrap_or("worker-api-gateway").to_owned(),
                    report: crate::camunda::ReportPolicy::from_vars(vars)?,
                })
            }
        })
    }
}
