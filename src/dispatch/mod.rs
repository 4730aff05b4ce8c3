//! Processing one delivery: claim the task (one conditional update that also counts the attempt),
//! run the topic's handler under its timeout, record the outcome, and only then let the consumer
//! ack. A delivery that finds its task already claimed, finished or not yet due does nothing, so
//! duplicates never run a handler twice for the same attempt.

use std::{
    collections::HashSet,
    future::Future,
    panic::AssertUnwindSafe,
    sync::{Arc, Mutex},
    time::Duration,
};

mod claim;
mod progress;
mod record;

use async_trait::async_trait;
use futures::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;

use crate::{
    batch::Coalescer,
    broker::{DeliveryHandler, Disposition},
    camunda::Reporter,
    domain::Limits,
    metrics::Metrics,
    store::{AttemptOutcome, Finish, Finished, StoreError, TaskRecord, TaskStore},
    topics::{HandlerContext, HandlerError, ProcessingStep, Registry, Topic, Variables},
};
use progress::StoreProgress;
use record::Claimed;

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
    claims: claim::ClaimWriter,
    finishes: Coalescer<Finish, StoreResult<Finished>>,
}

type StoreResult<T> = Result<T, StoreError>;

/// Most attempt ends written in one round trip.
const FINISH_BATCH_MAX: usize = 256;

/// Store calls at once when shutdown gives back the attempts still running.
const RELEASE_CONCURRENCY: usize = 16;

