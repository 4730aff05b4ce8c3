//! Delivers final outcomes to Camunda, exactly once per task, so that none vanishes:
//! success → complete (result as typed variables, process or local scope per topic); a business
//! error → bpmnError with the code the topic's `[errors]` table gives its kind, but only when the
//! process definition catches that code at the task (otherwise, and when no code is configured,
//! an incident: Camunda would end an uncaught BPMN error's path as if the task had succeeded);
//! exhausted attempts → an incident (failure with retries 0); a cancel → an incident, or for a
//! pulled task that never started, an unlock. A report is taken by one conditional update before
//! it is sent, so the dispatcher's inline report and the relay's sweep never both send it. When
//! Camunda no longer knows the task, its history decides: ended by us on an earlier send
//! (`reported`), by another hand (`completed_elsewhere`), or deleted (`report_failed`). When
//! Camunda cannot take a report (5xx, network), it is sent again with backoff until it reaches
//! its maximum age ([`ReportPolicy`]); only then is it `report_failed`, which an operator can
//! re-send (`POST /tasks/{id}/report`). Whether a report is due is the store's call, by its clock.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use super::{
    bpmn::ErrorCatchers,
    client::{CamundaClient, CamundaError, TaskFate},
    report_gauges::ReportGauges,
    report_policy::ReportPolicy,
};
use crate::{
    domain::TaskStatus,
    metrics::{Metrics, ReportLabels},
    store::{CANCELLED_MESSAGE, ReportOutcome, StoreError, TaskRecord, TaskSource, TaskStore},
    topics::{Registry, VariableScope},
};

/// How long a taken report is held before another reporter may try it.
const REPORT_HOLD: Duration = Duration::from_secs(30);
/// The audit action of a re-send by hand, which restarts a report's maximum age.
pub const RESEND_ACTION: &str = "resend_report";
/// Process definitions whose error catchers are kept; a deployment never changes a definition,
/// so entries never go stale, and the bound only caps memory.
const DEFINITIONS_CACHED: usize = 512;

/// What Camunda is told about a final task.
#[derive(Debug, Clone, PartialEq)]
enum Verdict {
    Complete,
    BpmnError { code: String, message: String },
    Incident { message: String, details: String },
    Unlock,
}

impl Verdict {
    /// How the report is recorded on the task (`camunda.reported_as`).
    fn label(&self) -> String {
        match self {
            Verdict::Complete => "complete".into(),
            Verdict::BpmnError { code, .. } => format!("bpmn_error {code}"),
            Verdict::Incident { .. } => "incident".into(),
            Verdict::Unlock => "unlock".into(),
        }
    }
}

#[derive(Clone)]
pub struct Reporter {
    client: CamundaClient,
    store: Arc<dyn TaskStore>,
    registry: Registry,
    metrics: Metrics,
    policy: ReportPolicy,
    /// Process definition id → what its error events catch.
    catchers: Arc<Mutex<HashMap<String, Arc<ErrorCatchers>>>>,
    gauges: Arc<ReportGauges>,
}

impl Reporter {
    pub fn new(
        client: CamundaClient,
        store: Arc<dyn TaskStore>,
        registry: Registry,
        metrics: Metrics,
        policy: ReportPolicy,
    ) -> Self {
        let gauges = Arc::new(ReportGauges::new(store.clone(), metrics.clone()));
        Self { client, store, registry, metrics, policy, catchers: Arc::default(), gauges }
    }

    pub fn client(&self) -> &CamundaClient {
        &self.client
    }

    /// Reports every due report, most overdue first; returns how many were attempted. Counts
    /// the report gauges too, every few seconds.
    pub async fn sweep(&self) -> Result<u64, StoreError> {
        self.gauges.count_if_due().await;
        let due = self.store.due_reports(100).await?;
        let mut sent = 0;
        for task in due {
            if crate::trace::within_task("report", task.trace_id.as_deref(), self.report(&task)).await? {
                sent += 1;
            }
        }
        Ok(sent)
    }

