//! Group commit for submissions. Concurrent `POST /tasks/submit` requests are coalesced: while
//! one batch is being written, the next requests queue up and go together in the next
//! `insert_many`. Each request is answered as soon as its own task is durable; the batch's
//! publishes then go out pipelined (confirms awaited together). Nothing here weakens "200 means
//! stored": the answer waits for the insert.
//!
//! The batch owes its publishes through one publish debt, written before the tasks and due ten
//! seconds later; once the broker has confirmed every publish the debt is deleted. A debt still
//! there when it falls due (the gateway stopped, a publish or an insert failed) is passed on to
//! its tasks by the relay, which publishes those still queued.

use std::sync::Arc;

use bson::oid::ObjectId;
use chrono::Utc;

use crate::{
    batch::Coalescer,
    broker::Broker,
    metrics::Metrics,
    relay::publish_hold_until,
    store::{InsertOutcome, NewTask, StoreError, TaskRecord, TaskStore},
};

/// Handle for submitting; cheap to clone. The writer stops when every handle is dropped.
#[derive(Clone)]
pub struct Intake {
    writer: Coalescer<NewTask, Result<InsertOutcome, StoreError>>,
}

impl Intake {
    /// Starts the writer. `max_batch` bounds a batch (1 turns group commit off).
    pub fn start(store: Arc<dyn TaskStore>, broker: Arc<dyn Broker>, metrics: Metrics, max_batch: usize) -> Self {
        let writer = Coalescer::start(max_batch, move |tasks: Vec<NewTask>| {
            let (store, broker, metrics) = (store.clone(), broker.clone(), metrics.clone());
            async move { write_batch(store, broker, metrics, tasks).await }
        });
        Self { writer }
    }

    /// Stores one task (in whatever batch it lands) and returns its outcome.
    pub async fn submit(&self, task: NewTask) -> Result<InsertOutcome, StoreError> {
        self.writer
            .call(task)
            .await
            .unwrap_or_else(|| Err(StoreError::Unavailable("the gateway is shutting down".into())))
    }
}

async fn write_batch(
    store: Arc<dyn TaskStore>,
    broker: Arc<dyn Broker>,
    metrics: Metrics,
    mut tasks: Vec<NewTask>,
) -> Vec<Result<InsertOutcome, StoreError>> {
    let debt = ObjectId::new().to_hex();
    let ids: Vec<String> = tasks.iter().map(|t| t.submission.task_id.to_string()).collect();
    if let Err(error) = store.owe_publishes(&debt, &ids, publish_hold_until(Utc::now())).await {
        return tasks.iter().map(|_| Err(error.clone())).collect();
    }
    for task in &mut tasks {
        task.publish_due_at = None;
    }
    let outcomes = store.insert_batch(tasks).await;
    // A failed insert may still have landed: its debt stays, so the relay publishes it if so.
    let all_answered = outcomes.iter().all(Result::is_ok);
    let created: Vec<TaskRecord> = outcomes
        .iter()
        .filter_map(|o| match o {
            Ok(InsertOutcome::Created(task)) => Some((**task).clone()),
            _ => None,
        })
        .collect();
    // The answers go out now; publishing does not hold them up.
    tokio::spawn(publish_batch(store, broker, metrics, created, debt, all_answered));
    outcomes
}

/// Publishes a batch concurrently (the confirms overlap) and deletes its debt when nothing is
/// left owing.
async fn publish_batch(
    store: Arc<dyn TaskStore>,
    broker: Arc<dyn Broker>,
    metrics: Metrics,
    tasks: Vec<TaskRecord>,
    debt: String,
    all_answered: bool,
) {
    let (_, failed) = crate::relay::publish_all(broker.as_ref(), &metrics, &tasks).await;
    if failed > 0 || !all_answered {
        return; // the relay passes the debt on when it falls due
    }
    if let Err(error) = store.settle_publishes(&debt).await {
        // Harmless: the relay publishes the batch's queued tasks again and the duplicates are
        // skipped by the consumer's claim.
        tracing::warn!(%error, count = tasks.len(), "publishes confirmed but their debt not settled");
    }
}