impl Dispatcher {
    pub fn new(
        store: Arc<dyn TaskStore>,
        registry: Registry,
        metrics: Metrics,
        limits: Limits,
        cancel: CancellationToken,
    ) -> Self {
        let claims = claim::claim_writer(store.clone());
        let finish_store = store.clone();
        let finishes = Coalescer::start(FINISH_BATCH_MAX, move |batch: Vec<Finish>| {
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
    #[tracing::instrument(skip_all, fields(task_id, topic, trace_id))]
    pub async fn process(&self, body: Vec<u8>) -> Processed {
        // Claiming and recording are boxed: neither is live while the handler runs, and inline
        // they would size the future that 10 000 tasks in flight each hold for the whole call.
        // (A moved-from local still takes room in an async fn's state, hence the boxed attempt.)
        let taken = Box::pin(self.take(&body)).await.map(|(task, topic)| {
            let trace = crate::trace::TraceContext::of_task(task.trace_id.as_deref());
            if let Some(trace) = &trace {
                tracing::Span::current().record("trace_id", trace.trace_id.as_str());
            }
            (self.begin(task), topic, trace)
        });
        drop(body);
        match taken {
            // The handler's calls and the Camunda report join the task's trace.
            Ok((attempt, topic, Some(trace))) => {
                let span = tracing::info_span!("attempt", trace_id = %trace.trace_id);
                crate::trace::join(&span, &trace);
                tracing::Instrument::instrument(crate::trace::scope(trace, self.run(attempt, topic)), span).await
            }
            Ok((attempt, topic, None)) => self.run(attempt, topic).await,
            Err(processed) => processed,
        }
    }

    /// Registers a claimed attempt as running and splits the task into what its run needs.
    fn begin(&self, task: Box<TaskRecord>) -> Box<Attempt> {
        let TaskRecord { task_id, worker_id, topic, variables, attempts, max_attempts, camunda, .. } = *task;
        let claimed = Claimed { attempt: attempts, max_attempts, linked: camunda.linked };
        self.in_flight.lock().map(|mut set| set.insert((task_id.clone(), attempts))).ok();
        let progress = Arc::new(StoreProgress::new(self.store.clone(), task_id.clone(), attempts));
        let ctx = HandlerContext::new(task_id, worker_id, topic, attempts, progress.clone());
        Box::new(Attempt { ctx, variables, claimed, progress })
    }

    async fn run(&self, attempt: Box<Attempt>, topic: &Topic) -> Processed {
        let Attempt { ctx, variables, claimed, progress } = *attempt;
        let in_flight = self.metrics.in_flight.get_or_create(&Metrics::topic(&ctx.topic)).clone();
        in_flight.inc();
        let started = std::time::Instant::now();
        let result = run_handler(topic, &ctx, &variables).await;
        let elapsed = started.elapsed();
        drop(variables);
        in_flight.dec();
        self.metrics.handler_duration.get_or_create(&Metrics::topic(&ctx.topic)).observe(elapsed.as_secs_f64());
        let ended = Box::pin(async {
            let end = attempt_end(result, claimed, topic, elapsed, progress.close().await);
            self.record(&ctx.task_id, &ctx.topic, claimed, topic, end).await
        });
        let recorded = ended.await;
        self.in_flight.lock().map(|mut set| set.remove(&(ctx.task_id.clone(), claimed.attempt))).ok();
        recorded
    }

    /// Shutdown, after the grace period: attempts still running are given back (retrying, due
    /// now) so another gateway takes them at once instead of after their lease. Several at a
    /// time: with thousands in flight, one after another would outlast any stop timeout (an
    /// attempt not given back is still safe; its lease expires).
    pub async fn release_in_flight(&self) {
        let running: Vec<(String, u32)> =
            self.in_flight.lock().map(|set| set.iter().cloned().collect()).unwrap_or_default();
        if running.is_empty() {
            return;
        }
        let total = running.len();
        let outcomes: Vec<_> = futures::stream::iter(running)
            .map(|(task_id, attempt)| async move {
                let outcome = self.store.release(&task_id, attempt).await;
                (task_id, attempt, outcome)
            })
            .buffer_unordered(RELEASE_CONCURRENCY)
            .collect()
            .await;
        let (mut released, mut failed) = (0usize, 0usize);
        for (task_id, attempt, outcome) in outcomes {
            match outcome {
                Ok(true) => {
                    released += 1;
                    tracing::info!(%task_id, attempt, "released an unfinished attempt at shutdown");
                }
                Ok(false) => {}
                Err(error) => {
                    failed += 1;
                    tracing::warn!(%error, %task_id, "could not release an attempt; its lease will expire");
                }
            }
        }
        tracing::warn!(running = total, released, failed, "shutdown: gave back the attempts still running");
    }
}

/// Runs the topic's handler under its timeout. A panic is caught here and counts as a failed
/// attempt, not a dead consumer; a timeout drops the handler's future, which stops it.
async fn run_handler(topic: &Topic, ctx: &HandlerContext, variables: &Variables) -> Result<Variables, HandlerError> {
    let call = AssertUnwindSafe(topic.handler.handle(ctx, variables)).catch_unwind();
    match tokio::time::timeout(topic.spec.timeout(), call).await {
        Ok(Ok(result)) => result,
        Ok(Err(panic)) => Err(HandlerError::retryable(format!("handler panicked: {}", panic_message(&*panic)))),
        Err(_) => Err(HandlerError::retryable(format!("handler timed out after {} s", topic.spec.timeout_seconds))),
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// What a handler's result means for the task: the outcome to store and the delivery's fate.
fn attempt_end(
    result: Result<Variables, HandlerError>,
    claimed: Claimed,
    topic: &Topic,
    elapsed: Duration,
    steps: Vec<ProcessingStep>,
) -> AttemptEnd {
    let Claimed { attempt, max_attempts, .. } = claimed;
    let mut next_attempt_in = Duration::ZERO;
    let (outcome, processed) = match result {
        Ok(result) => (AttemptOutcome::Succeeded { result }, Processed::Succeeded),
        Err(HandlerError::Business { kind, message }) => {
            (AttemptOutcome::Failed { error: message, error_code: Some(kind) }, Processed::Failed)
        }
        Err(HandlerError::Retryable { message }) if attempt < max_attempts => {
            next_attempt_in = topic.spec.retry.backoff(attempt);
            (AttemptOutcome::Retry { error: message, backoff: next_attempt_in }, Processed::Retrying)
        }
        Err(HandlerError::Retryable { message }) => (
            AttemptOutcome::Failed {
                error: format!("{message} (attempt {attempt} of {max_attempts})"),
                error_code: Some("ATTEMPTS_EXHAUSTED".into()),
            },
            Processed::Exhausted,
        ),
    };
    let elapsed_ms = i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX);
    AttemptEnd { elapsed_ms, steps, outcome, processed, next_attempt_in }
}

/// A claimed attempt about to run: the handler's context and input, and what recording needs.
struct Attempt {
    ctx: HandlerContext,
    variables: Variables,
    claimed: Claimed,
    progress: Arc<StoreProgress>,
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

#[async_trait]
impl DeliveryHandler for Dispatcher {
    async fn handle(&self, body: Vec<u8>) -> Disposition {
        match self.process(body).await {
            Processed::Invalid(reason) => Disposition::DeadLetter(reason),
            // Recorded as failed (and reported) first; the message is parked for inspection.
            Processed::Exhausted => Disposition::DeadLetter("every attempt failed".into()),
            Processed::Interrupted => Disposition::Requeue,
            _ => Disposition::Ack,
        }
    }
}
