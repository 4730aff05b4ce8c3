//! The last stage of a delivery: store how the attempt ended (waiting out a store outage), then
//! hand the recorded task to the reporter. Only once this returns may the consumer ack.

use std::time::Duration;

use super::{AttemptEnd, Dispatcher, Processed, StoreResult};
use crate::{
    metrics::OutcomeLabels,
    store::{Finish, Finished, StoreError, TaskRecord},
    topics::Topic,
};

/// What the dispatcher keeps of a claimed task while its handler runs: only what recording the
/// attempt's end needs (the task's id and topic travel in the handler's context).
#[derive(Debug, Clone, Copy)]
pub(super) struct Claimed {
    pub attempt: u32,
    pub max_attempts: u32,
    /// The outcome is owed to Camunda.
    pub linked: bool,
}

impl Dispatcher {
    /// Stores how the task's current attempt ended (waiting out a store outage), then reports it.
    pub(super) async fn record(
        &self,
        task_id: &str,
        topic_name: &str,
        claimed: Claimed,
        topic: &Topic,
        end: AttemptEnd,
    ) -> Processed {
        let AttemptEnd { elapsed_ms, steps, outcome, processed, next_attempt_in } = end;
        let attempt = claimed.attempt;
        let outcome_name = match processed {
            Processed::Succeeded => "succeeded",
            Processed::Retrying => "retrying",
            _ => "failed",
        };
        let finish = || {
            self.finish(Finish {
                task_id: task_id.to_owned(),
                attempt,
                elapsed_ms,
                steps: steps.clone(),
                outcome: outcome.clone(),
                read_back: self.reporter.is_some() && claimed.linked,
            })
        };
        match self.patiently(finish).await {
            Some(Ok(Finished::Written(recorded))) => {
                if let Some(recorded) = recorded {
                    self.report(*recorded, next_attempt_in, topic);
                }
                let labels = OutcomeLabels { topic: topic_name.to_owned(), outcome: outcome_name.into() };
                self.metrics.outcomes.get_or_create(&labels).inc();
                tracing::info!(attempt, outcome = outcome_name, elapsed_ms, "attempt finished");
                processed
            }
            Some(Ok(Finished::Missed)) => self.claim_vanished_or_moved_on(task_id, attempt).await,
            Some(Err(e)) => {
                tracing::error!(error = %e, "recording the outcome failed; the lease will expire and the task re-run");
                Processed::Skipped
            }
            None => Processed::Interrupted,
        }
    }

    /// The attempt's end matched nothing. Normally the lease expired and the relay moved the
    /// task on (its new message is out): this result is void and the delivery is done. But if
    /// the task still waits with fewer attempts than this one, the store lost the claim (a server
    /// that acknowledged an unjournaled write and then crashed): nobody else will publish it, so
    /// the message goes back to the queue rather than leaving the task stranded.
    async fn claim_vanished_or_moved_on(&self, task_id: &str, attempt: u32) -> Processed {
        let current = self.store.get(task_id).await;
        if let Ok(Some(now)) = &current
            && now.status.is_waiting()
            && now.attempts < attempt
            && now.publish_due_at.is_none()
        {
            tracing::error!(attempt, stored_attempts = now.attempts, "the store lost this attempt's claim; requeued");
            return Processed::Interrupted;
        }
        tracing::warn!(attempt, "attempt finished after its lease was taken back; result dropped");
        Processed::Skipped
    }

    /// Hands a recorded outcome to the reporter, off the consumer's path: the ack need not wait
    /// for Camunda, and a report lost here is sent by the relay's sweep.
    fn report(&self, task: TaskRecord, next_attempt_in: Duration, topic: &Topic) {
        let Some(reporter) = self.reporter.clone() else { return };
        if !task.camunda.linked {
            return;
        }
        let timeout = topic.spec.timeout();
        let trace = crate::trace::current();
        let send = async move {
            if task.status.is_final() {
                if let Err(error) = reporter.report(&task).await {
                    tracing::warn!(%error, task_id = %task.task_id, trace_id = task.trace_id.as_deref(), "report deferred to the relay");
                }
            } else if task.status == crate::domain::TaskStatus::Retrying {
                let left = task.max_attempts.saturating_sub(task.attempts);
                reporter.report_retry(&task, left, next_attempt_in, timeout).await;
            }
        };
        // Spawned, so the task's trace goes along by hand.
        match trace {
            Some(trace) => tokio::spawn(crate::trace::scope(trace, send)),
            None => tokio::spawn(send),
        };
    }

    async fn finish(&self, finish: Finish) -> StoreResult<Finished> {
        let stopped = || StoreError::Unavailable("finish writer stopped".into());
        self.finishes.call(finish).await.unwrap_or_else(|| Err(stopped()))
    }
}
