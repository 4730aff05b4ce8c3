//! Delivers final outcomes to Camunda, exactly once per task: success → complete (result as
//! typed variables, process or local scope per topic), business error → bpmnError, exhausted →
//! failure with retries 0 (an incident). A report is taken by one conditional update before it is
//! sent, so the dispatcher's inline report and the relay's sweep never both send it. When an
//! earlier send's fate is unknown, Camunda's 404 (task gone) means it landed.

use std::{sync::Arc, time::Duration};

use chrono::Utc;

use super::client::{CamundaClient, CamundaError};
use crate::{
    domain::TaskStatus,
    store::{ReportOutcome, StoreError, TaskRecord, TaskStore},
    topics::{Registry, VariableScope},
};

/// Sends before a report counts as undeliverable.
const MAX_REPORT_ATTEMPTS: u32 = 12;
/// How long a taken report is held before another reporter may try it.
const REPORT_HOLD: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct Reporter {
    client: CamundaClient,
    store: Arc<dyn TaskStore>,
    registry: Registry,
}

/// Backoff between report attempts: 1 s doubling to 5 min.
fn report_backoff(attempts: u32) -> chrono::Duration {
    let secs = 1u64 << attempts.min(9);
    chrono::Duration::seconds(secs.min(300) as i64)
}

impl Reporter {
    pub fn new(client: CamundaClient, store: Arc<dyn TaskStore>, registry: Registry) -> Self {
        Self { client, store, registry }
    }

    pub fn client(&self) -> &CamundaClient {
        &self.client
    }

    /// Reports every due report, oldest first; returns how many were attempted.
    pub async fn sweep(&self) -> Result<u64, StoreError> {
        let due = self.store.due_reports(Utc::now(), 100).await?;
        let mut sent = 0;
        for task in due {
            if self.report(&task).await? {
                sent += 1;
            }
        }
        Ok(sent)
    }

    /// Takes and sends one task's report if it is still owed; `false` if someone else holds it.
    #[tracing::instrument(skip_all, fields(task_id = %task.task_id))]
    pub async fn report(&self, task: &TaskRecord) -> Result<bool, StoreError> {
        let Some(seen) = task.camunda.report_due_at.map(|d| d.to_chrono()) else { return Ok(false) };
        let now = Utc::now();
        if seen > now {
            // A hold, not a due time: another sender (the relay's sweep, say, if this record was
            // read after it took the report) is sending it now.
            return Ok(false);
        }
        let until = now + chrono::Duration::from_std(REPORT_HOLD).unwrap_or_default();
        if !self.store.take_report(&task.task_id, seen, until).await? {
            return Ok(false);
        }
        let attempts = task.camunda.report_attempts.unwrap_or(0);
        let outcome = match self.send(task, attempts > 0).await {
            Ok(()) => ReportOutcome::Reported,
            // An earlier send may have landed before we lost its answer: Camunda then no longer
            // knows the task, which is what a delivered complete or bpmnError leaves behind.
            Err(CamundaError::NotFound(_)) if attempts > 0 => ReportOutcome::Reported,
            Err(e) if e.is_final() => ReportOutcome::Failed { error: e.to_string() },
            Err(e) if attempts + 1 >= MAX_REPORT_ATTEMPTS => {
                ReportOutcome::Failed { error: format!("gave up after {} attempts: {e}", attempts + 1) }
            }
            Err(e) => ReportOutcome::Retry { error: e.to_string(), at: Utc::now() + report_backoff(attempts) },
        };
        match &outcome {
            ReportOutcome::Reported => tracing::info!(status = task.status.as_str(), "reported to Camunda"),
            ReportOutcome::Failed { error } => tracing::warn!(%error, "report to Camunda failed for good"),
            ReportOutcome::Retry { error, .. } => tracing::warn!(%error, attempts, "report to Camunda will be retried"),
        }
        self.store.record_report(&task.task_id, outcome).await?;
        Ok(true)
    }

    async fn send(&self, task: &TaskRecord, resend: bool) -> Result<(), CamundaError> {
        let id = &task.task_id;
        let worker = &task.worker_id;
        let message = task.error_message.as_deref().unwrap_or("failed");
        match (task.status, task.error_code.as_deref()) {
            (TaskStatus::Succeeded, _) => {
                let local =
                    self.registry.get(&task.topic).is_some_and(|t| t.spec.variable_scope == VariableScope::Local);
                self.client.complete(id, worker, &task.result.clone().unwrap_or_default(), local).await
            }
            (TaskStatus::Failed, Some(code)) if code != "ATTEMPTS_EXHAUSTED" => {
                self.client.bpmn_error(id, worker, code, message).await
            }
            (TaskStatus::Failed, _) => {
                // A failure leaves the task at Camunda: on a resend, its zero retries show the
                // earlier send landed.
                if resend {
                    match self.client.get(id).await {
                        Ok(info) if info.retries == Some(0) => return Ok(()),
                        Ok(_) => {}
                        Err(e) => return Err(e),
                    }
                }
                self.client.failure(id, worker, message, 0, Duration::ZERO).await
            }
            (other, _) => {
                tracing::error!(status = other.as_str(), "asked to report a task that is not final");
                Ok(())
            }
        }
    }

    /// A retryable failure with attempts left: tell Camunda (retries left, and a retry timeout
    /// long enough to cover the gateway's own next attempt, so the lock stays with this worker).
    /// Best effort: the final outcome is what must arrive, and it is reported durably.
    pub async fn report_retry(
        &self,
        task: &TaskRecord,
        attempts_left: u32,
        next_attempt_in: Duration,
        timeout: Duration,
    ) {
        let message = task.error_message.as_deref().unwrap_or("retryable failure");
        let retry_timeout = next_attempt_in + timeout + Duration::from_secs(30);
        if let Err(error) =
            self.client.failure(&task.task_id, &task.worker_id, message, attempts_left, retry_timeout).await
        {
            tracing::warn!(%error, task_id = %task.task_id, "could not report a retryable failure to Camunda");
        }
    }
}
