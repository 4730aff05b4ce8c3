//! The store's write health: can it commit a majority write now? A `ping` answers from any
//! reachable node, so a primary cut off from its secondaries (or no primary at all) would look
//! healthy while every submit waits out its write timeout. A probe therefore upserts one tiny
//! document into `gateway_health` with the majority write concern and the write timeout, every
//! few seconds, and keeps the verdict for `/health` to show without touching the store itself.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use bson::{Document, doc};
use mongodb::{Database, options::WriteConcern};
use tokio_util::sync::CancellationToken;

use super::{StoreError, mongo_errors};

/// The probe's collection: one document per deployment, overwritten on every probe.
pub const HEALTH_COLLECTION: &str = "gateway_health";
/// How often the probe writes. A verdict is at most this old plus one write timeout.
pub const PROBE_EVERY: Duration = Duration::from_secs(5);
/// Allowed beyond the write timeout for server selection and the round trip, so a server that
/// does not answer at all (frozen, partitioned) is judged too.
const ANSWER_SLACK: Duration = Duration::from_secs(5);

/// What the last probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteHealth {
    /// No probe has finished yet (the first runs at start-up).
    Unknown,
    /// A majority write committed.
    Up,
    /// The write reached a primary but not a majority within the write timeout.
    NoMajority,
    /// No primary took the write (failover, network, no answer in time, or refused).
    Down,
}

impl WriteHealth {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Up => "up",
            Self::NoMajority => "no_majority",
            Self::Down => "down",
        }
    }

    /// Whether writes are known to fail: `/health` is then unhealthy.
    pub fn failing(self) -> bool {
        matches!(self, Self::NoMajority | Self::Down)
    }
}

/// The cached verdict, shared by the probe loop and the health route.
#[derive(Clone)]
pub struct StoreHealth {
    verdict: Arc<Mutex<WriteHealth>>,
}

impl Default for StoreHealth {
    fn default() -> Self {
        Self { verdict: Arc::new(Mutex::new(WriteHealth::Unknown)) }
    }
}

impl StoreHealth {
    /// Starts the probe loop on `database` (until `stop`); the first probe runs at once.
    pub fn start(database: Database, write_timeout: Duration, stop: CancellationToken) -> Self {
        let health = Self::default();
        tokio::spawn(health.clone().probe_loop(database, write_timeout, stop));
        health
    }

    pub fn writes(&self) -> WriteHealth {
        self.verdict.lock().map(|v| *v).unwrap_or(WriteHealth::Unknown)
    }

    fn record(&self, verdict: WriteHealth, error: Option<&StoreError>) {
        let Ok(mut slot) = self.verdict.lock() else { return };
        let before = std::mem::replace(&mut *slot, verdict);
        drop(slot);
        if before == verdict {
            return;
        }
        match error {
            Some(error) => tracing::warn!(%error, writes = verdict.as_str(), "the store cannot commit majority writes"),
            None => tracing::info!(writes = verdict.as_str(), "the store commits majority writes"),
        }
    }

    async fn probe_loop(self, database: Database, write_timeout: Duration, stop: CancellationToken) {
        let probes = database.collection::<Document>(HEALTH_COLLECTION);
        // Majority and journaled whatever the URI says, with the write timeout: the question is
        // whether a durable write can commit, not whether this client's own writes are acked.
        let mut concern: WriteConcern = mongo_errors::durable_write_concern();
        concern.w_timeout = Some(write_timeout);
        let mut tick = tokio::time::interval(PROBE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let write = probes
                .update_one(doc! {"_id": "probe"}, doc! {"$currentDate": {"at": true}, "$inc": {"probes": 1_i64}})
                .upsert(true)
                .write_concern(concern.clone());
            let outcome = tokio::select! {
                _ = stop.cancelled() => return,
                outcome = tokio::time::timeout(write_timeout + ANSWER_SLACK, write) => outcome,
            };
            match outcome {
                Ok(Ok(_)) => self.record(WriteHealth::Up, None),
                Ok(Err(e)) => {
                    let verdict = if mongo_errors::is_write_concern_failure(&e) {
                        WriteHealth::NoMajority
                    } else {
                        WriteHealth::Down
                    };
                    self.record(verdict, Some(&mongo_errors::classify(e)));
                }
                Err(_) => {
                    let error = StoreError::Unavailable(format!("no answer within {:?}", write_timeout + ANSWER_SLACK));
                    self.record(WriteHealth::Down, Some(&error));
                }
            }
        }
    }
}
