//! A Camunda 7 REST client for the external-task calls the gateway makes. It maps Camunda's
//! answers onto [`CamundaError`]: 404 (task gone) and 400 (lock held by another worker, or a
//! request Camunda refuses) are final; 5xx and network errors are worth retrying. The password
//! never appears in errors or logs, nor does the URL (`CAMUNDA_URL` may carry a token). Ids go
//! into paths one encoded segment each, and answers are read up to a bound (see [`super::rest`]).

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{
    rest::{ANSWER_LIMIT, FETCH_ANSWER_LIMIT_PER_TASK, XML_ANSWER_LIMIT, endpoint, read_capped},
    variables::{from_typed_map, to_typed_map},
};
use crate::{
    config::{CamundaSettings, Secret},
    topics::JsonVariables,
};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CamundaError {
    /// 404: the external task does not exist (completed, deleted, or never existed).
    #[error("not found at Camunda: {0}")]
    NotFound(String),
    /// 400: refused for good, e.g. locked by another worker.
    #[error("refused by Camunda: {0}")]
    Refused(String),
    /// 5xx, timeout or connection failure: try again later.
    #[error("Camunda unavailable: {0}")]
    Unavailable(String),
}

impl CamundaError {
    pub fn is_final(&self) -> bool {
        !matches!(self, Self::Unavailable(_))
    }
}

/// An external task as fetchAndLock returns it, variables already plain JSON.
#[derive(Debug, Clone)]
pub struct LockedTask {
    pub id: String,
    pub topic: String,
    pub worker_id: String,
    pub process_instance_id: Option<String>,
    pub retries: Option<i64>,
    pub variables: Map<String, Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawLockedTask {
    id: String,
    topic_name: String,
    worker_id: Option<String>,
    process_instance_id: Option<String>,
    retries: Option<i64>,
    #[serde(default)]
    variables: Map<String, Value>,
}

/// What Camunda knows of one external task (for deciding whether a report already landed).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExternalTaskInfo {
    pub id: String,
    pub worker_id: Option<String>,
    pub retries: Option<i64>,
    pub error_message: Option<String>,
    pub activity_id: Option<String>,
    pub process_definition_id: Option<String>,
    pub process_instance_id: Option<String>,
}

/// What Camunda's history says became of an external task that it no longer knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskFate {
    /// Completed, or ended by a BPMN error, by this worker.
    EndedBy { worker_id: Option<String> },
    /// Deleted: its process instance was cancelled, or the task removed.
    Deleted,
    /// The history has no ending for it (history off, or never existed).
    Unknown,
}

#[derive(Clone)]
pub struct CamundaClient {
    http: reqwest::Client,
    base: String,
    auth: Option<(String, Secret)>,
}

impl CamundaClient {
    /// Trusts the system roots plus `CA_BUNDLE_FILE`, and presents `CAMUNDA_CLIENT_CERT_FILE`
    /// when set (`tls`).
    pub fn new(settings: &CamundaSettings, tls: &crate::tls::TlsSettings) -> anyhow::Result<Self> {
        let builder = crate::tls::http_client_builder(tls, tls.camunda_client.as_ref()).map_err(anyhow::Error::msg)?;
        let http = builder.connect_timeout(Duration::from_secs(5)).build()?;
        let auth =
            settings.username.clone().map(|user| (user, settings.password.clone().unwrap_or_else(|| Secret::new(""))));
        Ok(Self { http, base: settings.url.clone(), auth })
    }

    /// `CAMUNDA_URL` as it may be shown: its password and query values masked.
    pub fn base_url(&self) -> String {
        crate::config::redact_uri(&self.base)
    }

    /// The URL of `segments` (ids among them) under `CAMUNDA_URL`, with `query` added.
    fn url(&self, segments: &[&str], query: &[(&str, &str)]) -> Result<url::Url, CamundaError> {
        endpoint(&self.base, segments, query)
    }

