//! One subscriber's path: a task of its own that joins the shared feed (replaying from the ring,
//! or resuming from the store when the ring no longer holds its `Last-Event-ID`), applies its
//! filters, and hands events to the response through a small bounded channel. A subscriber
//! that does not keep up — its channel stays full, or the shared channel overtakes it — gets a
//! final `lagged` and is dropped; if it does not even read that, its connection is closed.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::{Stream, StreamExt};
use tokio::sync::{
    broadcast::error::RecvError,
    mpsc::{self, error::SendTimeoutError},
    oneshot,
};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{
    Events, Filter, Item, Shared,
    change::{self, Dedupe},
    hub::{Attach, Hub},
};

/// Events waiting for one subscriber's response body.
const QUEUE: usize = 32;
/// A subscriber that takes no event for this long while one waits is lagging.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// A lagging subscriber's connection is closed once its response has not moved for this long
/// (it reads nothing, so it would never reach its `lagged`).
const LAG_GRACE: Duration = Duration::from_secs(5);
/// How long a resuming subscriber, caught up with the store, waits for the shared watcher to
/// reach the same change before it goes on reading the store itself.
const JOIN_WAIT: Duration = Duration::from_secs(1);

/// What a subscriber is sent.
#[derive(Debug, Clone)]
pub enum Out {
    Event(Arc<Shared>),
    /// Events may be missing: reload.
    Reset(Arc<str>),
    /// The last thing sent: the subscriber fell behind after this id (or before any).
    Lagged(Option<Arc<str>>),
}

/// One subscriber's feed; dropping it (the client went away) stops its task.
pub struct Subscription {
    items: mpsc::Receiver<Out>,
    lagged: oneshot::Receiver<Option<Arc<str>>>,
    /// Items taken by the response so far: whether a lagging subscriber still reads.
    taken: Arc<AtomicU64>,
    done: DropGuard,
}

impl Subscription {
    /// The feed as a stream, ending after a `lagged`, at shutdown, or never.
    pub fn into_stream(self) -> impl Stream<Item = Out> + Send + 'static {
        let Self { items, lagged, taken, done } = self;
        let items = futures::stream::unfold(items, |mut rx| async move { rx.recv().await.map(|out| (out, rx)) });
        let last = futures::stream::once(lagged).filter_map(|r| async move { r.ok().map(Out::Lagged) });
        // The guard lives as long as the stream: its drop tells the task the client is gone.
        items.chain(last).map(move |out| {
            let _alive = &done;
            taken.fetch_add(1, Ordering::Relaxed);
            out
        })
    }
}

enum Stop {
    /// The client went away, or the gateway stops.
    Gone,
    Lagged,
}

impl Events {
    /// A new subscriber: events matching `filter`, after `last_event_id` when given. `closer`,
    /// when given, is cancelled to close the connection of a subscriber that stopped reading.
    pub fn subscribe(
        &self,
        filter: Filter,
        last_event_id: Option<String>,
        closer: Option<CancellationToken>,
    ) -> Subscription {
        let (tx, items) = mpsc::channel(QUEUE);
        let (lag_tx, lagged) = oneshot::channel();
        let done = CancellationToken::new();
        let taken = Arc::new(AtomicU64::new(0));
        let progress = taken.clone();
        if let Some(hub) = self.hub.clone() {
            let mut forwarder =
                Forwarder { hub, filter, tx, done: done.clone(), sent: last_event_id.as_deref().map(Arc::from) };
            tokio::spawn(async move {
                if let Err(Stop::Lagged) = forwarder.run(last_event_id).await {
                    tracing::info!(filter = ?forwarder.filter, "an event subscriber fell behind; dropped");
                    let _ = lag_tx.send(forwarder.sent.clone());
                    let Forwarder { done, tx, .. } = forwarder;
                    drop(tx);
                    let mut seen = progress.load(Ordering::Relaxed);
                    loop {
                        tokio::select! {
                            _ = done.cancelled() => break,
                            _ = tokio::time::sleep(LAG_GRACE) => {}
                        }
                        let now = progress.load(Ordering::Relaxed);
                        if now == seen {
                            if let Some(closer) = closer {
                                closer.cancel();
                            }
                            break;
                        }
                        seen = now;
                    }
                }
            });
        }
        Subscription { items, lagged, taken, done: done.drop_guard() }
    }
}

