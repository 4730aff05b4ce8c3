//! Processing one delivery: claim the task (one conditional update that also counts the attempt),
//! run the topic's handler under its timeout, record the outcome, and only then let the consumer
//! ack. A delivery that finds its task already claimed, finished or not yet due does nothing, so
//! duplicates never run a handler twice for the same attempt.

use std::{
    collections::HashSet,
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

mod progress;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::{
    batch::Coalescer,
    broker::{DeliveryHandler, Disposition},
    camunda::Reporter,
    domain::{Limits, Submission},
    metrics::{Metrics, OutcomeLabels},
    store::{
        AttemptOutcome, CamundaLink, Finish, Finished, InsertOutcome, NewTask, StoreError, TaskRecord, TaskSource,
        TaskStore, lease_for,
    },
    topics::{HandlerContext, HandlerError, ProcessingStep, Registry, Topic},
};
use progress::StoreProgress;

/// What processing one delivery came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Processed {
    Succeeded,
    /// Failed retryably; scheduled again.
    Retrying,
    /// Failed for good: a business error.
    Failed,
    /// Failed for good: every attempt failed (a poison message; it is dead-lettered).
    Exhausted,
    /// Nothing to do: the task was claimed, finished, cancelled or not yet due.
    Skipped,
    /// The message is unusable (not a submission, unknown topic, conflicting body).
    Invalid(String),
    /// Shutting down while the store was unreachable: hand the message back.
    Interrupted,
}

#[derive(Clone)]
pub struct Dispatcher {
    store: Arc<dyn TaskStore>,
    registry: Registry,
    metrics: Metrics,
    limits: Limits,
    cancel: CancellationToken,
    /// Report mode: outcomes go to Camunda.
    reporter: Option<Reporter>,
    /// Attempts running now, so shutdown can give back those that cannot finish in time.
    in_flight: Arc<Mutex<HashSet<(String, u32)>>>,
    /// Group commit of claims and of attempt ends across concurrent deliveries.
    claims: Coalescer<(String, DateTime<Utc>), StoreResult<Option<TaskRecord>>>,
    finishes: Coalescer<Finish, StoreResult<Finished>>,
}

type StoreResult<T> = Result<T, StoreError>;

/// Most claims (or attempt ends) written in one round trip.
const CONSUMER_BATCH_MAX: usize = 256;

/// Claims in batches: one lease for the batch (the longest asked; a longer lease only delays
/// the recovery of a crashed consumer), and a task asked for twice in one batch (a duplicate
/// delivery) is handed to the first asker only.
fn claim_writer(store: Arc<dyn TaskStore>) -> Coalescer<(String, DateTime<Utc>), StoreResult<Option<TaskRecord>>> {
    Coalescer::start(CONSUMER_BATCH_MAX, move |batch: Vec<(String, DateTime<Utc>)>| {
        let store = store.clone();
        async move {
            let lease = batch.iter().map(|(_, l)| *l).max().unwrap_or_else(Utc::now);
            let mut ids: Vec<String> = batch.iter().map(|(id, _)| id.clone()).collect();
            ids.dedup();
            match store.claim_batch(ids, lease).await {
                Ok(claimed) => {
                    let mut by_id: std::collections::HashMap<String, TaskRecord> =
                        claimed.into_iter().map(|t| (t.task_id.clone(), t)).collect();
                    batch.iter().map(|(id, _)| Ok(by_id.remove(id))).collect()
                }
                Err(e) => batch.iter().map(|_| Err(e.clone())).collect(),
            }
        }
    })
}

impl Dispatcher {
    pub fn new(
        store: Arc<dyn TaskStore>,
        registry: Registry,
        metrics: Metrics,
        limits: Limits,
        cancel: CancellationToken,
    ) -> Self {
        let claims = claim_writer(store.clone());
        let finish_store = store.clone();
        let finishes = Coalescer::start(CONSUMER_BATCH_MAX, move |batch: Vec<Finish>| {
            let store = finish_store.clone();
            async move { store.finish_batch(batch).await }
        });
        Self { store, registry, metrics, limits, cancel, reporter: None, in_flight: Arc::default(), claims, finishes }
    }