    /// One call; the answer is read up to `limit` bytes.
    async fn call(
        &self,
        url: url::Url,
        body: Option<Value>,
        timeout: Duration,
        limit: usize,
    ) -> Result<Value, CamundaError> {
        let mut request = match &body {
            Some(b) => self.http.post(url).json(b),
            None => self.http.get(url),
        }
        .timeout(timeout);
        request = crate::trace::propagate(request);
        if let Some((user, password)) = &self.auth {
            request = request.basic_auth(user, Some(password.expose()));
        }
        // Names the peer (host:port, never the URL) and the reason, a failed TLS handshake's too.
        let response = request.send().await.map_err(|e| CamundaError::Unavailable(crate::tls::request_error(&e)))?;
        let status = response.status();
        let text = match read_capped(response, limit).await {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            // An error's body only lends its message; the status still decides.
            Err(_) if !status.is_success() => String::new(),
            Err(e) => return Err(e),
        };
        let message = || {
            serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_else(|| format!("HTTP {status}"))
        };
        match status.as_u16() {
            200..=299 if text.trim().is_empty() => Ok(Value::Null),
            200..=299 => serde_json::from_str(&text).map_err(|e| CamundaError::Unavailable(format!("bad JSON: {e}"))),
            404 => Err(CamundaError::NotFound(message())),
            400..=499 if status.as_u16() != 408 && status.as_u16() != 429 => Err(CamundaError::Refused(message())),
            _ => Err(CamundaError::Unavailable(message())),
        }
    }

    /// Long-polls for up to `wait` for tasks of `topics` (name, lock duration).
    pub async fn fetch_and_lock(
        &self,
        worker_id: &str,
        max_tasks: u32,
        wait: Duration,
        topics: &[(String, Duration)],
    ) -> Result<Vec<LockedTask>, CamundaError> {
        let topics: Vec<Value> = topics
            .iter()
            .map(|(name, lock)| json!({"topicName": name, "lockDuration": lock.as_millis() as u64}))
            .collect();
        let body = json!({
            "workerId": worker_id,
            "maxTasks": max_tasks,
            "usePriority": true,
            "asyncResponseTimeout": wait.as_millis() as u64,
            "topics": topics,
        });
        // The HTTP timeout must outlast the long poll.
        let url = self.url(&["external-task", "fetchAndLock"], &[])?;
        let limit = FETCH_ANSWER_LIMIT_PER_TASK.saturating_mul(max_tasks.max(1) as usize);
        let answer = self.call(url, Some(body), wait + Duration::from_secs(10), limit).await?;
        let raw: Vec<RawLockedTask> =
            serde_json::from_value(answer).map_err(|e| CamundaError::Unavailable(format!("unexpected answer: {e}")))?;
        Ok(raw
            .into_iter()
            .map(|t| LockedTask {
                id: t.id,
                topic: t.topic_name,
                worker_id: t.worker_id.unwrap_or_else(|| worker_id.to_owned()),
                process_instance_id: t.process_instance_id,
                retries: t.retries,
                variables: from_typed_map(&t.variables),
            })
            .collect())
    }

    const CALL_TIMEOUT: Duration = Duration::from_secs(10);

    pub async fn complete(
        &self,
        task_id: &str,
        worker_id: &str,
        variables: &Map<String, Value>,
        local: bool,
        json: JsonVariables,
    ) -> Result<(), CamundaError> {
        let key = if local { "localVariables" } else { "variables" };
        let body = json!({"workerId": worker_id, key: to_typed_map(variables, json)});
        let url = self.url(&["external-task", task_id, "complete"], &[])?;
        self.call(url, Some(body), Self::CALL_TIMEOUT, ANSWER_LIMIT).await.map(|_| ())
    }

    /// Throws BPMN error `code`; `errorMessage` is also set as a process variable, which is
    /// where the seed's processes read it.
    pub async fn bpmn_error(
        &self,
        task_id: &str,
        worker_id: &str,
        code: &str,
        message: &str,
    ) -> Result<(), CamundaError> {
        let body = json!({"workerId": worker_id, "errorCode": code, "errorMessage": message,
            "variables": {"errorMessage": {"value": message, "type": "String"}}});
        let url = self.url(&["external-task", task_id, "bpmnError"], &[])?;
        self.call(url, Some(body), Self::CALL_TIMEOUT, ANSWER_LIMIT).await.map(|_| ())
    }

