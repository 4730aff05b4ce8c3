//! Pull mode: for topics whose file says `source = "camunda"`, the gateway fetches and locks
//! tasks itself (long polling, batched), stores each as a submission (idempotent on the external
//! task id), keeps the locks extended well before they run out, and on shutdown stops fetching
//! and hands back (unlocks) what it locked but never started.
//!
//! A lock is kept while the task runs and while its report is owed (pending), so no other worker
//! takes a task whose outcome is on its way. Once a report is given up (`report_failed`: Camunda
//! refused it, or it outlived `CAMUNDA_REPORT_MAX_AGE_HOURS`), the lock is no longer extended and
//! lapses; it is not unlocked, because an unlock clears the lock's worker id and Camunda then
//! refuses a later re-send by hand (`POST /tasks/{id}/report`) from this worker. When Camunda
//! offers such a task again and this gateway fetches it, its report is owed again under the fresh
//! lock (audited as `camunda (offered again)`) instead of the task sitting locked and ignored;
//! the handler does not run again.

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use super::client::CamundaClient;
use crate::{
    broker::Broker,
    domain::{Limits, Submission},
    metrics::Metrics,
    relay::{PUBLISH_HOLD, publish_held},
    store::{CamundaLink, InsertOutcome, NewTask, ReportOutcome, ReportState, TaskSource, TaskStore, TransitionError},
    topics::{Registry, Source},
};

/// How long one fetchAndLock waits for tasks before answering empty.
const LONG_POLL: Duration = Duration::from_secs(20);

#[derive(Clone)]
pub struct Poller {
    pub client: CamundaClient,
    pub store: Arc<dyn TaskStore>,
    pub broker: Arc<dyn Broker>,
    pub metrics: Metrics,
    pub registry: Registry,
    pub limits: Limits,
    pub worker_id: String,
    /// This process among the replicas (every replica pulls as `worker_id`): what it writes on
    /// the tasks it locks, so its shutdown unlocks those alone.
    pub replica: String,
}

impl Poller {
    fn pulled_topics(&self) -> Vec<(String, Duration)> {
        self.registry
            .iter()
            .filter(|t| t.spec.source == Source::Camunda)
            .map(|t| (t.spec.name.clone(), t.spec.lock_duration()))
            .collect()
    }

