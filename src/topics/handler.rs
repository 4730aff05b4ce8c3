//! The contract between the dispatcher and a topic's handler: what a handler receives, how it
//! reports progress, and how it says whether a failure is worth retrying. It owns no I/O itself.

use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};

/// Result variables a handler returns on success (a JSON object, names → values).
pub type Variables = Map<String, Value>;

/// Why a handler did not succeed. The variant decides what the dispatcher does next.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HandlerError {
    /// The input can never succeed (bad data, a rule violated): fail at once, no retry.
    /// `kind` names the error for the topic's `[errors]` table (e.g. `validation`,
    /// `processing`), which maps it to a BPMN error code at Camunda; an unmapped kind becomes an
    /// incident there.
    #[error("business error ({kind}): {message}")]
    Business { kind: String, message: String },
    /// A transient fault (timeout, peer down, 5xx): retried with backoff up to the attempt limit.
    #[error("retryable failure: {message}")]
    Retryable { message: String },
}

impl HandlerError {
    pub fn business(kind: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Business { kind: kind.into(), message: message.into() }
    }

    pub fn retryable(message: impl Into<String>) -> Self {
        Self::Retryable { message: message.into() }
    }
}

/// A progress note a handler leaves while it runs; the status endpoint shows them in order.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ProcessingStep {
    pub step: String,
    pub status: String,
    pub at: chrono::DateTime<chrono::Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Sink for progress reports. The dispatcher implements it by writing to the store; tests can
/// collect into memory.
#[async_trait::async_trait]
pub trait ProgressSink: Send + Sync {
    async fn record(&self, substatus: Option<String>, step: ProcessingStep);
}

/// Everything a handler may know about the task it runs.
#[derive(Clone)]
pub struct HandlerContext {
    pub task_id: String,
    pub worker_id: String,
    pub topic: String,
    /// 1-based attempt number of this run.
    pub attempt: u32,
    progress: Arc<dyn ProgressSink>,
}

impl HandlerContext {
    pub fn new(
        task_id: String,
        worker_id: String,
        topic: String,
        attempt: u32,
        progress: Arc<dyn ProgressSink>,
    ) -> Self {
        Self { task_id, worker_id, topic, attempt, progress }
    }

    /// Records a processing step (and optionally a new substatus) on the task.
    pub async fn step(&self, substatus: Option<&str>, step: &str, status: &str, detail: Option<String>) {
        let step = ProcessingStep { step: step.to_owned(), status: status.to_owned(), at: chrono::Utc::now(), detail };
        self.progress.record(substatus.map(str::to_owned), step).await;
    }
}

/// A progress sink that keeps everything in memory; used by unit tests of handlers.
#[derive(Default)]
pub struct MemoryProgress(pub Mutex<Vec<(Option<String>, ProcessingStep)>>);

#[async_trait::async_trait]
impl ProgressSink for MemoryProgress {
    async fn record(&self, substatus: Option<String>, step: ProcessingStep) {
        self.0.lock().expect("progress mutex is never poisoned: no panics while held").push((substatus, step));
    }
}

/// A topic's handler. It must be idempotent: the gateway is at-least-once towards handlers
/// (a crash mid-run re-runs it after the lease expires).
#[async_trait::async_trait]
pub trait Handler: Send + Sync {
    async fn handle(&self, ctx: &HandlerContext, input: &Variables) -> Result<Variables, HandlerError>;
}
