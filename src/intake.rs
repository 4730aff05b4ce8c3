//! Group commit for submissions. Concurrent `POST /tasks/submit` requests are coalesced: while
//! one batch is being written, the next requests queue up and go together in the next
//! `insert_many`. Each request is answered as soon as its own task is durable; the batch's
//! publishes then go out pipelined (confirms awaited together) and their confirmations are
//! recorded with one update. Nothing here weakens "200 means stored": the answer waits for the
//! insert.

use std::sync::Arc;

use chrono::Utc;
use tokio::sync::{mpsc, oneshot};

use crate::{
    broker::Broker,
    metrics::Metrics,
    relay::publish_hold_until,
    store::{InsertOutcome, NewTask, StoreError, TaskRecord, TaskStore},
};

struct Pending {
    task: NewTask,
    reply: oneshot::Sender<Result<InsertOutcome, StoreError>>,
}

/// Handle for submitting; cheap to clone. The writer stops when every handle is dropped.
#[derive(Clone)]
pub struct Intake {
    tx: mpsc::Sender<Pending>,
}

impl Intake {
    /// Starts the writer. `max_batch` bounds a batch (1 turns group commit off).
    pub fn start(store: Arc<dyn TaskStore>, broker: Arc<dyn Broker>, metrics: Metrics, max_batch: usize) -> Self {
        // Room for a few batches: beyond that, submitters wait (backpressure), they are not refused.
        let (tx, rx) = mpsc::channel(max_batch.max(1) * 4);
        tokio::spawn(write_loop(rx, store, broker, metrics, max_batch.max(1)));
        Self { tx }
    }

    /// Stores one task (in whatever batch it lands) and returns its outcome.
    pub async fn submit(&self, task: NewTask) -> Result<InsertOutcome, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Pending { task, reply })
            .await
            .map_err(|_| StoreError::Unavailable("the gateway is shutting down".into()))?;
        answer.await.map_err(|_| StoreError::Other("the batch writer stopped mid-batch".into()))?
    }
}

async fn write_loop(
    mut rx: mpsc::Receiver<Pending>,
    store: Arc<dyn TaskStore>,
    broker: Arc<dyn Broker>,
    metrics: Metrics,
    max_batch: usize,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        // One hold for the whole batch, so one update records all its confirmations.
        let hold = publish_hold_until(Utc::now());
        let (tasks, replies): (Vec<NewTask>, Vec<_>) = batch
            .into_iter()
            .map(|mut p| {
                p.task.publish_due_at = hold;
                (p.task, p.reply)
            })
            .unzip();
        let outcomes = store.insert_batch(tasks).await;
        let mut created = Vec::new();
        for (outcome, reply) in outcomes.into_iter().zip(replies) {
            if let Ok(InsertOutcome::Created(task)) = &outcome {
                created.push((**task).clone());
            }
            // A submitter that went away still has its task stored and published.
            let _ = reply.send(outcome);
        }
        if !created.is_empty() {
            tokio::spawn(publish_batch(store.clone(), broker.clone(), metrics.clone(), created, hold));
        }
    }
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
