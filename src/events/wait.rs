//! Waiting for a task to change (`GET /tasks/{id}/status?wait=`) on the shared event feed
//! rather than by polling the store: subscribe first, read once (closing the race with a change
//! made in between), then read again only when an event about the task arrives.

use std::time::Duration;

use tokio::{sync::broadcast::error::RecvError, time::Instant};

use super::{Events, Item};
use crate::{
    domain::FieldError,
    store::{StoreError, TaskRecord, TaskStore},
};

/// `?wait=`: seconds, 0 or more (fractions allowed), capped at `max`; blank means no wait.
pub fn parse_wait(raw: Option<&str>, max: Duration) -> Result<Duration, FieldError> {
    let Some(raw) = raw.map(str::trim).filter(|r| !r.is_empty()) else { return Ok(Duration::ZERO) };
    match raw.parse::<f64>() {
        Ok(seconds) if seconds.is_finite() && seconds >= 0.0 => {
            Ok(Duration::from_secs_f64(seconds.min(max.as_secs_f64())))
        }
        _ => Err(FieldError::new("wait", format!("must be a number of seconds, 0 or more (got {raw:?})"))),
    }
}

impl Events {
    /// The task, once `done` holds for it or `wait` has passed (then as it is now); `None` when
    /// there is no such task (answered at once).
    pub async fn wait_for_task(
        &self,
        store: &dyn TaskStore,
        task_id: &str,
        wait: Duration,
        done: impl Fn(&TaskRecord) -> bool,
    ) -> Result<Option<TaskRecord>, StoreError> {
        let mut live = if wait.is_zero() { None } else { self.live() };
        let deadline = Instant::now() + wait;
        loop {
            let task = store.get(task_id).await?;
            let Some(feed) = live.as_mut() else { return Ok(task) };
            if task.as_ref().is_none_or(&done) {
                return Ok(task);
            }
            let woken = tokio::time::timeout_at(deadline, async {
                loop {
                    match feed.recv().await {
                        Ok(Item::Event(e)) if e.event.task_id == task_id => return true,
                        Ok(Item::Event(_)) => {}
                        // An event about the task may have gone by unseen: read again.
                        Ok(Item::Reset(_)) | Err(RecvError::Lagged(_)) => return true,
                        Err(RecvError::Closed) => return false,
                    }
                }
            });
            match woken.await {
                Ok(true) => {}
                // No feed any more: one last read answers.
                Ok(false) => live = None,
                Err(_) => return store.get(task_id).await,
            }
        }
    }
}