    /// Report mode: each final outcome (and each retryable failure) is reported to Camunda.
    pub fn with_reporter(mut self, reporter: Reporter) -> Self {
        self.reporter = Some(reporter);
        self
    }

    /// Retries a store call while the store is unreachable, until shutdown. Processing pauses
    /// (the message stays unacked) instead of failing the task for an outage.
    async fn patiently<T, F, Fut>(&self, mut op: F) -> Option<Result<T, StoreError>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let mut wait = Duration::from_millis(100);
        loop {
            match op().await {
                Err(StoreError::Unavailable(reason)) => {
                    tracing::warn!(%reason, "store unavailable; processing paused");
                    tokio::select! {
                        _ = self.cancel.cancelled() => return None,
                        _ = tokio::time::sleep(wait) => {}
                    }
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
                other => return Some(other),
            }
        }
    }

    /// Handles one message body, start to finish.
    #[tracing::instrument(skip_all, fields(task_id, topic))]
    pub async fn process(&self, body: &[u8]) -> Processed {
        let value: serde_json::Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return Processed::Invalid(format!("body is not JSON: {e}")),
        };
        let submission = match Submission::parse(&value, &self.limits) {
            Ok(s) => s,
            Err(errors) => {
                let fields: Vec<String> = errors.iter().map(|e| format!("{} {}", e.field, e.message)).collect();
                return Processed::Invalid(format!("not a valid submission: {}", fields.join("; ")));
            }
        };
        let span = tracing::Span::current();
        span.record("task_id", submission.task_id.as_str());
        span.record("topic", submission.topic.as_str());
        let Some(topic) = self.registry.get(submission.topic.as_str()).cloned() else {
            return Processed::Invalid(format!("topic {:?} is not registered", submission.topic.as_str()));
        };
        let lease = Utc::now() + lease_for(topic.spec.timeout());
        let task_id = submission.task_id.as_str();
        let claimed = match self.patiently(|| self.claim(task_id, lease)).await {
            None => return Processed::Interrupted,
            Some(Err(e)) => {
                tracing::error!(error = %e, "claim failed");
                return Processed::Interrupted;
            }
            Some(Ok(c)) => c,
        };
        let task = match claimed {
            Some(task) => task,
            None => match self.adopt(&submission, &topic, lease).await {
                Ok(Some(task)) => task,
                Ok(None) => return Processed::Skipped,
                Err(p) => return p,
            },
        };
        self.run(task, &topic).await
    }

    /// A message for a task the store does not know: a worker published straight to the
    /// exchange. Store it (idempotently) and claim it.
    async fn adopt(
        &self,
        submission: &Submission,
        topic: &Topic,
        lease: chrono::DateTime<Utc>,
    ) -> Result<Option<TaskRecord>, Processed> {
        // The message in hand is the publish; the relay only steps in if it is lost.
        let publish_due = Utc::now() + lease_for(topic.spec.timeout());
        let new = NewTask {
            submission: submission.clone(),
            max_attempts: topic.spec.retry.max_attempts,
            source: TaskSource::Amqp,
            camunda: if self.reporter.is_some() { CamundaLink::pending() } else { CamundaLink::not_applicable() },
            publish_due_at: Some(publish_due),
        };
        let inserted = match self.patiently(|| self.store.insert(new.clone())).await {
            None => return Err(Processed::Interrupted),
            Some(Err(e)) => {
                tracing::error!(error = %e, "storing a direct submission failed");
                return Err(Processed::Interrupted);
            }
            Some(Ok(i)) => i,
        };
        match inserted {
            InsertOutcome::Conflict(_) => {
                return Err(Processed::Invalid("a task with this id exists with a different body".into()));
            }
            InsertOutcome::Existing(_) => return Ok(None),
            InsertOutcome::Created(_) => {
                self.metrics.submits.get_or_create(&submit_labels(submission.topic.as_str(), "created")).inc();
            }
        }
        let task_id = submission.task_id.as_str();
        match self.patiently(|| self.claim(task_id, lease)).await {
            Some(Ok(task)) => {
                // The message in hand serves as the publish.
                let _ = self.store.publish_confirmed(task_id, publish_due).await;
                Ok(task)
            }
            None | Some(Err(_)) => Err(Processed::Interrupted),
        }
    }

    async fn run(&self, task: TaskRecord, topic: &Topic) -> Processed {
        let attempt = task.attempts;
        let key = (task.task_id.clone(), attempt);
        self.in_flight.lock().map(|mut set| set.insert(key.clone())).ok();
        let progress = Arc::new(StoreProgress::new(self.store.clone(), task.task_id.clone(), attempt));
        let ctx = HandlerContext::new(
            task.task_id.clone(),
            task.worker_id.clone(),
            task.topic.clone(),
            attempt,
            progress.clone(),
        );
        let label = Metrics::topic(&task.topic);
        let in_flight = self.metrics.in_flight.get_or_create(&label).clone();
        in_flight.inc();
        let started = std::time::Instant::now();
        let handler = topic.handler.clone();
        let variables = task.variables.clone();
        // Run in its own task so a panicking handler is a failed attempt, not a dead consumer.
        let run = tokio::spawn(async move { handler.handle(&ctx, &variables).await });
        let abort = run.abort_handle();
        let result = match tokio::time::timeout(topic.spec.timeout(), run).await {
            Ok(Ok(r)) => r,
            Ok(Err(join)) => Err(HandlerError::retryable(format!("handler panicked: {join}"))),
            Err(_) => {
                abort.abort();
                Err(HandlerError::retryable(format!("handler timed out after {} s", topic.spec.timeout_seconds)))
            }
        };
        let elapsed = started.elapsed();
        in_flight.dec();
        self.metrics.handler_duration.get_or_create(&label).observe(elapsed.as_secs_f64());

        let mut next_attempt_in = Duration::ZERO;
        let (outcome, processed) = match result {
            Ok(result) => (AttemptOutcome::Succeeded { result }, Processed::Succeeded),
            Err(HandlerError::Business { code, message }) => {
                (AttemptOutcome::Failed { error: message, error_code: Some(code) }, Processed::Failed)
            }
            Err(HandlerError::Retryable { message }) if attempt < task.max_attempts => {
                next_attempt_in = topic.spec.retry.backoff(attempt);
                let next_attempt_at = Utc::now() + chrono::Duration::from_std(next_attempt_in).unwrap_or_default();
                (AttemptOutcome::Retry { error: message, next_attempt_at }, Processed::Retrying)
            }
            Err(HandlerError::Retryable { message }) => (
                AttemptOutcome::Failed {
                    error: format!("{message} (attempt {attempt} of {})", task.max_attempts),
                    error_code: Some("ATTEMPTS_EXHAUSTED".into()),
                },
                Processed::Exhausted,
            ),
        };
        let elapsed_ms = i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX);
        let steps = progress.close().await;
        let end = AttemptEnd { elapsed_ms, steps, outcome, processed, next_attempt_in };
        let recorded = self.record(&task, topic, end).await;
        self.in_flight.lock().map(|mut set| set.remove(&key)).ok();
        recorded
    }

    /// Stores how the task's current attempt ended (waiting out a store outage), then reports it.
    async fn record(&self, task: &TaskRecord, topic: &Topic, end: AttemptEnd) -> Processed {
        let AttemptEnd { elapsed_ms, steps, outcome, processed, next_attempt_in } = end;
        let attempt = task.attempts;
        let outcome_name = match processed {
            Processed::Succeeded => "succeeded",
            Processed::Retrying => "retrying",
            _ => "failed",
        };
        match self
            .patiently(|| {
                self.finish(Finish {
                    task_id: task.task_id.clone(),
                    attempt,
                    elapsed_ms,
                    steps: steps.clone(),
                    outcome: outcome.clone(),
                    read_back: self.reporter.is_some() && task.camunda.linked,
                })
            })
            .await
        {
            Some(Ok(Finished::Written(recorded))) => {
                if let Some(recorded) = recorded {
                    self.report(*recorded, next_attempt_in, topic);
                }
                self.metrics
                    .outcomes
                    .get_or_create(&OutcomeLabels { topic: task.topic.clone(), outcome: outcome_name.into() })
                    .inc();
                tracing::info!(attempt, outcome = outcome_name, elapsed_ms, "attempt finished");
                processed
            }
            Some(Ok(Finished::Missed)) => self.claim_vanished_or_moved_on(task, attempt).await,
            Some(Err(e)) => {
                tracing::error!(error = %e, "recording the outcome failed; the lease will expire and the task re-run");
                Processed::Skipped
            }
            None => Processed::Interrupted,
        }
    }
}

