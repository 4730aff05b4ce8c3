//! The relay makes the system self-healing, with MongoDB as the outbox: it publishes tasks whose
//! publish was never confirmed (a publish window's unsettled debt passes to its tasks when it
//! falls due) and retries whose time has come (each task carries its own due
//! time, so a 1 s retry never waits behind a 60 s one), and takes back expired processing leases.
//! Safe with several replicas: a publish is taken by one conditional update before it is sent.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::{
    broker::Broker,
    camunda::Reporter,
    metrics::Metrics,
    store::{StoreError, TaskRecord, TaskStore},
};

/// How long a taken publish is held before another relay may try it again.
pub const PUBLISH_HOLD: Duration = Duration::from_secs(10);

pub fn publish_hold_until(now: DateTime<Utc>) -> DateTime<Utc> {
    now + chrono::Duration::from_std(PUBLISH_HOLD).unwrap_or_default()
}

/// Publishes one task whose publish this caller holds (its `publish_due_at` is the hold), and
/// clears the debt once the broker confirms. Returns whether it was published.
pub async fn publish_held(store: &dyn TaskStore, broker: &dyn Broker, metrics: &Metrics, task: &TaskRecord) -> bool {
    publish_many(store, broker, metrics, std::slice::from_ref(task)).await.0 == 1
}

/// Publishes taken in one sweep step.
const SWEEP_BATCH: u32 = 200;

/// Publishes held tasks concurrently (the confirms overlap) and clears the debt of the confirmed
/// ones in one update: a task whose hold is still the one it was taken with (each record's
/// `publish_due_at`, written by the store on its own clock). Returns (published, failed).
pub async fn publish_many(
    store: &dyn TaskStore,
    broker: &dyn Broker,
    metrics: &Metrics,
    tasks: &[TaskRecord],
) -> (u64, u64) {
    let (confirmed, failed) = publish_all(broker, metrics, tasks).await;
    let holds = tasks.iter().filter_map(|t| t.publish_due_at.map(bson::DateTime::to_chrono));
    let held = holds.clone().min().zip(holds.max()).map(|(first, last)| first..=last);
    if !confirmed.is_empty()
        && let Some(held) = held
        && let Err(error) = store.publish_confirmed_many(&confirmed, held).await
    {
        // Harmless: the relay publishes them again and the duplicates are skipped.
        tracing::warn!(%error, count = confirmed.len(), "publishes confirmed but not recorded");
    }
    (confirmed.len() as u64, failed)
}

/// Publishes tasks concurrently (the confirms overlap); returns the ids the broker confirmed and
/// how many it did not (those keep their publish debt).
pub async fn publish_all(broker: &dyn Broker, metrics: &Metrics, tasks: &[TaskRecord]) -> (Vec<String>, u64) {
    let sends = tasks.iter().map(|task| async move {
        let body = message_body(task);
        let trace = crate::trace::TraceContext::of_task(task.trace_id.as_deref()).map(|t| t.to_string());
        (task, broker.publish(&task.topic, body.as_bytes(), task.attempts + 1, trace.as_deref()).await)
    });
    let mut confirmed = Vec::with_capacity(tasks.len());
    let mut failed = 0;
    for (task, result) in futures::future::join_all(sends).await {
        match result {
            Ok(()) => confirmed.push(task.task_id.clone()),
            Err(error) => {
                failed += 1;
                metrics.publish_failures.get_or_create(&Metrics::topic(&task.topic)).inc();
                tracing::warn!(%error, task_id = %task.task_id, trace_id = task.trace_id.as_deref(), "publish not confirmed; the relay will retry");
            }
        }
    }
    (confirmed, failed)
}

/// The message for a task: the submission JSON, as a worker publishing directly would send it.
pub fn message_body(task: &TaskRecord) -> String {
    serde_json::json!({
        "task_id": task.task_id,
        "worker_id": task.worker_id,
        "topic": task.topic,
        "variables": task.variables,
    })
    .to_string()
}

#[derive(Clone)]
pub struct Relay {
    pub store: Arc<dyn TaskStore>,
    pub broker: Arc<dyn Broker>,
    pub metrics: Metrics,
    pub interval: Duration,
    /// Report mode: owed Camunda reports are swept too.
    pub reporter: Option<Reporter>,
    /// Re-sends tasks whose messages the broker lost (`crate::resend`); `None` turns that off.
    pub resend: Option<crate::resend::Resender>,
}

/// What one sweep did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepReport {
    pub leases_expired: u64,
    /// Tasks whose publish window's debt fell due unsettled, now owing their own publish.
    pub debts_passed_on: u64,
    pub published: u64,
    pub publish_failed: u64,
    pub reports_sent: u64,
}

impl Relay {
    /// Sweeps every `interval` until cancelled.
    pub async fn run(self, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self.sweep_once().await {
                Ok(report) if report != SweepReport::default() => tracing::debug!(?report, "relay sweep"),
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "relay sweep failed"),
            }
        }
    }

    /// One pass: expired leases and unsettled publish debts first (they become due publishes),
    /// then due publishes.
    pub async fn sweep_once(&self) -> Result<SweepReport, StoreError> {
        let mut report = SweepReport {
            leases_expired: self.store.expire_leases().await?,
            debts_passed_on: self.store.pass_on_due_debts(SWEEP_BATCH).await?,
            ..Default::default()
        };
        if let Some(reporter) = &self.reporter {
            report.reports_sent = reporter.sweep().await?;
        }
        if !self.broker.is_connected() {
            return Ok(report);
        }
        if let Some(resend) = &self.resend {
            resend.sweep().await; // what it makes owed is sent by the take below
        }
        loop {
            let taken = self.store.take_due_publishes(PUBLISH_HOLD, SWEEP_BATCH).await?;
            let batch = taken.len();
            let (published, failed) =
                publish_many(self.store.as_ref(), self.broker.as_ref(), &self.metrics, &taken).await;
            report.published += published;
            report.publish_failed += failed;
            if failed > 0 {
                return Ok(report); // the broker is struggling; try again next tick
            }
            if batch < SWEEP_BATCH as usize {
                return Ok(report);
            }
        }
    }
}
