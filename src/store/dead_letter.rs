//! A dead-lettered message as the store keeps it (see `broker::dead_letters`): enough to tell
//! which task it was, why the broker gave up on it and when, and what it said, cut short. The
//! store keeps each record for a bounded time; nothing decides a task's fate from it.

use chrono::{DateTime, Utc};

/// One message read from the dead-letter queue.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// The store's id (set when read back; ignored when recording).
    pub id: String,
    /// The `task_id` its body names, when the body parses.
    pub task_id: Option<String>,
    /// The registered topic its body or routing key names.
    pub topic: Option<String>,
    pub routing_key: String,
    /// Why it died (`rejected`, `delivery_limit`, …), from `x-death`.
    pub reason: Option<String>,
    /// How many times it died that way in that queue.
    pub count: Option<i64>,
    /// The queue it died in.
    pub queue: Option<String>,
    /// When it died, by the broker's clock.
    pub died_at: Option<DateTime<Utc>>,
    /// When the gateway read it.
    pub received_at: DateTime<Utc>,
    /// The body (lossy UTF-8), cut to a few KiB.
    pub body: String,
    /// The whole body's size.
    pub body_bytes: u64,
    pub body_truncated: bool,
    /// Its task was unfinished and its publish was made due again.
    pub republished: bool,
}

/// A page of dead letters, newest first.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterQuery {
    pub topic: Option<String>,
    pub task_id: Option<String>,
    /// Continue after this record id (the previous page's last).
    pub after: Option<String>,
    pub limit: u32,
}