impl Dispatcher {
    /// The attempt's end matched nothing. Normally the lease expired and the relay moved the
    /// task on (its new message is out): this result is void and the delivery is done. But if
    /// the task still waits with fewer attempts than this one, the store lost the claim (a server
    /// that acknowledged an unjournaled write and then crashed): nobody else will publish it, so
    /// the message goes back to the queue rather than leaving the task stranded.
    async fn claim_vanished_or_moved_on(&self, task: &TaskRecord, attempt: u32) -> Processed {
        let current = self.store.get(&task.task_id).await;
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
        tokio::spawn(async move {
            if task.status.is_final() {
                if let Err(error) = reporter.report(&task).await {
                    tracing::warn!(%error, task_id = %task.task_id, "report deferred to the relay");
                }
            } else if task.status == crate::domain::TaskStatus::Retrying {
                let left = task.max_attempts.saturating_sub(task.attempts);
                reporter.report_retry(&task, left, next_attempt_in, timeout).await;
            }
        });
    }
}

impl Dispatcher {
    async fn claim(&self, task_id: &str, lease: DateTime<Utc>) -> StoreResult<Option<TaskRecord>> {
        let stopped = || StoreError::Unavailable("claim writer stopped".into());
        self.claims.call((task_id.to_owned(), lease)).await.unwrap_or_else(|| Err(stopped()))
    }