    /// Reports a failure; with `retries` 0 Camunda raises an incident showing `message` (cut to
    /// the 666 characters its column holds) and keeps `details` whole.
    pub async fn failure(
        &self,
        task_id: &str,
        worker_id: &str,
        message: &str,
        details: &str,
        retries: u32,
        retry_timeout: Duration,
    ) -> Result<(), CamundaError> {
        let body = json!({
            "workerId": worker_id,
            "errorMessage": message.chars().take(600).collect::<String>(),
            "errorDetails": details,
            "retries": retries,
            "retryTimeout": retry_timeout.as_millis() as u64,
        });
        let url = self.url(&["external-task", task_id, "failure"], &[])?;
        self.call(url, Some(body), Self::CALL_TIMEOUT, ANSWER_LIMIT).await.map(|_| ())
    }

    pub async fn extend_lock(&self, task_id: &str, worker_id: &str, duration: Duration) -> Result<(), CamundaError> {
        let body = json!({"workerId": worker_id, "newDuration": duration.as_millis() as u64});
        let url = self.url(&["external-task", task_id, "extendLock"], &[])?;
        self.call(url, Some(body), Self::CALL_TIMEOUT, ANSWER_LIMIT).await.map(|_| ())
    }

    pub async fn unlock(&self, task_id: &str) -> Result<(), CamundaError> {
        let url = self.url(&["external-task", task_id, "unlock"], &[])?;
        self.call(url, Some(json!({})), Self::CALL_TIMEOUT, ANSWER_LIMIT).await.map(|_| ())
    }

    pub async fn get(&self, task_id: &str) -> Result<ExternalTaskInfo, CamundaError> {
        let url = self.url(&["external-task", task_id], &[])?;
        let v = self.call(url, None, Self::CALL_TIMEOUT, ANSWER_LIMIT).await?;
        serde_json::from_value(v).map_err(|e| CamundaError::Unavailable(format!("unexpected answer: {e}")))
    }

    /// The BPMN 2.0 XML of a process definition.
    pub async fn definition_xml(&self, definition_id: &str) -> Result<String, CamundaError> {
        let url = self.url(&["process-definition", definition_id, "xml"], &[])?;
        let v = self.call(url, None, Self::CALL_TIMEOUT, XML_ANSWER_LIMIT).await?;
        v.get("bpmn20Xml")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| CamundaError::Unavailable("answer without bpmn20Xml".into()))
    }

    /// How an external task Camunda no longer knows ended, from its external task log. A
    /// complete leaves a success entry; a bpmnError and a deleted process instance both leave a
    /// deletion entry naming the lock holder, told apart by whether the instance was terminated.
    pub async fn fate(&self, task_id: &str) -> Result<TaskFate, CamundaError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct LogEntry {
            worker_id: Option<String>,
            process_instance_id: Option<String>,
            #[serde(default)]
            success_log: bool,
            #[serde(default)]
            deletion_log: bool,
        }
        let query = [("externalTaskId", task_id), ("sortBy", "timestamp"), ("sortOrder", "desc")];
        let v = self
            .call(self.url(&["history", "external-task-log"], &query)?, None, Self::CALL_TIMEOUT, ANSWER_LIMIT)
            .await?;
        let log: Vec<LogEntry> =
            serde_json::from_value(v).map_err(|e| CamundaError::Unavailable(format!("unexpected answer: {e}")))?;
        let Some(end) = log.into_iter().find(|e| e.success_log || e.deletion_log) else { return Ok(TaskFate::Unknown) };
        if end.success_log {
            return Ok(TaskFate::EndedBy { worker_id: end.worker_id });
        }
        let instance = match &end.process_instance_id {
            Some(pid) => {
                let url = self.url(&["history", "process-instance", pid], &[])?;
                self.call(url, None, Self::CALL_TIMEOUT, ANSWER_LIMIT).await?
            }
            None => Value::Null,
        };
        Ok(match instance.get("state").and_then(Value::as_str) {
            Some("EXTERNALLY_TERMINATED") | None => TaskFate::Deleted,
            Some(_) => TaskFate::EndedBy { worker_id: end.worker_id },
        })
    }

    /// Whether the engine answers (for `/health`).
    pub async fn ping(&self) -> bool {
        let Ok(url) = self.url(&["engine"], &[]) else { return false };
        self.call(url, None, Duration::from_secs(3), ANSWER_LIMIT).await.is_ok()
    }
}
