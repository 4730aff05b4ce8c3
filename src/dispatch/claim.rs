//! The first stage of a delivery: read the message, claim its task (adopting a task the store
//! does not know yet), and hand back only the claimed task. Nothing parsed from the message
//! outlives this stage, so none of it is held while the handler runs.

use std::{collections::HashMap, future::Future};

use std::time::Duration;

use super::{Dispatcher, Processed, StoreResult};

use crate::{
    batch::Coalescer,
    domain::Submission,
    store::{CamundaLink, InsertOutcome, NewTask, StoreError, TaskRecord, TaskSource, TaskStore, lease_for},
    topics::Topic,
};

/// Claims by task id and lease, answered with the claimed record (if the claim took).
pub(super) type ClaimWriter = Coalescer<(String, Duration), StoreResult<Option<Box<TaskRecord>>>>;

/// How often a refused store step is tried before its message goes back to the queue, and the
/// waits between tries (doubling): about a minute in all, far from a hot requeue loop.
const STEP_TRIES: u32 = 7;
const STEP_RETRY_FIRST: Duration = Duration::from_millis(500);
const STEP_RETRY_MAX: Duration = Duration::from_secs(16);

/// Most claims written in one round trip.
const CLAIM_BATCH_MAX: usize = 256;

/// Claims in batches: one lease for the batch (the longest asked; a longer lease only delays
/// the recovery of a crashed consumer), and a task asked for twice in one batch (a duplicate
/// delivery) is handed to the first asker only. Records are boxed: each waiting claim's answer
/// slot, and every future that passes the record on, then holds a pointer, not the record.
pub(super) fn claim_writer(store: std::sync::Arc<dyn TaskStore>) -> ClaimWriter {
    Coalescer::start(CLAIM_BATCH_MAX, move |batch: Vec<(String, Duration)>| {
        let store = store.clone();
        async move {
            let lease = batch.iter().map(|(_, l)| *l).max().unwrap_or_default();
            let mut ids: Vec<String> = batch.iter().map(|(id, _)| id.clone()).collect();
            ids.dedup();
            match store.claim_batch(ids, lease).await {
                Ok(claimed) => {
                    let mut by_id: HashMap<String, Box<TaskRecord>> =
                        claimed.into_iter().map(|t| (t.task_id.clone(), Box::new(t))).collect();
                    batch.iter().map(|(id, _)| Ok(by_id.remove(id))).collect()
                }
                Err(e) => batch.iter().map(|_| Err(e.clone())).collect(),
            }
        }
    })
}

impl Dispatcher {
    /// Parses a message body and claims its task; `Err` says why there is nothing to run.
    pub(super) async fn take(&self, body: &[u8]) -> Result<(Box<TaskRecord>, &Topic), Processed> {
        let submission = self.parse(body)?;
        let span = tracing::Span::current();
        span.record("task_id", submission.task_id.as_str());
        span.record("topic", submission.topic.as_str());
        let Some(topic) = self.registry.get(submission.topic.as_str()) else {
            return Err(Processed::Invalid(format!("topic {:?} is not registered", submission.topic.as_str())));
        };
        let lease = lease_for(topic.spec.timeout());
        let task_id = submission.task_id.as_str();
        match self.needed("claim", || self.claim(task_id, lease)).await? {
            Some(task) => Ok((task, topic)),
            // Boxed: adopting is rare, and inline it would size every claim's future.
            None => match Box::pin(self.adopt(&submission, topic, lease)).await? {
                Some(task) => Ok((task, topic)),
                None => {
                    // Claimed elsewhere, finished, or not yet due by the store's clock. In the
                    // last case this message is dropped, so a publish must stay owed for when
                    // the retry is due (a no-op in the other cases).
                    if let Err(error) = self.store.keep_publish_owed(task_id).await {
                        tracing::warn!(%error, "could not check the publish owed for a skipped delivery");
                        return Err(Processed::Interrupted);
                    }
                    Err(Processed::Skipped)
                }
            },
        }
    }

    /// The message as a submission. Not async, so the parsed JSON never sits in a future.
    fn parse(&self, body: &[u8]) -> Result<Submission, Processed> {
        let value: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| Processed::Invalid(format!("body is not JSON: {e}")))?;
        Submission::parse(&value, &self.limits).map_err(|errors| {
            let fields: Vec<String> = errors.iter().map(|e| format!("{} {}", e.field, e.message)).collect();
            Processed::Invalid(format!("not a valid submission: {}", fields.join("; ")))
        })
    }

    /// A message for a task the store does not know: a worker published straight to the
    /// exchange. Store it (idempotently) and claim it.
    async fn adopt(
        &self,
        submission: &Submission,
        topic: &Topic,
        lease: Duration,
    ) -> Result<Option<Box<TaskRecord>>, Processed> {
        // The message in hand is the publish; the relay only steps in if it is lost (the claim
        // below clears the debt).
        let new = NewTask {
            submission: submission.clone(),
            max_attempts: topic.spec.retry.max_attempts,
            source: TaskSource::Amqp,
            camunda: if self.reporter.is_some() { CamundaLink::pending() } else { CamundaLink::not_applicable() },
            publish_after: Some(lease_for(topic.spec.timeout())),
            trace_id: Some(crate::trace::TraceContext::root().trace_id),
        };
        match self.needed("storing a direct submission", || self.store.insert(new.clone())).await? {
            InsertOutcome::Conflict(_) => {
                return Err(Processed::Invalid("a task with this id exists with a different body".into()));
            }
            InsertOutcome::Existing(_) => return Ok(None),
            InsertOutcome::Created(_) => self.metrics.submitted(submission.topic.as_str(), "created"),
        }
        let task_id = submission.task_id.as_str();
        match self.patiently(|| self.claim(task_id, lease)).await {
            Some(Ok(task)) => Ok(task),
            None | Some(Err(_)) => Err(Processed::Interrupted),
        }
    }

    /// A store step the delivery cannot go on without: an outage is waited out; a refused write
    /// is tried again with back-off (each immediate requeue would burn one of the queue's
    /// delivery limit, and at the limit the message is dead-lettered), and only then, or if the
    /// gateway stops meanwhile, the message goes back to the queue.
    async fn needed<T, F, Fut>(&self, step: &'static str, mut op: F) -> Result<T, Processed>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = StoreResult<T>>,
    {
        let mut wait = STEP_RETRY_FIRST;
        for tried in 1..=STEP_TRIES {
            match self.patiently(&mut op).await {
                None => return Err(Processed::Interrupted),
                Some(Ok(value)) => return Ok(value),
                Some(Err(error)) if tried == STEP_TRIES => {
                    tracing::error!(%error, step, tried, "store step failed; the message goes back to the queue");
                }
                Some(Err(error)) => tracing::warn!(%error, step, tried, "store step failed; trying again"),
            }
            tokio::select! {
                _ = self.cancel.cancelled() => return Err(Processed::Interrupted),
                _ = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(STEP_RETRY_MAX);
        }
        Err(Processed::Interrupted)
    }

    async fn claim(&self, task_id: &str, lease: Duration) -> StoreResult<Option<Box<TaskRecord>>> {
        let stopped = || StoreError::Unavailable("claim writer stopped".into());
        self.claims.call((task_id.to_owned(), lease)).await.unwrap_or_else(|| Err(stopped()))
    }
}