    /// Takes and sends one task's report if it is still owed; `false` if someone else holds it.
    #[tracing::instrument(skip_all, fields(task_id = %task.task_id, topic = %task.topic, trace_id = task.trace_id.as_deref()))]
    pub async fn report(&self, task: &TaskRecord) -> Result<bool, StoreError> {
        // The store decides whether it is due (by its clock) and whether another sender (the
        // relay's sweep, the dispatcher's inline report, another replica) holds it.
        let Some(task) = self.store.take_report(&task.task_id, REPORT_HOLD).await? else { return Ok(false) };
        let task = &task;
        // Counted when taken: this send included.
        let sends = task.camunda.report_attempts.unwrap_or(1).max(1);
        let outcome = match self.deliver(task, sends > 1).await {
            Ok(outcome) => outcome,
            // 404/400 (after the history check): Camunda will never take it; no point waiting.
            Err(e) if e.is_final() => ReportOutcome::Failed { error: e.to_string() },
            Err(e) => self.policy.after_failure(sends, self.report_age(task), &e.to_string()),
        };
        let label = match &outcome {
            ReportOutcome::Reported { how } => {
                tracing::info!(status = task.status.as_str(), reported_as = %how, "reported to Camunda");
                "reported"
            }
            ReportOutcome::CompletedElsewhere { by } => {
                tracing::warn!(
                    completed_by = by.as_deref().unwrap_or("unknown"),
                    "Camunda's history shows the task ended by another hand; the gateway's outcome never arrived"
                );
                "completed_elsewhere"
            }
            ReportOutcome::Failed { error } => {
                tracing::warn!(%error, "report to Camunda failed for good");
                "report_failed"
            }
            ReportOutcome::Retry { error, after } => {
                let retry_in_ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
                tracing::warn!(%error, sends, retry_in_ms, "report to Camunda will be retried");
                "retry"
            }
        };
        let labels = ReportLabels { topic: task.topic.clone(), outcome: label.to_owned() };
        self.metrics.camunda_reports.get_or_create(&labels).inc();
        self.store.record_report(&task.task_id, outcome).await?;
        Ok(true)
    }

    /// How long the report has been owed, by the store's clock: since the task's completion, or
    /// since its latest re-send by hand (the audit trail's `resend_report`), which starts a
    /// fresh maximum age.
    fn report_age(&self, task: &TaskRecord) -> Duration {
        let resent = task.audit.iter().rev().find(|a| a.action == RESEND_ACTION).map(|a| a.at);
        let since = task.completed_at.max(resent).unwrap_or(task.updated_at).to_chrono();
        (self.store.now() - since).to_std().unwrap_or_default()
    }

    /// Decides what Camunda is told, tells it, and reads a 404 against Camunda's history.
    async fn deliver(&self, task: &TaskRecord, resend: bool) -> Result<ReportOutcome, CamundaError> {
        let sent = match self.verdict(task).await {
            Ok(verdict) => self.send(task, &verdict, resend).await.map(|()| verdict),
            Err(e) => Err(e),
        };
        match sent {
            Ok(verdict) => Ok(ReportOutcome::Reported { how: verdict.label() }),
            Err(CamundaError::NotFound(message)) => match self.client.fate(&task.task_id).await? {
                // Our earlier send landed before its answer was lost: Camunda's log names us.
                // On a first send the same worker id can only be the worker's own completion.
                TaskFate::EndedBy { worker_id } if resend && worker_id.as_deref() == Some(&task.worker_id) => {
                    Ok(ReportOutcome::Reported { how: "earlier send".into() })
                }
                TaskFate::EndedBy { worker_id } => Ok(ReportOutcome::CompletedElsewhere { by: worker_id }),
                TaskFate::Deleted => Err(CamundaError::NotFound(format!(
                    "{message} (deleted at Camunda: its process instance was cancelled or the task removed)"
                ))),
                TaskFate::Unknown => Err(CamundaError::NotFound(message)),
            },
            Err(e) => Err(e),
        }
    }

