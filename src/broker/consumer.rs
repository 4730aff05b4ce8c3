//! The consuming side: one connection shared by the topic consumers (never the publisher's), its
//! supervisor, which declares the exchanges on every connect and reconnects with backoff after a
//! loss, the board of every consumer's state (for `/health` and the gauges), and the shutdown:
//! stop consuming, let the deliveries in hand finish (at most the grace period) so they can be
//! acked, then close every channel before its connection.

use std::{
    collections::BTreeMap,
    sync::{Arc, OnceLock, RwLock},
    time::Duration,
};

use chrono::Utc;
use futures::StreamExt;
use lapin::{Channel, Connection};
use tokio::sync::watch;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{
    ConsumerPolicy, ConsumerState, ConsumerStates,
    connection::{Backoff, Endpoint, close_in_order},
    topic::TopicConsumer,
    topology::Topology,
};
use crate::metrics::Metrics;

/// The state key (and metric label) of the dead-letter queue's consumer.
pub(super) const DEAD_LETTERS: &str = "_dead_letters";

/// What every topic supervisor shares.
pub(super) struct Ctx {
    pub(super) endpoint: Arc<Endpoint>,
    pub(super) topology: Topology,
    pub(super) policy: ConsumerPolicy,
    pub(super) board: Arc<Board>,
    /// Every delivery being handled, so shutdown can wait for them.
    pub(super) tracker: TaskTracker,
    pub(super) stop: CancellationToken,
}

impl Ctx {
    /// Sleeps `wait`; false if shutdown began meanwhile.
    pub(super) async fn pause(&self, wait: Duration) -> bool {
        tokio::select! {
            _ = self.stop.cancelled() => false,
            _ = tokio::time::sleep(wait) => true,
        }
    }
}

/// What a topic supervisor hands back at shutdown: the channel its unsettled deliveries still
/// need, and its own connection if it was isolated on one.
pub(super) struct Leftovers {
    pub(super) channel: Option<Channel>,
    pub(super) own: Option<Arc<Connection>>,
}

/// Every consumer's state, and the gauges that mirror it.
#[derive(Default)]
pub(super) struct Board {
    states: RwLock<BTreeMap<String, ConsumerState>>,
    metrics: OnceLock<Metrics>,
}

impl Board {
    pub(super) fn attach(&self, metrics: Metrics) {
        let _ = self.metrics.set(metrics);
    }

    fn with(&self, name: &str, change: impl FnOnce(&mut ConsumerState)) {
        if let Ok(mut states) = self.states.write() {
            let state = states.entry(name.to_owned()).or_insert_with(|| ConsumerState {
                consuming: false,
                error: Some("not started yet".into()),
                since: Utc::now(),
                restarts: 0,
            });
            change(state);
        }
    }

    pub(super) fn register(&self, name: &str) {
        self.with(name, |_| {});
        if let Some(m) = self.metrics.get() {
            m.topic_consuming(name, false);
        }
    }

    pub(super) fn up(&self, name: &str) {
        self.with(name, |s| {
            *s = ConsumerState { consuming: true, error: None, since: Utc::now(), restarts: s.restarts };
        });
        if let Some(m) = self.metrics.get() {
            m.topic_consuming(name, true);
        }
    }

    /// The consumer stopped, or failed to start, for `error`; it will be started again.
    pub(super) fn down(&self, name: &str, error: &str) {
        self.with(name, |s| {
            if s.consuming {
                s.since = Utc::now();
            }
            s.consuming = false;
            s.error = Some(error.chars().take(300).collect());
            s.restarts += 1;
        });
        if let Some(m) = self.metrics.get() {
            m.topic_consuming(name, false);
            m.consumer_restarted(name);
        }
    }

    pub(super) fn snapshot(&self) -> ConsumerStates {
        let states = self.states.read().map(|s| s.clone()).unwrap_or_default();
        let mut out = ConsumerStates::default();
        for (name, state) in states {
            if name == DEAD_LETTERS {
                out.dead_letters = Some(state);
            } else {
                out.topics.push((name, state));
            }
        }
        out
    }
}

/// Runs every consumer until `ctx.stop`, then drains and closes. Returns at once when there is
/// nothing to consume (an API-only process).
pub(super) async fn run(ctx: Arc<Ctx>, consumers: Vec<TopicConsumer>, grace: Duration) {
    if consumers.is_empty() {
        return;
    }
    let (shared_tx, shared_rx) = watch::channel::<Option<Arc<Connection>>>(None);
    let topics: Vec<_> =
        consumers.into_iter().map(|c| tokio::spawn(c.supervise(ctx.clone(), shared_rx.clone()))).collect();
    drop(shared_rx);
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let mut last = None;
    while !ctx.stop.is_cancelled() {
        match shared_session(&ctx, &shared_tx, &mut backoff).await {
            Ok(conn) => {
                last = Some(conn);
                break;
            }
            Err(error) => tracing::warn!(%error, side = "consumers", "rabbitmq connection lost"),
        }
        let _ = shared_tx.send(None);
        if !ctx.pause(backoff.next_wait()).await {
            break;
        }
    }
    // Shutdown: each topic has cancelled its consumer and hands back its channel.
    let mut leftovers = Vec::new();
    for topic in topics {
        if let Ok(left) = topic.await {
            leftovers.push(left);
        }
    }
    ctx.tracker.close();
    if tokio::time::timeout(grace, ctx.tracker.wait()).await.is_err() {
        tracing::warn!("shutdown grace period over with handlers still running; their messages return to the queue");
    }
    let (isolated, on_shared): (Vec<_>, Vec<_>) = leftovers.into_iter().partition(|l| l.own.is_some());
    for left in isolated {
        close_in_order(left.own.as_deref(), left.channel).await;
    }
    close_in_order(last.as_deref(), on_shared.into_iter().filter_map(|l| l.channel)).await;
}

/// One life of the shared connection: connect, declare the exchanges and the dead-letter queue,
/// offer the connection to the topics, and watch it. `Ok` with the connection at shutdown (the
/// caller closes it after the drain), `Err` when it was lost.
async fn shared_session(
    ctx: &Ctx,
    shared: &watch::Sender<Option<Arc<Connection>>>,
    backoff: &mut Backoff,
) -> Result<Arc<Connection>, String> {
    let conn = ctx.endpoint.connect("worker-api-gateway consumers").await.map_err(|f| f.message)?;
    let mut events = conn.events_listener();
    let setup = conn.create_channel().await.map_err(|e| e.to_string())?;
    ctx.topology.declare_base(&setup).await.map_err(|e| e.to_string())?;
    let _ = setup.close(200, "declared".into()).await;
    let conn = Arc::new(conn);
    let _ = shared.send(Some(conn.clone()));
    backoff.reset();
    tracing::info!("rabbitmq consumer connection up");
    loop {
        tokio::select! {
            _ = ctx.stop.cancelled() => return Ok(conn),
            event = events.next() => match event {
                // A channel's error (one topic's queue) reaches the connection's events too; the
                // topic's own supervisor deals with it. Only a lost connection ends the session.
                Some(lapin::Event::Error(e)) if !conn.status().connected() => return Err(e.to_string()),
                Some(_) => {}
                None => return Err("connection event stream ended".into()),
            },
        }
    }
}
