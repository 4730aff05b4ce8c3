//! Group commit for submissions. Concurrent `POST /tasks/submit` requests are coalesced: while
//! one batch is being written, the next requests queue up and go together in the next
//! `insert_many`. Each request is answered as soon as its own task is durable; the batch's
//! publishes then go out pipelined (confirms awaited together). Nothing here weakens "200 means
//! stored": the answer waits for the insert.
//!
//! A task is inserted owing its publish from a hold time ten seconds ahead, after which the relay
//! would publish it (again). Confirmed publishes are written down late, shortly before their
//! hold runs out, many batches in one update: by then the consumer has usually claimed the task,
//! and the claim already cleared the debt, so in a flowing system the record costs no write.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;

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

/// Confirmed publishes: task ids and the hold their publish was owed from.
type Confirmed = (Vec<String>, DateTime<Utc>);

impl Intake {
    /// Starts the writer. `max_batch` bounds a batch (1 turns group commit off).
    pub fn start(store: Arc<dyn TaskStore>, broker: Arc<dyn Broker>, metrics: Metrics, max_batch: usize) -> Self {
        let (ledger, confirmed) = mpsc::unbounded_channel();
        tokio::spawn(record_confirms(store.clone(), confirmed));
        let writer = Coalescer::start(max_batch, move |tasks: Vec<NewTask>| {
            let (store, broker, metrics, ledger) = (store.clone(), broker.clone(), metrics.clone(), ledger.clone());
            async move { write_batch(store, broker, metrics, ledger, tasks).await }
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
    ledger: mpsc::UnboundedSender<Confirmed>,
    mut tasks: Vec<NewTask>,
) -> Vec<Result<InsertOutcome, StoreError>> {
    // One hold for the whole batch.
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
        tokio::spawn(publish_batch(broker, metrics, ledger, created, hold));
    }
    outcomes
}

/// Publishes a batch concurrently (the confirms overlap) and hands the confirmed ones to the ledger.
async fn publish_batch(
    broker: Arc<dyn Broker>,
    metrics: Metrics,
    ledger: mpsc::UnboundedSender<Confirmed>,
    tasks: Vec<TaskRecord>,
    hold: DateTime<Utc>,
) {
    let (confirmed, _) = crate::relay::publish_all(broker.as_ref(), &metrics, &tasks).await;
    if !confirmed.is_empty() {
        // Only fails once the recorder is gone (shutdown): the relay then publishes them again,
        // and the duplicates are skipped.
        let _ = ledger.send((confirmed, hold));
    }
}

/// How long before its hold runs out a confirmed publish is written down: room for a slow
/// store, so the relay does not publish it a second time.
const RECORD_MARGIN: Duration = Duration::from_secs(4);
/// How often the ledger looks for confirms to write down.
const RECORD_TICK: Duration = Duration::from_millis(500);

/// Writes confirmed publishes down shortly before their holds run out, all that are due in one
/// update; everything left when the intake stops.
async fn record_confirms(store: Arc<dyn TaskStore>, mut confirmed: mpsc::UnboundedReceiver<Confirmed>) {
    let margin = chrono::Duration::from_std(RECORD_MARGIN).unwrap_or_default();
    let mut pending: std::collections::VecDeque<Confirmed> = std::collections::VecDeque::new();
    let mut tick = tokio::time::interval(RECORD_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut open = true;
    while open || !pending.is_empty() {
        tokio::select! {
            batch = confirmed.recv(), if open => match batch {
                Some(batch) => {
                    pending.push_back(batch);
                    continue;
                }
                None => open = false,
            },
            _ = tick.tick() => {}
        }
        // Batches arrive in about the order of their holds (publishes can finish a little out
        // of order, which only delays a record by a tick).
        let due_before = Utc::now() + margin;
        let mut ids = Vec::new();
        let mut held: Option<(DateTime<Utc>, DateTime<Utc>)> = None;
        while let Some((_, hold)) = pending.front()
            && (!open || *hold <= due_before)
        {
            let (batch, hold) = pending.pop_front().expect("the front was just seen");
            held = Some(held.map_or((hold, hold), |(lo, hi)| (lo.min(hold), hi.max(hold))));
            ids.extend(batch);
        }
        let Some((first, last)) = held else { continue };
        if let Err(error) = store.publish_confirmed_many(&ids, first..=last).await {
            // Harmless: the relay publishes them again and the duplicates are skipped.
            tracing::warn!(%error, count = ids.len(), "publishes confirmed but not recorded");
        }
    }
}