    async fn verdict(&self, task: &TaskRecord) -> Result<Verdict, CamundaError> {
        let message = task.error_message.clone().unwrap_or_else(|| "failed".into());
        Ok(match task.status {
            TaskStatus::Succeeded => Verdict::Complete,
            // A pulled task that never ran goes back to Camunda for another worker to fetch.
            TaskStatus::Cancelled if task.source == TaskSource::Camunda && task.attempts == 0 => Verdict::Unlock,
            TaskStatus::Cancelled => Verdict::Incident {
                message: CANCELLED_MESSAGE.into(),
                details: format!("{CANCELLED_MESSAGE}: {message}"),
            },
            TaskStatus::Failed => match task.error_code.as_deref() {
                None | Some("ATTEMPTS_EXHAUSTED") => Verdict::Incident { details: message.clone(), message },
                Some(kind) => {
                    let code = self.registry.get(&task.topic).and_then(|t| t.spec.errors.code_for(kind));
                    match code {
                        None => Verdict::Incident {
                            details: format!(
                                "business error ({kind}) on topic {}; the topic maps no BPMN error code to it: {message}",
                                task.topic
                            ),
                            message,
                        },
                        Some(code) if self.caught(&task.task_id, code).await? => {
                            Verdict::BpmnError { code: code.to_owned(), message }
                        }
                        Some(code) => Verdict::Incident {
                            message: format!("{code}: {message}"),
                            details: format!(
                                "BPMN error {code} is caught by no boundary event or event subprocess at this task, \
                                 so it is raised as an incident instead of ending the path silently: {message}"
                            ),
                        },
                    }
                }
            },
            other => {
                return Err(CamundaError::Refused(format!("asked to report a task that is {}", other.as_str())));
            }
        })
    }

    /// Whether the process definition of the task catches BPMN error `code` at the task's
    /// activity. The definition's XML is fetched once and kept.
    async fn caught(&self, task_id: &str, code: &str) -> Result<bool, CamundaError> {
        let info = self.client.get(task_id).await?;
        let (Some(definition), Some(activity)) = (info.process_definition_id, info.activity_id) else {
            return Ok(false);
        };
        let cached = self.catchers.lock().ok().and_then(|c| c.get(&definition).cloned());
        let catchers = match cached {
            Some(c) => c,
            None => {
                let xml = self.client.definition_xml(&definition).await?;
                let parsed = match ErrorCatchers::parse(&xml) {
                    Ok(parsed) => Arc::new(parsed),
                    Err(error) => {
                        tracing::warn!(%error, definition, "cannot read the process's BPMN; the error becomes an incident");
                        return Ok(false);
                    }
                };
                if let Ok(mut cache) = self.catchers.lock() {
                    if cache.len() >= DEFINITIONS_CACHED {
                        cache.clear();
                    }
                    cache.insert(definition, parsed.clone());
                }
                parsed
            }
        };
        Ok(catchers.catches(&activity, code))
    }

    async fn send(&self, task: &TaskRecord, verdict: &Verdict, resend: bool) -> Result<(), CamundaError> {
        let id = &task.task_id;
        let worker = &task.worker_id;
        match verdict {
            Verdict::Complete => {
                let spec = self.registry.get(&task.topic).map(|t| &t.spec);
                let local = spec.is_some_and(|s| s.variable_scope == VariableScope::Local);
                let json = spec.map(|s| s.json_variables).unwrap_or_default();
                self.client.complete(id, worker, &task.result.clone().unwrap_or_default(), local, json).await
            }
            Verdict::BpmnError { code, message } => self.client.bpmn_error(id, worker, code, message).await,
            Verdict::Incident { message, details } => {
                // A failure leaves the task at Camunda: on a resend, its zero retries show the
                // earlier send landed.
                if resend && self.client.get(id).await?.retries == Some(0) {
                    return Ok(());
                }
                self.client.failure(id, worker, message, details, 0, Duration::ZERO).await
            }
            Verdict::Unlock => self.client.unlock(id).await,
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
            self.client.failure(&task.task_id, &task.worker_id, message, message, attempts_left, retry_timeout).await
        {
            tracing::warn!(%error, task_id = %task.task_id, trace_id = task.trace_id.as_deref(), "could not report a retryable failure to Camunda");
        }
    }
}
