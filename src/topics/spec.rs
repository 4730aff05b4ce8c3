//! What the gateway knows about one topic, [`TopicSpec`], and the values it is made of (handler,
//! source, retry policy, BPMN error codes). Reading one from its file, with every check, is
//! `spec/file`; a spec that exists is valid.

mod file;

use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};

pub use file::{SpecDefaults, SpecError};

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

#[cfg(test)]
mod tests {
    use super::*;

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
