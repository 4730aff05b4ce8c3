//! Group commit for submissions. Concurrent `POST /tasks/submit` requests are coalesced: while
//! one batch is being written, the next requests queue up and go together in the next
//! `insert_many`. Each request is answered as soon as its own task is durable; the batch's
//! publishes then go out pipelined (confirms awaited together) and their confirmations are
//! recorded with one update. Nothing here weakens "200 means stored": the answer waits for the
//! insert.

use std::sync::Arc;

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
    // One hold for the whole batch, so one update records all its confirmations.
    let hold = publish_hold_until(Utc::now());
    for task in &mut tasks {
        task.publish_due_at = hold;
    }
    let outcomes = store.insert_batch(tasks).await;
    let created: Vec<TaskRecord> = outcomes
        .iter()
        .filter_map(|o| match o {
            Ok(InsertOutcome::Created(task)) => Some((**task).clone()),
            _ => None,
        })
        .collect();
    if !created.is_empty() {
        // The answers go out now; publishing does not hold them up.
        tokio::spawn(publish_batch(store, broker, metrics, created, hold));
    }
    outcomes
}

/// Publishes a batch concurrently (the confirms overlap) and records the confirmed ones at once.
async fn publish_batch(
    store: Arc<dyn TaskStore>,
    broker: Arc<dyn Broker>,
    metrics: Metrics,
    tasks: Vec<TaskRecord>,
    hold: chrono::DateTime<Utc>,
) {
    let sends = tasks.iter().map(|task| {
        let broker = broker.clone();
        async move {
            let body = crate::relay::message_body(task);
            (task, broker.publish(&task.topic, body.as_bytes(), task.attempts + 1).await)
        }
    });
    let mut confirmed = Vec::with_capacity(tasks.len());
    for (task, result) in futures::future::join_all(sends).await {
        match result {
            Ok(()) => confirmed.push(task.task_id.clone()),
            Err(error) => {
                metrics.publish_failures.get_or_create(&Metrics::topic(&task.topic)).inc();
                tracing::warn!(%error, task_id = %task.task_id, "publish not confirmed; the relay will retry");
            }
        }
    }
    if !confirmed.is_empty()
        && let Err(error) = store.publish_confirmed_many(&confirmed, hold).await
    {
        // Harmless: the relay publishes them again and the duplicates are skipped.
        tracing::warn!(%error, count = confirmed.len(), "publishes confirmed but not recorded");
    }
}
