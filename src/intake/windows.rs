//! Publish windows: the intake's publish debts, one for a stretch of time instead of one a batch.
//! A window's debt (`{_id, from, until, due_at}` in the store) stands for every task the intake
//! stores with a `created_at` in `[from, until)`. It is written before the first of them, and
//! usually while the window before is still in use, so a batch on the request path writes only
//! its tasks. The intake moves to a new window every [`ROTATE`]; once a window is closed and the
//! broker has confirmed every publish of every batch in it, its debt is deleted. A window in which
//! anything went wrong (a publish or an insert failed, a batch was dropped mid-way) keeps its debt,
//! and when that falls due the relay passes it on: every task of the window still queued owes its
//! publish (see [`TaskStore::pass_on_due_debts`]).
//!
//! Must not: hand out a time outside a window whose debt is written, or delete a debt while a batch
//! admitted to its window has not finished publishing.

use std::{
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use bson::oid::ObjectId;
use chrono::{DateTime, Utc};
use tokio::{sync::Notify, task::JoinHandle};
use tokio_util::task::TaskTracker;

use crate::{
    relay::publish_hold_until,
    store::{StoreError, TaskStore},
};

/// How long the intake keeps admitting batches to one window. Shorter means more debt writes;
/// longer means more already-published tasks published again when a window's debt is passed on.
pub const ROTATE: Duration = Duration::from_millis(1000);

/// The time range a debt covers, from when it is written. Longer than [`ROTATE`], so that a window
/// written ahead is still open when the intake gets to it.
const SPAN: Duration = Duration::from_secs(5);

/// One publish window, shared by the intake, the batches admitted to it and its settler.
struct Window {
    id: String,
    /// The range is on the store's clock (its time as measured when the window opened), so
    /// that the debt falls due by the same clock the relay reads; `skew` turns this
    /// replica's clock into it.
    from: DateTime<Utc>,
    until: DateTime<Utc>,
    skew: chrono::Duration,
    state: Mutex<WindowState>,
    /// A batch finished, or the window was closed.
    changed: Notify,
}

#[derive(Default)]
struct WindowState {
    /// Admits no more batches.
    closed: bool,
    /// When the first batch was admitted; the window closes [`ROTATE`] later.
    first_admitted: Option<DateTime<Utc>>,
    /// Batches admitted and not yet finished.
    open: usize,
    /// Some batch did not get all its tasks stored and published.
    failed: bool,
}

impl Window {
    fn state(&self) -> MutexGuard<'_, WindowState> {
        // Nothing panics while holding the lock; a poisoned one still holds consistent counts.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The time for a batch admitted now, or `None` if the window no longer admits batches.
    fn admit(&self) -> Option<DateTime<Utc>> {
        let mut state = self.state();
        let now = Utc::now() + self.skew;
        let rotate = chrono::Duration::from_std(ROTATE).unwrap_or_default();
        let due_to_close = state.first_admitted.is_some_and(|first| now >= first + rotate);
        if state.closed || due_to_close || now < self.from || now >= self.until {
            state.closed = true;
            drop(state);
            self.changed.notify_one();
            return None;
        }
        state.first_admitted.get_or_insert(now);
        state.open += 1;
        Some(now)
    }

    fn close(&self) {
        self.state().closed = true;
        self.changed.notify_one();
    }

    /// Waits until the window admits no more batches and all it admitted have finished; whether
    /// they all went through.
    async fn settled(&self) -> bool {
        loop {
            let left = {
                let mut state = self.state();
                let left = (self.until - (Utc::now() + self.skew)).to_std().unwrap_or_default();
                if left.is_zero() {
                    state.closed = true;
                }
                if state.closed && state.open == 0 {
                    return !state.failed;
                }
                left
            };
            // `notify_one` keeps a wake-up given between the check and here.
            let _ = tokio::time::timeout(left.max(Duration::from_millis(1)), self.changed.notified()).await;
        }
    }
}

/// A batch's place in a window: the `created_at` its tasks get. Dropping it without
/// [`Ticket::paid`] marks the window as failed, so its debt stays for the relay.
pub struct Ticket {
    window: Arc<Window>,
    at: DateTime<Utc>,
    paid: bool,
}

impl Ticket {
    pub fn at(&self) -> DateTime<Utc> {
        self.at
    }

    /// Every task of the batch is stored and its publish confirmed.
    pub fn paid(mut self) {
        self.paid = true;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut state = self.window.state();
        state.open -= 1;
        state.failed |= !self.paid;
        drop(state);
        self.window.changed.notify_one();
    }
}

/// The intake's windows: the one in use and the one written ahead. Used by one writer at a time.
pub struct Windows {
    store: Arc<dyn TaskStore>,
    current: Option<Arc<Window>>,
    next: Option<JoinHandle<Result<Arc<Window>, StoreError>>>,
    /// The windows' settlers.
    settlers: TaskTracker,
}

impl Windows {
    pub fn new(store: Arc<dyn TaskStore>) -> Self {
        Self { store, current: None, next: None, settlers: TaskTracker::new() }
    }

    /// Shutting down: closes the windows and waits, up to `grace`, until each has deleted its
    /// debt (or kept it, if something in it failed), so a clean stop leaves no debt behind for the
    /// relay to pass on. Batches written after this get a new window.
    pub async fn settle_all(&mut self, grace: Duration) {
        if let Some(window) = self.current.take() {
            window.close();
        }
        if let Some(Ok(Ok(window))) = match self.next.take() {
            Some(ahead) => Some(ahead.await),
            None => None,
        } {
            window.close();
        }
        self.settlers.close();
        if tokio::time::timeout(grace, self.settlers.wait()).await.is_err() {
            tracing::warn!("publish windows not settled in time; the relay will pass their debts on");
        }
        self.settlers.reopen();
    }

    /// A ticket for one batch, in a window whose debt is written. Waits for a debt write only when
    /// none was written ahead (the first batch after a quiet spell, or the store was slow).
    pub async fn enter(&mut self) -> Result<Ticket, StoreError> {
        let mut written_now = false;
        loop {
            if let Some(window) = &self.current
                && let Some(at) = window.admit()
            {
                let ticket = Ticket { window: window.clone(), at, paid: false };
                if self.next.is_none() {
                    self.next = Some(tokio::spawn(open(self.store.clone(), self.settlers.clone())));
                }
                return Ok(ticket);
            }
            if written_now {
                // Its whole span went by while its debt was being written.
                return Err(StoreError::Unavailable("the store took too long to record a publish window".into()));
            }
            self.current = match self.next.take() {
                Some(ahead) => match ahead.await {
                    Ok(Ok(window)) => Some(window),
                    Ok(Err(error)) => {
                        tracing::warn!(%error, "writing a publish window ahead failed; writing one now");
                        None
                    }
                    Err(_) => None, // the runtime is stopping
                },
                None => None,
            };
            if self.current.is_none() {
                self.current = Some(open(self.store.clone(), self.settlers.clone()).await?);
                written_now = true;
            }
        }
    }
}

impl Drop for Windows {
    /// The writer stopped: the windows admit nothing more and settle once their batches finish.
    fn drop(&mut self) {
        if let Some(window) = &self.current {
            window.close();
        }
        if let (Some(ahead), Ok(runtime)) = (self.next.take(), tokio::runtime::Handle::try_current()) {
            runtime.spawn(async move {
                if let Ok(Ok(window)) = ahead.await {
                    window.close();
                }
            });
        }
    }
}

/// Writes a new window's debt and starts its settler.
async fn open(store: Arc<dyn TaskStore>, settlers: TaskTracker) -> Result<Arc<Window>, StoreError> {
    let from = store.now();
    let skew = from - Utc::now();
    let until = from + chrono::Duration::from_std(SPAN).unwrap_or_default();
    let id = ObjectId::new().to_hex();
    store.owe_publishes(&id, from..until, publish_hold_until(until)).await?;
    let window = Arc::new(Window { id, from, until, skew, state: Mutex::default(), changed: Notify::new() });
    settlers.spawn(settle(store, window.clone()));
    Ok(window)
}

/// Deletes a window's debt once everything it stood for is published; leaves it for the relay
/// otherwise.
async fn settle(store: Arc<dyn TaskStore>, window: Arc<Window>) {
    if !window.settled().await {
        tracing::warn!(window = %window.id, "a batch's publishes were not all confirmed; the relay will pass its window on");
        return;
    }
    if let Err(error) = store.settle_publishes(&window.id).await {
        // Harmless: the relay publishes the window's queued tasks again and the duplicates are
        // skipped by the consumer's claim.
        tracing::warn!(%error, window = %window.id, "publishes confirmed but their window's debt not deleted");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(from: DateTime<Utc>, until: DateTime<Utc>) -> Arc<Window> {
        let skew = chrono::Duration::zero();
        Arc::new(Window { id: "w".into(), from, until, skew, state: Mutex::default(), changed: Notify::new() })
    }

    fn ticket(window: &Arc<Window>) -> Ticket {
        let at = window.admit().expect("the window admits");
        Ticket { window: window.clone(), at, paid: false }
    }

    #[test]
    fn a_window_hands_out_times_inside_its_range_until_closed_or_over() {
        let now = Utc::now();
        let open = window(now - chrono::Duration::seconds(1), now + chrono::Duration::seconds(60));
        let at = ticket(&open).at();
        assert!(open.from <= at && at < open.until);
        open.close();
        assert!(open.admit().is_none(), "a closed window admits nothing");
        let over = window(now - chrono::Duration::seconds(10), now - chrono::Duration::seconds(1));
        assert!(over.admit().is_none(), "a window whose range is over admits nothing");
        let ahead = window(now + chrono::Duration::seconds(10), now + chrono::Duration::seconds(20));
        assert!(ahead.admit().is_none(), "no time before the range is handed out");
    }

    #[tokio::test]
    async fn a_window_settles_once_closed_and_every_batch_finished_and_fails_if_one_was_not_paid() {
        let now = Utc::now();
        let all_paid = window(now, now + chrono::Duration::seconds(60));
        let (a, b) = (ticket(&all_paid), ticket(&all_paid));
        all_paid.close();
        a.paid();
        let waiting = tokio::time::timeout(Duration::from_millis(50), all_paid.settled()).await;
        assert!(waiting.is_err(), "settled while a batch was still publishing");
        b.paid();
        assert!(all_paid.settled().await);

        let one_unpaid = window(now, now + chrono::Duration::seconds(60));
        let (a, b) = (ticket(&one_unpaid), ticket(&one_unpaid));
        one_unpaid.close();
        a.paid();
        drop(b);
        assert!(!one_unpaid.settled().await, "a batch dropped unpaid leaves the debt to the relay");
    }
}
