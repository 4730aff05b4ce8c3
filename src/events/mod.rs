//! Live task events (`GET /events`, and the waits of `GET /tasks/{id}/status?wait=`). One shared
//! source per process — a change stream on the store's `tasks` collection, so a change made by
//! any replica arrives — turned into task events (a change of status, substatus, attempts or
//! Camunda report state; inserts too), kept in a bounded ring for resumes and fanned out through
//! one bounded broadcast channel. Each subscriber gets its filters and a small bounded path of
//! its own; one that falls behind is told `lagged` and dropped, never buffered without limit.
//!
//! Event ids are the change stream's resume tokens (their opaque `_data` string): an id this
//! process no longer holds is resumed from the store for that subscriber, or answered `reset`.
//! It owns no writes: it only watches what the store's writers did.

mod change;
mod filter;
mod hub;
mod settings;
mod subscriber;
mod wait;
mod watcher;

use std::sync::Arc;

use serde::Serialize;

pub use filter::Filter;
pub use hub::{Events, WatcherState};
pub use settings::EventsSettings;
pub use subscriber::{Out, Subscription};
pub use wait::parse_wait;

use crate::{domain::TaskStatus, store::ReportState};

/// One change of a task, as subscribers see it (`data:` of `event: task`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskEvent {
    /// The resume token of the change (`id:`); not part of `data`.
    #[serde(skip)]
    pub id: Arc<str>,
    pub task_id: String,
    pub topic: String,
    pub worker_id: String,
    pub status: TaskStatus,
    pub substatus: Option<String>,
    pub attempts: u32,
    pub report_state: ReportState,
    pub error_message: Option<String>,
    /// ISO 8601, milliseconds, UTC.
    pub updated_at: String,
    pub trace_id: Option<String>,
}

impl TaskEvent {
    /// What makes two changes of a task the same event for subscribers: a write that changed
    /// none of these (a lease renewed, a step recorded) is no event.
    fn key(&self) -> (TaskStatus, Option<&str>, u32, u8) {
        (self.status, self.substatus.as_deref(), self.attempts, self.report_state as u8)
    }
}

/// What the shared channel carries.
#[derive(Debug, Clone)]
pub enum Item {
    /// A task event, shared by every subscriber (serialised once).
    Event(Arc<Shared>),
    /// The source lost its place (the store's history did not reach back far enough): events
    /// may be missing, subscribers should reload.
    Reset(Arc<str>),
}

/// An event with its `data:` already serialised.
#[derive(Debug)]
pub struct Shared {
    pub event: TaskEvent,
    pub json: String,
}

impl Shared {
    pub fn new(event: TaskEvent) -> Arc<Self> {
        let json = serde_json::to_string(&event).unwrap_or_default();
        Arc::new(Self { event, json })
    }
}
