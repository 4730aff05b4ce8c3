//! A handler's progress on its way to the task: steps are buffered and written while the attempt
//! still holds the task, or ride along with the attempt's outcome.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;

use crate::{
    store::TaskStore,
    topics::{ProcessingStep, ProgressSink},
};

/// How long a step may wait in memory before it is written: a fast handler's steps ride along
/// with its outcome (one write instead of one per step); a slow handler's show up within this.
const PROGRESS_FLUSH: Duration = Duration::from_millis(250);

/// Collects a handler's progress and writes it to the task while its attempt holds it.
pub(super) struct StoreProgress {
    inner: Arc<ProgressInner>,
}

struct ProgressInner {
    store: Arc<dyn TaskStore>,
    task_id: String,
    attempt: u32,
    buffer: tokio::sync::Mutex<ProgressBuffer>,
}

#[derive(Default)]
struct ProgressBuffer {
    substatus: Option<String>,
    steps: Vec<ProcessingStep>,
    flush_scheduled: bool,
    /// The attempt finished: its steps went with the outcome.
    closed: bool,
}

impl StoreProgress {
    pub(super) fn new(store: Arc<dyn TaskStore>, task_id: String, attempt: u32) -> Self {
        let buffer = tokio::sync::Mutex::new(ProgressBuffer::default());
        Self { inner: Arc::new(ProgressInner { store, task_id, attempt, buffer }) }
    }

    /// Takes the steps not yet written, for the outcome's own update, and stops further writes.
    pub(super) async fn close(&self) -> Vec<ProcessingStep> {
        // Waits for a flush in progress, so no step is written after the outcome.
        let mut buffer = self.inner.buffer.lock().await;
        buffer.closed = true;
        std::mem::take(&mut buffer.steps)
    }
}

impl ProgressInner {
    async fn flush_later(self: Arc<Self>) {
        tokio::time::sleep(PROGRESS_FLUSH).await;
        let mut buffer = self.buffer.lock().await;
        buffer.flush_scheduled = false;
        if buffer.closed || buffer.steps.is_empty() {
            return;
        }
        let steps = std::mem::take(&mut buffer.steps);
        let substatus = buffer.substatus.take();
        if let Err(error) = self.store.record_progress(&self.task_id, self.attempt, substatus, steps).await {
            tracing::warn!(%error, task_id = %self.task_id, "could not record processing steps");
        }
    }
}

#[async_trait]
impl ProgressSink for StoreProgress {
    async fn record(&self, substatus: Option<String>, step: ProcessingStep) {
        let mut buffer = self.inner.buffer.lock().await;
        if buffer.closed {
            return;
        }
        buffer.steps.push(step);
        if substatus.is_some() {
            buffer.substatus = substatus;
        }
        if !buffer.flush_scheduled {
            buffer.flush_scheduled = true;
            tokio::spawn(self.inner.clone().flush_later());
        }
    }
}
