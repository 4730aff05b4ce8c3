//! The dead-letter queue (`{exchange}.dead`) made visible and recoverable. RabbitMQ's
//! dead-lettering is at-most-once and a parked message helps nobody, so each one is read, kept as
//! a record in the store (task id when its body parses, topic, routing key, why and where it
//! died, the body cut to a few KiB; `GET /dead-letters` lists them) and acked. If its task is in
//! the store and not finished, the store makes the task's publish due now, so the relay sends it
//! again: the store is the source of truth, and a duplicate message is harmless (the claim skips
//! it). It never runs a handler.

use std::{collections::HashSet, sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::DateTime;
use lapin::{BasicProperties, types::AMQPValue};

use super::{DeadLetterHandler, DeadMessage, Disposition, Topology};
use crate::{
    metrics::Metrics,
    store::{DeadLetter, TaskStore},
};

/// The body kept in a record, at most (a dead message may be large; the record is for a person
/// to read, and the store keeps the task's own copy).
pub const BODY_KEPT: usize = 4096;

/// Longest task id taken from a body (longer ones are not ids this gateway issued).
const MAX_TASK_ID: usize = 256;

/// The metric label for a dead letter whose topic is not a registered one.
const UNKNOWN_TOPIC: &str = "unknown";

/// A store that cannot take the record now: wait this long before handing the message back, so
/// an outage does not spin the dead-letter queue.
const STORE_PAUSE: Duration = Duration::from_secs(1);

/// Reads a dead-letter queue delivery: the latest death from its `x-death` header.
pub(super) fn read(body: Vec<u8>, routing_key: &str, properties: &BasicProperties) -> DeadMessage {
    let latest = properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-death").cloned())
        .and_then(|v| match v {
            AMQPValue::FieldArray(deaths) => deaths.as_slice().first().cloned(),
            _ => None,
        })
        .and_then(|v| match v {
            AMQPValue::FieldTable(t) => Some(t),
            _ => None,
        });
    let field = |name: &str| latest.as_ref().and_then(|t| t.inner().get(name).cloned());
    let text = |name: &str| match field(name) {
        Some(AMQPValue::LongString(s)) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        Some(AMQPValue::ShortString(s)) => Some(s.as_str().to_owned()),
        _ => None,
    };
    let count = match field("count") {
        Some(AMQPValue::LongLongInt(n)) => Some(n),
        Some(AMQPValue::LongInt(n)) => Some(i64::from(n)),
        Some(AMQPValue::LongUInt(n)) => Some(i64::from(n)),
        _ => None,
    };
    let died_at = match field("time") {
        Some(AMQPValue::Timestamp(seconds)) => i64::try_from(seconds).ok().and_then(|s| DateTime::from_timestamp(s, 0)),
        _ => None,
    };
    DeadMessage {
        body,
        routing_key: routing_key.to_owned(),
        reason: text("reason"),
        count,
        queue: text("queue"),
        died_at,
    }
}

/// Keeps each dead letter in the store and hands its task back to the relay.
pub struct DeadLetterRecorder {
    store: Arc<dyn TaskStore>,
    metrics: Metrics,
    /// Registered topics: only these name a metric label.
    topics: HashSet<String>,
    retention: Duration,
}

impl DeadLetterRecorder {
    pub fn new(
        store: Arc<dyn TaskStore>,
        metrics: Metrics,
        topics: impl IntoIterator<Item = String>,
        retention: Duration,
    ) -> Self {
        Self { store, metrics, topics: topics.into_iter().collect(), retention }
    }

    /// The record for a message: what its body and routing key say.
    fn record(&self, m: &DeadMessage) -> DeadLetter {
        let parsed: Option<serde_json::Value> = serde_json::from_slice(&m.body).ok();
        let field = |name: &str| parsed.as_ref().and_then(|v| v.get(name)).and_then(|v| v.as_str());
        let task_id = field("task_id").filter(|id| !id.is_empty() && id.len() <= MAX_TASK_ID).map(str::to_owned);
        let known = |t: &&str| self.topics.contains(*t);
        let topic =
            field("topic").filter(known).or(Topology::topic_of(&m.routing_key).filter(known)).map(str::to_owned);
        let kept = &m.body[..m.body.len().min(BODY_KEPT)];
        DeadLetter {
            id: String::new(),
            task_id,
            topic,
            routing_key: m.routing_key.clone(),
            reason: m.reason.clone(),
            count: m.count,
            queue: m.queue.clone(),
            died_at: m.died_at,
            received_at: self.store.now(),
            body: String::from_utf8_lossy(kept).into_owned(),
            body_bytes: m.body.len() as u64,
            body_truncated: kept.len() < m.body.len(),
            republished: false,
        }
    }
}

#[async_trait]
impl DeadLetterHandler for DeadLetterRecorder {
    #[tracing::instrument(skip_all, fields(task_id, topic))]
    async fn handle(&self, message: DeadMessage) -> Disposition {
        let mut letter = self.record(&message);
        drop(message);
        let span = tracing::Span::current();
        if let Some(id) = &letter.task_id {
            span.record("task_id", id.as_str());
        }
        if let Some(topic) = &letter.topic {
            span.record("topic", topic.as_str());
        }
        if let Some(task_id) = letter.task_id.clone() {
            match self.store.republish_dead_lettered(&task_id).await {
                Ok(again) => letter.republished = again,
                Err(error) => {
                    tracing::warn!(%error, "dead letter not handled: store unavailable; handed back");
                    tokio::time::sleep(STORE_PAUSE).await;
                    return Disposition::Requeue;
                }
            }
        }
        let (reason, republished) = (letter.reason.clone(), letter.republished);
        let label = letter.topic.clone().unwrap_or_else(|| UNKNOWN_TOPIC.to_owned());
        if let Err(error) = self.store.record_dead_letter(letter, self.retention).await {
            tracing::warn!(%error, "dead letter not recorded: store unavailable; handed back");
            tokio::time::sleep(STORE_PAUSE).await;
            return Disposition::Requeue;
        }
        self.metrics.dead_lettered(&label);
        tracing::warn!(reason = reason.as_deref().unwrap_or("unknown"), republished, "dead letter recorded");
        Disposition::Ack
    }
}

#[cfg(test)]
mod tests {
    use lapin::{
        BasicProperties,
        types::{AMQPValue, FieldArray, FieldTable},
    };

    use super::read;

    #[test]
    fn the_latest_death_is_read_from_x_death() {
        let mut death = FieldTable::default();
        death.insert("reason".into(), AMQPValue::LongString("rejected".into()));
        death.insert("count".into(), AMQPValue::LongLongInt(2));
        death.insert("queue".into(), AMQPValue::LongString("x.task.submit.a".into()));
        death.insert("time".into(), AMQPValue::Timestamp(1_700_000_000));
        let mut headers = FieldTable::default();
        headers.insert("x-death".into(), AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(death)])));
        let m = read(b"{}".to_vec(), "task.submit.a", &BasicProperties::default().with_headers(headers));
        assert_eq!(m.reason.as_deref(), Some("rejected"));
        assert_eq!(m.count, Some(2));
        assert_eq!(m.queue.as_deref(), Some("x.task.submit.a"));
        assert_eq!(m.died_at.map(|t| t.timestamp()), Some(1_700_000_000));
        let bare = read(Vec::new(), "k", &BasicProperties::default());
        assert_eq!((bare.reason, bare.count), (None, None));
    }
}
