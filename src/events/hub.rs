//! The shared side of events: the ring of recent events (for `Last-Event-ID`), the positions of
//! recent changes in it, the broadcast channel that fans events out, and the watcher's state.
//! One lock orders "record an event" against "attach a subscriber", so a subscriber's replay and
//! its live feed meet exactly: nothing missed, nothing twice.

use std::{
    collections::{HashMap, VecDeque},
    hash::{DefaultHasher, Hash, Hasher},
    sync::{Arc, Mutex},
    time::Duration,
};

use mongodb::Database;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use super::{EventsSettings, Item, Shared, watcher};

/// How the shared change stream is doing (`/health`'s `events`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatcherState {
    /// Not watching: this process serves no API (`GATEWAY_MODE=worker`).
    Off,
    /// Opening the stream for the first time.
    Connecting,
    /// Receiving changes.
    Live,
    /// The stream failed; reopening from the last change seen, with back-off.
    Retrying,
}

impl WatcherState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Connecting => "connecting",
            Self::Live => "live",
            Self::Retrying => "retrying",
        }
    }
}

/// Cheap handle to the process's one event source.
#[derive(Clone)]
pub struct Events {
    pub(super) hub: Option<Arc<Hub>>,
}

pub(super) struct Hub {
    pub(super) database: Database,
    pub(super) stop: CancellationToken,
    sender: broadcast::Sender<Item>,
    ring: Mutex<Ring>,
    /// Changes the watcher has processed so far (a resuming subscriber waits on it).
    progress: watch::Sender<u64>,
    state: watch::Sender<WatcherState>,
}

/// Recent events and where recent changes fall among them.
struct Ring {
    /// (sequence number, event), oldest first; sequence numbers count events from 1.
    events: VecDeque<(u64, Arc<Shared>)>,
    /// Hash of a change's id → the sequence number of the last event at or before it. Every
    /// change is here, also those that made no event, so any id a client holds is found.
    positions: HashMap<u64, u64>,
    order: VecDeque<u64>,
    last_seq: u64,
    capacity: usize,
}

/// A subscriber joining the shared feed: the events it missed, then the live channel.
pub(super) struct Attach {
    pub(super) replay: Vec<Arc<Shared>>,
    pub(super) live: broadcast::Receiver<Item>,
}

fn hash(id: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    id.hash(&mut hasher);
    hasher.finish()
}

impl Events {
    /// No source: nothing is ever published (a process that serves no API).
    pub fn disabled() -> Self {
        Self { hub: None }
    }

    /// Starts the shared watcher (until `stop`) and waits a few seconds for its stream to open,
    /// so changes made right after start-up are seen; a store that cannot stream yet is retried
    /// in the background.
    pub async fn start(database: Database, settings: EventsSettings, stop: CancellationToken) -> Self {
        let (sender, _) = broadcast::channel(settings.lag_limit);
        let ring = Ring {
            events: VecDeque::new(),
            positions: HashMap::new(),
            order: VecDeque::new(),
            last_seq: 0,
            capacity: settings.ring_size,
        };
        let hub = Arc::new(Hub {
            database,
            stop,
            sender,
            ring: Mutex::new(ring),
            progress: watch::Sender::new(0),
            state: watch::Sender::new(WatcherState::Connecting),
        });
        tokio::spawn(watcher::run(hub.clone()));
        let mut state = hub.state.subscribe();
        let live = tokio::time::timeout(Duration::from_secs(5), state.wait_for(|s| *s == WatcherState::Live)).await;
        if !matches!(live, Ok(Ok(_))) {
            tracing::warn!("the store's change stream is not open yet: /events and status waits start once it is");
        }
        Self { hub: Some(hub) }
    }

    pub fn state(&self) -> WatcherState {
        self.hub.as_ref().map_or(WatcherState::Off, |h| *h.state.borrow())
    }

    /// The live feed alone, from now on (a status wait's trigger).
    pub fn live(&self) -> Option<broadcast::Receiver<Item>> {
        self.hub.as_ref().map(|h| h.sender.subscribe())
    }
}

impl Hub {
    pub(super) fn set_state(&self, state: WatcherState) {
        self.state.send_replace(state);
    }

    /// One change processed by the watcher, with the event it made, if any.
    pub(super) fn record(&self, change_id: &str, event: Option<Arc<Shared>>) {
        if let Ok(mut ring) = self.ring.lock() {
            if let Some(event) = event {
                ring.last_seq += 1;
                let seq = ring.last_seq;
                ring.events.push_back((seq, event.clone()));
                if ring.events.len() > ring.capacity {
                    ring.events.pop_front();
                }
                // No receiver is no error: events are only for whoever listens.
                let _ = self.sender.send(Item::Event(event));
            }
            let (key, seq) = (hash(change_id), ring.last_seq);
            if ring.positions.insert(key, seq).is_none() {
                ring.order.push_back(key);
            }
            // Twice the ring: changes that made no event (lease renewals, steps) are many.
            while ring.order.len() > ring.capacity * 2 {
                if let Some(old) = ring.order.pop_front() {
                    ring.positions.remove(&old);
                }
            }
        }
        self.progress.send_modify(|n| *n += 1);
    }

    /// Tells every live subscriber that events may be missing.
    pub(super) fn reset(&self, reason: &str) {
        let _ = self.sender.send(Item::Reset(Arc::from(reason)));
    }

    /// Joins the live feed after the change `id`, replaying from the ring what came after it;
    /// `None` when this process does not hold that point (never saw it, or forgot it).
    /// Without an id: live from now.
    pub(super) fn attach(&self, id: Option<&str>) -> Option<Attach> {
        let ring = self.ring.lock().ok()?;
        let Some(id) = id else { return Some(Attach { replay: Vec::new(), live: self.sender.subscribe() }) };
        let after = *ring.positions.get(&hash(id))?;
        let oldest = ring.events.front().map_or(ring.last_seq + 1, |(seq, _)| *seq);
        if oldest > after + 1 {
            return None;
        }
        let replay = ring.events.iter().filter(|(seq, _)| *seq > after).map(|(_, e)| e.clone()).collect();
        Some(Attach { replay, live: self.sender.subscribe() })
    }

    /// Waits up to `limit` for the watcher to process the change `id` (a resuming subscriber
    /// that has caught up is just ahead of it); whether it did.
    pub(super) async fn wait_for(&self, id: &str, limit: Duration) -> bool {
        let key = hash(id);
        let held = || self.ring.lock().is_ok_and(|r| r.positions.contains_key(&key));
        let mut progress = self.progress.subscribe();
        let waited = tokio::time::timeout(limit, async {
            while !held() {
                if progress.changed().await.is_err() {
                    return;
                }
            }
        });
        let _ = waited.await;
        held()
    }
}
