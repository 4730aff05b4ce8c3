//! Group commit for submissions. Concurrent `POST /tasks/submit` requests are coalesced: while
//! one batch is being written, the next requests queue up and go together in the next
//! `insert_many`. Each request is answered as soon as its own task is durable; the batch's
//! publishes then go out pipelined (confirms awaited together). Nothing here weakens "200 means
//! stored": the answer waits for the insert.
//!
//! The batch owes its publishes through the debt of the publish window it is stored in, written
//! ahead of it (see [`windows`]), so the request path makes one write a batch: the tasks. An
//! insert whose outcome is unknown keeps its window's debt, so whatever landed is published when
//! the relay passes the debt on; an idempotent resubmit of a task still waiting for its first
//! delivery makes its publish owed again (its first message may be the one that was lost).

use std::sync::Arc;

use tokio::sync::Mutex;

use crate::{
    batch::Coalescer,
    broker::Broker,
    metrics::Metrics,
    store::{InsertOutcome, NewTask, StoreError, TaskRecord, TaskStore},
};
use plan::plan;
use windows::{Ticket, Windows};

mod plan;
pub mod windows;

pub use plan::RESUBMIT_GRACE;

/// Handle for submitting; cheap to clone. The writer stops when every handle is dropped.
#[derive(Clone)]
pub struct Intake {
    writer: Coalescer<NewTask, Result<InsertOutcome, StoreError>>,
    windows: Arc<Mutex<Windows>>,
}

impl Intake {
    /// Starts the writer. `max_batch` bounds a batch (1 turns group commit off).
    pub fn start(store: Arc<dyn TaskStore>, broker: Arc<dyn Broker>, metrics: Metrics, max_batch: usize) -> Self {
        // Only the writer uses the windows, one batch at a time: the lock is never contended.
        let windows = Arc::new(Mutex::new(Windows::new(store.clone())));
        let shared = windows.clone();
        let writer = Coalescer::start(max_batch, move |tasks: Vec<NewTask>| {
            let (store, broker, metrics, windows) = (store.clone(), broker.clone(), metrics.clone(), windows.clone());
            async move {
                let ticket = windows.lock().await.enter().await;
                write_batch(store, broker, metrics, ticket, tasks).await
            }
        });
        Self { writer, windows: shared }
    }

    /// Shutting down, once no more submissions come: settles the publish windows (see
    /// [`Windows::settle_all`]).
    pub async fn settle(&self, grace: std::time::Duration) {
        self.windows.lock().await.settle_all(grace).await;
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
    ticket: Result<Ticket, StoreError>,
    mut tasks: Vec<NewTask>,
) -> Vec<Result<InsertOutcome, StoreError>> {
    let ticket = match ticket {
        Ok(ticket) => ticket,
        Err(error) => return tasks.iter().map(|_| Err(error.clone())).collect(),
    };
    for task in &mut tasks {
        task.publish_after = None;
    }
    metrics.intake_batch_size.observe(tasks.len() as f64);
    let started = std::time::Instant::now();
    let outcomes = store.insert_batch(tasks, ticket.at()).await;
    metrics.observe_intake_batch(started.elapsed());
    let plan = plan(&outcomes, ticket.at());
    if !plan.resubmitted.is_empty() {
        // Before the answer: a 200 to a resubmit promises the task will run. On failure the
        // relay's stale sweep (`crate::resend`) still finds it.
        if let Err(error) = store.owe_publish_again(&plan.resubmitted, RESUBMIT_GRACE).await {
            tracing::warn!(%error, count = plan.resubmitted.len(), "resubmitted tasks not made owed again");
        }
    }
    // The answers go out now; publishing does not hold them up.
    tokio::spawn(publish_batch(broker, metrics, plan.publish, ticket, plan.all_known));
    outcomes
}

/// Publishes a batch concurrently (the confirms overlap); the batch is paid for in its window when
/// nothing is left owing.
async fn publish_batch(
    broker: Arc<dyn Broker>,
    metrics: Metrics,
    tasks: Vec<TaskRecord>,
    ticket: Ticket,
    all_known: bool,
) {
    let (_, failed) = crate::relay::publish_all(broker.as_ref(), &metrics, &tasks).await;
    if failed == 0 && all_known {
        ticket.paid();
    }
    // Otherwise the ticket drops unpaid: the window keeps its debt and the relay passes it on.
}
