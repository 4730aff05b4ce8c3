//! The message broker seam: publishing a task with a confirmed, routed delivery, and handing each
//! consumed message to a [`DeliveryHandler`]. The trait speaks of tasks, not AMQP, so an
//! in-process queue can replace RabbitMQ in a single-node mode.

mod rabbit;

use async_trait::async_trait;

pub use rabbit::{ConsumerSpec, RabbitBroker, Topology};

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