    /// Fetch loop and lock keeper, until `cancel`; then unlocks what never started.
    pub async fn run(self, cancel: CancellationToken) {
        let topics = self.pulled_topics();
        if topics.is_empty() {
            return;
        }
        // Lock at most what the consumers can work through soon: twice their total prefetch.
        let capacity: u64 = self
            .registry
            .iter()
            .filter(|t| t.spec.source == Source::Camunda)
            .map(|t| u64::from(t.spec.concurrency) * 2)
            .sum();
        let keeper = tokio::spawn(self.clone().keep_locks(topics.clone(), cancel.clone()));
        let mut backoff = Duration::from_millis(500);
        while !cancel.is_cancelled() {
            let room = match self.store.count_unfinished(TaskSource::Camunda).await {
                Ok(n) => capacity.saturating_sub(n),
                Err(error) => {
                    tracing::warn!(%error, "pull mode: store unavailable");
                    0
                }
            };
            if room == 0 {
                tokio::select! { _ = cancel.cancelled() => break, _ = tokio::time::sleep(Duration::from_millis(200)) => {} }
                continue;
            }
            let max_tasks = room.min(100) as u32;
            let fetched = tokio::select! {
                _ = cancel.cancelled() => break,
                r = self.client.fetch_and_lock(&self.worker_id, max_tasks, LONG_POLL, &topics) => r,
            };
            match fetched {
                Ok(tasks) => {
                    backoff = Duration::from_millis(500);
                    // An empty answer after a long poll just means "no tasks": ask again at once.
                    futures::future::join_all(tasks.into_iter().map(|task| self.accept(task, &topics))).await;
                }
                Err(error) => {
                    tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "pull mode: Camunda unreachable");
                    tokio::select! { _ = cancel.cancelled() => break, _ = tokio::time::sleep(backoff) => {} }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
        let _ = keeper.await;
        self.unlock_unstarted().await;
    }

    /// Stores one locked task and publishes it (or revives it if an earlier shutdown handed it back).
    async fn accept(&self, task: super::LockedTask, topics: &[(String, Duration)]) {
        let lock = topics.iter().find(|(n, _)| *n == task.topic).map(|(_, d)| *d).unwrap_or(Duration::from_secs(60));
        let body = serde_json::json!({"task_id": task.id, "worker_id": self.worker_id, "topic": task.topic, "variables": task.variables});
        let submission = match Submission::parse(&body, &self.limits) {
            Ok(s) => s,
            Err(errors) => {
                let reason: Vec<String> = errors.iter().map(|e| format!("{} {}", e.field, e.message)).collect();
                tracing::warn!(task_id = %task.id, reason = %reason.join("; "), "pulled task is not a valid submission; reporting failure");
                let reason = reason.join("; ");
                let _ = self.client.failure(&task.id, &self.worker_id, &reason, &reason, 0, Duration::ZERO).await;
                return;
            }
        };
        let Some(topic) = self.registry.get(submission.topic.as_str()) else { return };
        let mut link = CamundaLink::pending();
        link.lock_expires_at =
            Some(bson::DateTime::from_chrono(self.store.now() + chrono::Duration::from_std(lock).unwrap_or_default()));
        link.process_instance_id = task.process_instance_id.clone();
        link.pulled_by = Some(self.replica.clone());
        let new = NewTask {
            submission,
            max_attempts: topic.spec.retry.max_attempts,
            source: TaskSource::Camunda,
            camunda: link,
            publish_after: Some(PUBLISH_HOLD),
            // Nobody sent this task with a trace: it begins its own.
            trace_id: Some(crate::trace::TraceContext::root().trace_id),
        };
        let published = match self.store.insert(new).await {
            Ok(InsertOutcome::Created(record)) => Some(record),
            Ok(InsertOutcome::Existing(record)) | Ok(InsertOutcome::Conflict(record)) => {
                let _ = self
                    .store
                    .set_lock_expiry(&task.id, self.store.now() + chrono::Duration::from_std(lock).unwrap_or_default())
                    .await;
                if record.status.is_final() && record.camunda.report_state == ReportState::ReportFailed {
                    // Given up earlier; now this gateway holds the lock again, so the outcome
                    // it already has can land.
                    match self.store.resend_report(&task.id, "camunda (offered again)").await {
                        Ok(_) => {
                            tracing::info!(task_id = %task.id, "task offered again: its failed report is owed again")
                        }
                        Err(error) => tracing::warn!(%error, task_id = %task.id, "could not owe a failed report again"),
                    }
                    None
                } else if record.status == crate::domain::TaskStatus::Cancelled {
                    match self.store.manual_retry(&task.id, PUBLISH_HOLD, "camunda (offered again)", false).await {
                        Ok(revived) => Some(Box::new(revived)),
                        Err(TransitionError::WrongState(_)) | Err(TransitionError::NotFound) => None,
                        Err(TransitionError::Store(error)) => {
                            tracing::warn!(%error, task_id = %task.id, "could not revive a pulled task");
                            None
                        }
                    }
                } else {
                    None
                }
            }
            Err(error) => {
                // Not stored: hand it back so it is not stuck behind our lock.
                tracing::warn!(%error, task_id = %task.id, "could not store a pulled task; unlocking it");
                let _ = self.client.unlock(&task.id).await;
                None
            }
        };
        if let Some(record) = published {
            publish_held(self.store.as_ref(), self.broker.as_ref(), &self.metrics, &record).await;
        }
    }

    /// Extends the lock of every pulled task whose report is pending (running, or final with
    /// its report owed) when half its lock has run out. It looks
    /// every eighth of the shortest lock, so a lock is seen with at least three eighths left: room
    /// for a slow store or a slow Camunda before it lapses.
    async fn keep_locks(self, topics: Vec<(String, Duration)>, cancel: CancellationToken) {
        let shortest = topics.iter().map(|(_, d)| *d).min().unwrap_or(Duration::from_secs(60));
        let tick = (shortest / 8).max(Duration::from_millis(250));
        loop {
            tokio::select! { _ = cancel.cancelled() => return, _ = tokio::time::sleep(tick) => {} }
            // Lock times are written and compared on the store's clock, whichever replica looks.
            let horizon = self.store.now() + chrono::Duration::from_std(shortest / 2).unwrap_or_default();
            let expiring = match self.store.locks_expiring(horizon, 200).await {
                Ok(t) => t,
                Err(error) => {
                    tracing::warn!(%error, "lock keeper: store unavailable");
                    continue;
                }
            };
            for task in expiring {
                let lock = topics.iter().find(|(n, _)| *n == task.topic).map(|(_, d)| *d).unwrap_or(shortest);
                // Camunda starts the new lock when it takes the request, so it runs out no sooner
                // than this; writing down a later time could let it lapse unseen.
                let asked = self.store.now();
                match self.client.extend_lock(&task.task_id, &task.worker_id, lock).await {
                    Ok(()) => {
                        let until = asked + chrono::Duration::from_std(lock).unwrap_or_default();
                        let _ = self.store.set_lock_expiry(&task.task_id, until).await;
                    }
                    Err(error) => {
                        tracing::warn!(%error, task_id = %task.task_id, trace_id = task.trace_id.as_deref(), "could not extend a lock")
                    }
                }
            }
        }
    }

    /// Shutdown: tasks locked but never started are cancelled here and unlocked at Camunda, so
    /// another worker (or this gateway after a restart) can take them at once. The cancel owes
    /// Camunda that unlock; sent here and recorded, or else left for the reporter to send.
    async fn unlock_unstarted(&self) {
        let Ok(tasks) = self.store.unstarted(&self.replica, 1000).await else { return };
        let mut handed_back = 0;
        for task in tasks {
            if self.store.cancel(&task.task_id, "gateway (shutdown)").await.is_ok() {
                match self.client.unlock(&task.task_id).await {
                    Ok(()) => {
                        handed_back += 1;
                        let reported = ReportOutcome::Reported { how: "unlock".into() };
                        if let Err(error) = self.store.record_report(&task.task_id, reported).await {
                            tracing::warn!(%error, task_id = %task.task_id, trace_id = task.trace_id.as_deref(), "unlocked, but not recorded as reported");
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, task_id = %task.task_id, trace_id = task.trace_id.as_deref(), "could not unlock at shutdown")
                    }
                }
            }
        }
        if handed_back > 0 {
            tracing::info!(handed_back, "pull mode: unlocked tasks that never started");
        }
    }
}