struct Forwarder {
    hub: Arc<Hub>,
    filter: Filter,
    tx: mpsc::Sender<Out>,
    done: CancellationToken,
    /// The id of the last event handed over.
    sent: Option<Arc<str>>,
}

impl Forwarder {
    async fn deliver(&mut self, out: Out) -> Result<(), Stop> {
        let id = match &out {
            Out::Event(e) => Some(e.event.id.clone()),
            _ => None,
        };
        match self.tx.send_timeout(out, SEND_TIMEOUT).await {
            Ok(()) => {
                self.sent = id.or(self.sent.take());
                Ok(())
            }
            Err(SendTimeoutError::Timeout(_)) => Err(Stop::Lagged),
            Err(SendTimeoutError::Closed(_)) => Err(Stop::Gone),
        }
    }

    async fn event(&mut self, event: Arc<Shared>) -> Result<(), Stop> {
        if self.filter.matches(&event.event) { self.deliver(Out::Event(event)).await } else { Ok(()) }
    }

    async fn run(&mut self, last_event_id: Option<String>) -> Result<(), Stop> {
        let attach = match last_event_id {
            None => self.hub.attach(None),
            Some(id) => match self.hub.attach(Some(&id)) {
                Some(attach) => Some(attach),
                None => self.catch_up(&id).await?,
            },
        };
        let Some(Attach { replay, mut live }) = attach else { return Err(Stop::Gone) };
        for event in replay {
            self.event(event).await?;
        }
        loop {
            let item = tokio::select! {
                _ = self.done.cancelled() => return Err(Stop::Gone),
                _ = self.hub.stop.cancelled() => return Err(Stop::Gone),
                item = live.recv() => item,
            };
            match item {
                Ok(Item::Event(event)) => self.event(event).await?,
                Ok(Item::Reset(reason)) => self.deliver(Out::Reset(reason)).await?,
                Err(RecvError::Lagged(_)) => return Err(Stop::Lagged),
                Err(RecvError::Closed) => return Err(Stop::Gone),
            }
        }
    }

    /// Reads the store's history after `id` until it reaches a change the shared feed holds,
    /// then joins the feed there. An id the store cannot resume from is answered `reset`.
    async fn catch_up(&mut self, id: &str) -> Result<Option<Attach>, Stop> {
        let opened = match change::parse_token(id) {
            Some(token) => change::open(&self.hub.database, Some(token)).await.map_err(|e| e.to_string()),
            None => Err("not an event id".to_owned()),
        };
        let mut stream = match opened {
            Ok(stream) => stream,
            Err(error) => {
                tracing::info!(%error, "an event subscriber's Last-Event-ID cannot be resumed; reset");
                let reason = "Last-Event-ID is too old to resume from (or not an event id); reload";
                self.deliver(Out::Reset(Arc::from(reason))).await?;
                return Ok(self.hub.attach(None));
            }
        };
        let mut dedupe = Dedupe::new(4096);
        // Caught up: the store had nothing more right away; from then on a change is new, and
        // the shared watcher is about to see it too.
        let mut caught_up = false;
        loop {
            let read = async { if caught_up { stream.next().await.transpose() } else { stream.next_if_any().await } };
            let next = tokio::select! {
                _ = self.done.cancelled() => return Err(Stop::Gone),
                _ = self.hub.stop.cancelled() => return Err(Stop::Gone),
                next = read => next,
            };
            let changed = match next {
                Ok(Some(changed)) => changed,
                Ok(None) if !caught_up => {
                    caught_up = true;
                    continue;
                }
                Ok(None) | Err(_) => {
                    self.deliver(Out::Reset(Arc::from("the store's change stream ended; reload"))).await?;
                    return Ok(self.hub.attach(None));
                }
            };
            let Some(change_id) = change::token_id(&changed.id) else { continue };
            if let Some(event) = change::to_event(&change_id, &changed).filter(|e| dedupe.is_new(e)) {
                self.event(Shared::new(event)).await?;
            }
            // The feed replays what came after this change, if it holds it (or soon will).
            if let Some(attach) = self.hub.attach(Some(&change_id)) {
                return Ok(Some(attach));
            }
            if caught_up
                && self.hub.wait_for(&change_id, JOIN_WAIT).await
                && let Some(attach) = self.hub.attach(Some(&change_id))
            {
                return Ok(Some(attach));
            }
        }
    }
}
