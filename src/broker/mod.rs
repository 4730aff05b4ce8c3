//! The message broker seam: publishing a task with a confirmed, routed delivery, and handing each
//! consumed message to a [`DeliveryHandler`] (and each dead-lettered one to a
//! [`DeadLetterHandler`]). The traits speak of tasks, not AMQP, so an in-process queue can replace
//! RabbitMQ in a single-node mode.
//!
//! RabbitMQ's side is split by concern: `connection` (opening, closing, backoff), `topology`
//! (names and declarations), `publisher` (its own connection), `consumer` (the consumers'
//! connection and shutdown), `topic` (one queue's supervised consumer), `dead_letters` (the
//! dead-letter queue's records) and `rabbit` (the handle that ties them together).

mod connection;
mod consumer;
mod dead_letters;
mod policy;
mod publisher;
mod rabbit;
mod topic;
mod topology;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

pub use dead_letters::DeadLetterRecorder;
pub use policy::ConsumerPolicy;
pub use rabbit::{ConsumerSet, ConsumerSpec, RabbitBroker};
pub use topology::Topology;

/// One consumer per registered topic, with the topic's concurrency as prefetch.
pub fn rabbit_consumers(registry: &crate::topics::Registry) -> Vec<ConsumerSpec> {
    registry.iter().map(|t| ConsumerSpec { topic: t.spec.name.clone(), prefetch: t.spec.concurrency }).collect()
}

/// Why a publish does not count as published.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    #[error("broker not connected")]
    NotConnected,
    #[error("broker is blocking publishers (resource alarm)")]
    Blocked,
    #[error("broker refused the message (nack)")]
    Nacked,
    #[error("message was returned unroutable: {0}")]
    Unroutable(String),
    #[error("publish failed: {0}")]
    Failed(String),
}

/// One consumer's state as its supervisor last saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumerState {
    /// Its queue is being consumed now.
    pub consuming: bool,
    /// Why not, while it is not.
    pub error: Option<String>,
    /// When it entered this state.
    pub since: DateTime<Utc>,
    /// Times it was started again after its queue could not be consumed.
    pub restarts: u64,
}

/// Every consumer's state (empty where nothing consumes: an API-only process).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConsumerStates {
    /// Per topic, by name.
    pub topics: Vec<(String, ConsumerState)>,
    /// The dead-letter queue's consumer.
    pub dead_letters: Option<ConsumerState>,
}

#[async_trait]
pub trait Broker: Send + Sync {
    /// Publishes a submission body for `topic` and waits until the broker has confirmed it as
    /// stored and routed, with the task's `traceparent` (see `trace`) in its headers. Only `Ok`
    /// means published.
    async fn publish(
        &self,
        topic: &str,
        body: &[u8],
        attempt: u32,
        traceparent: Option<&str>,
    ) -> Result<(), PublishError>;

    /// Whether publishing is possible now: connected and not blocked (for `/health` and the relay).
    fn is_connected(&self) -> bool;

    /// The consumers' states (for `/health`).
    fn consumers(&self) -> ConsumerStates {
        ConsumerStates::default()
    }

    /// `topic`'s queue as the broker counts it now (`crate::resend` weighs it against the
    /// store's stale tasks); `None` when it cannot be asked (not connected, no such queue).
    async fn queue_depth(&self, _topic: &str) -> Option<QueueDepth> {
        None
    }
}

/// A topic queue's contents as the broker reports them (a passive `queue.declare`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDepth {
    /// Messages ready for delivery (not those delivered and not yet acked).
    pub ready: u64,
    /// Consumers attached to the queue, on any replica; each holds at most its prefetch.
    pub consumers: u32,
}

/// What to do with a consumed message once its handling is over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Handled (or nothing left to do): remove it from the queue.
    Ack,
    /// Unusable; park it in the dead-letter queue. The reason is logged.
    DeadLetter(String),
    /// Could not be handled now (store unreachable, shutting down): give it back.
    Requeue,
}

/// Receives each consumed message.
#[async_trait]
pub trait DeliveryHandler: Send + Sync {
    /// The body is handed over, so the handler can let go of it once read rather than hold it
    /// for as long as the message is being handled.
    async fn handle(&self, body: Vec<u8>) -> Disposition;
}

/// A message from the dead-letter queue, with what the broker said about its death.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadMessage {
    pub body: Vec<u8>,
    /// The routing key it was first published with (`task.submit.{topic}`).
    pub routing_key: String,
    /// Why it died (`rejected`, `delivery_limit`, `expired`, `maxlen`), from its latest death.
    pub reason: Option<String>,
    /// How many times it died that way in that queue.
    pub count: Option<i64>,
    /// The queue it died in.
    pub queue: Option<String>,
    /// When, by the broker's clock.
    pub died_at: Option<DateTime<Utc>>,
}

/// Receives each message of the dead-letter queue.
#[async_trait]
pub trait DeadLetterHandler: Send + Sync {
    async fn handle(&self, message: DeadMessage) -> Disposition;
}