    async fn finish(&self, finish: Finish) -> StoreResult<Finished> {
        let stopped = || StoreError::Unavailable("finish writer stopped".into());
        self.finishes.call(finish).await.unwrap_or_else(|| Err(stopped()))
    }

    /// Shutdown, after the grace period: attempts still running are given back (retrying, due
    /// now) so another gateway takes them at once instead of after their lease.
    pub async fn release_in_flight(&self) {
        let running: Vec<(String, u32)> =
            self.in_flight.lock().map(|set| set.iter().cloned().collect()).unwrap_or_default();
        for (task_id, attempt) in running {
            match self.store.release(&task_id, attempt).await {
                Ok(true) => tracing::warn!(%task_id, attempt, "released an unfinished attempt at shutdown"),
                Ok(false) => {}
                Err(error) => tracing::warn!(%error, %task_id, "could not release an attempt; its lease will expire"),
            }
        }
    }
}

/// How one attempt ended, as the dispatcher records it.
struct AttemptEnd {
    elapsed_ms: i64,
    /// Processing steps not yet written.
    steps: Vec<ProcessingStep>,
    outcome: AttemptOutcome,
    processed: Processed,
    /// For a retry: the backoff before the next attempt.
    next_attempt_in: Duration,
}

fn submit_labels(topic: &str, result: &str) -> crate::metrics::SubmitLabels {
    crate::metrics::SubmitLabels { topic: topic.to_owned(), result: result.to_owned() }
}

#[async_trait]
impl DeliveryHandler for Dispatcher {
    async fn handle(&self, body: &[u8]) -> Disposition {
        match self.process(body).await {
            Processed::Invalid(reason) => Disposition::DeadLetter(reason),
            // Recorded as failed (and reported) first; the message is parked for inspection.
            Processed::Exhausted => Disposition::DeadLetter("every attempt failed".into()),
            Processed::Interrupted => Disposition::Requeue,
            _ => Disposition::Ack,
        }
    }
}
