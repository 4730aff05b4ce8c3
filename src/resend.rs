//! The store re-sends what the broker lost. The broker is a cache of the store: a purged or
//! deleted queue, a dead-lettered message or an exhausted delivery limit leaves a task `queued`
//! (or `retrying` and due) in the store with no message anywhere. The relay calls
//! [`Resender::sweep`] on each pass; every so often it counts, per topic, the tasks that have
//! waited longer than `REPUBLISH_AFTER_SECONDS` by the store's clock without a delivery, asks
//! the broker how many messages the topic's queue still holds, and re-sends only what the queue
//! cannot explain on two looks in a row (see [`unexplained`]), at most `REPUBLISH_RATE` a second
//! per replica. A healthy
//! backlog (every waiting task has its message in the queue, consumers merely slow) is never
//! published again; a duplicate that slips through is harmless (the claim skips it).
//!
//! Must not: publish itself (a re-sent task owes its publish in the store, and the relay's take
//! sends it with the held/confirmed protocol), or re-send a task it re-sent within the bound.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::{
    broker::{Broker, QueueDepth},
    config::{ConfigError, Reader, positive},
    metrics::Metrics,
    store::{StaleCount, StoreError, TaskStore},
};

/// How often a replica may look for stale tasks while it finds nothing to re-send.
const CHECK_AT_MOST: Duration = Duration::from_secs(30);

/// When it did re-send something: soon again, until what the queue cannot explain is sent.
const CHECK_AGAIN: Duration = Duration::from_secs(1);

/// A look may take at most one part in this many of the time: the next one waits that much longer.
const LOOK_DUTY: u32 = 20;

/// `REPUBLISH_*`: when and how fast the store re-sends tasks whose messages the broker lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResendSettings {
    /// `REPUBLISH_AFTER_SECONDS` (120): how long a task may wait `queued` (or `retrying` and due)
    /// without a delivery before its message counts as possibly lost.
    pub after: Duration,
    /// `REPUBLISH_RATE` (200): most tasks one replica re-sends a second.
    pub rate: u32,
}

impl Default for ResendSettings {
    fn default() -> Self {
        Self { after: Duration::from_secs(120), rate: 200 }
    }
}

impl ResendSettings {
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let r = Reader(vars);
        let d = Self::default();
        let rate = |s: &str| s.parse::<u32>().ok().filter(|n| *n > 0);
        Ok(Self {
            after: Duration::from_secs(r.parse_or("REPUBLISH_AFTER_SECONDS", d.after.as_secs(), positive)?),
            rate: r.parse_or("REPUBLISH_RATE", d.rate, rate)?,
        })
    }

    /// How often stale tasks are looked for while none needs re-sending: a fifth of the bound,
    /// between 1 s and [`CHECK_AT_MOST`], so a lost message waits at most about 1.2 bounds.
    pub fn check_every(&self) -> Duration {
        (self.after / 5).clamp(CHECK_AGAIN, CHECK_AT_MOST)
    }
}

/// How many of a topic's stale tasks the queue cannot explain: every stale task beyond the
/// queue's ready messages has no message left (messages of young tasks, duplicates and earlier
/// re-sends only make the queue look fuller, so this errs towards too few, never towards doubling
/// a backlog). Tasks re-sent within the bound are not counted again.
///
/// Consumers' unacked messages are not counted as explaining anything: a delivery of a waiting
/// task is claimed (and the task leaves `queued`) within a claim's round trip, so a stale task's
/// message is unacked only for that moment, which a second look a second later rules out (see
/// [`Resender::sweep`]). Counting each consumer's whole prefetch instead would hide up to that
/// many lost tasks per consumer for ever.
pub fn unexplained(count: &StaleCount, depth: QueueDepth) -> u64 {
    let missing = count.stale.saturating_sub(depth.ready);
    missing.min(count.stale.saturating_sub(count.recently_resent))
}

/// Looks for tasks the broker lost and makes their publish owed again; cheap to clone.
#[derive(Clone)]
pub struct Resender {
    store: Arc<dyn TaskStore>,
    broker: Arc<dyn Broker>,
    /// The registered topics (queues of other topics are not ours to judge).
    topics: Arc<Vec<String>>,
    settings: ResendSettings,
    metrics: Metrics,
    state: Arc<Mutex<Looks>>,
}

#[derive(Debug)]
struct Looks {
    /// Not before this does the next look happen.
    next: Instant,
    /// What the last look found unexplained, per topic: a re-send needs two looks in a row.
    last: HashMap<String, u64>,
}

impl Resender {
    pub fn new(
        store: Arc<dyn TaskStore>,
        broker: Arc<dyn Broker>,
        topics: impl IntoIterator<Item = String>,
        settings: ResendSettings,
        metrics: Metrics,
    ) -> Self {
        let topics = Arc::new(topics.into_iter().collect());
        let state = Arc::new(Mutex::new(Looks { next: Instant::now(), last: HashMap::new() }));
        Self { store, broker, topics, settings, metrics, state }
    }

    /// Called on every relay pass: when it is time, looks for what the broker lost and re-sends
    /// it. A topic's tasks are re-sent only when two looks in a row (a second apart) find more
    /// stale tasks than its queue holds, and then no more than both found. Returns how many tasks
    /// now owe their publish again (the relay's take that follows sends them). A failure is
    /// logged, never passed on: the relay's own work goes ahead regardless.
    pub async fn sweep(&self) -> u64 {
        let last = match self.state.lock() {
            Ok(state) if Instant::now() >= state.next => state.last.clone(),
            _ => return 0,
        };
        let started = Instant::now();
        let (sent, found) = match self.look(&last).await {
            Ok(looked) => looked,
            Err(error) => {
                tracing::warn!(%error, "looking for tasks the broker lost failed");
                (0, HashMap::new())
            }
        };
        let wait = if found.is_empty() { self.settings.check_every() } else { CHECK_AGAIN };
        // A look costs the store in proportion to the waiting backlog (on the test server about
        // 130 µs a waiting task): it never takes more than a twentieth of the time.
        let wait = wait.max(started.elapsed() * LOOK_DUTY);
        if let Ok(mut state) = self.state.lock() {
            *state = Looks { next: Instant::now() + wait, last: found };
        }
        sent
    }

    /// One look: (tasks re-sent, what each topic's queue could not explain).
    async fn look(&self, last: &HashMap<String, u64>) -> Result<(u64, HashMap<String, u64>), StoreError> {
        let mut found = HashMap::new();
        if !self.broker.is_connected() {
            return Ok((0, found));
        }
        // The queues first, then the store: what consumers take in between leaves the store's
        // count smaller, never the queue's, so the difference errs low.
        let mut depths = HashMap::new();
        for topic in self.topics.iter() {
            // Without the broker's view a lost message cannot be told from a slow backlog.
            if let Some(depth) = self.broker.queue_depth(topic).await {
                depths.insert(topic.as_str(), depth);
            }
        }
        let after = self.settings.after;
        let mut budget = u64::from(self.settings.rate);
        let mut sent = 0;
        for count in self.store.count_stale(after).await? {
            let Some(&depth) = depths.get(count.topic.as_str()) else { continue };
            let missing = unexplained(&count, depth);
            if missing == 0 {
                continue;
            }
            found.insert(count.topic.clone(), missing);
            let wanted = missing.min(last.get(&count.topic).copied().unwrap_or(0)).min(budget);
            if wanted == 0 {
                continue;
            }
            let limit = u32::try_from(wanted).unwrap_or(u32::MAX);
            let marked = self.store.republish_stale(&count.topic, after, limit).await?;
            tracing::warn!(
                topic = %count.topic,
                stale = count.stale,
                ready = depth.ready,
                consumers = depth.consumers,
                resent = marked,
                "re-sending tasks whose messages the broker no longer holds"
            );
            self.metrics.republished(&count.topic, marked);
            budget = budget.saturating_sub(marked);
            sent += marked;
        }
        Ok((sent, found))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stale(stale: u64, recently_resent: u64) -> StaleCount {
        StaleCount { topic: "t".into(), stale, recently_resent }
    }

    fn queue(ready: u64, consumers: u32) -> QueueDepth {
        QueueDepth { ready, consumers }
    }

    #[test]
    fn a_healthy_backlog_is_not_sent_again() {
        assert_eq!(unexplained(&stale(1000, 0), queue(1000, 0)), 0);
        assert_eq!(unexplained(&stale(1000, 0), queue(1500, 1)), 0, "young tasks' messages too");
    }

    #[test]
    fn what_the_queue_cannot_explain_is_sent() {
        assert_eq!(unexplained(&stale(1000, 0), queue(0, 0)), 1000, "a purged queue");
        assert_eq!(unexplained(&stale(30, 0), queue(0, 1)), 30, "a consumer's prefetch explains nothing");
        assert_eq!(unexplained(&stale(1000, 0), queue(300, 2)), 700);
    }

    #[test]
    fn a_re_send_is_not_repeated_within_the_bound() {
        // 200 were re-sent and sit in the queue: the other 800 are sent, those 200 not again.
        assert_eq!(unexplained(&stale(1000, 200), queue(200, 0)), 800);
        // Everything re-sent and still queued (no consumers yet): nothing more.
        assert_eq!(unexplained(&stale(1000, 1000), queue(1000, 0)), 0);
        assert_eq!(unexplained(&stale(1000, 1000), queue(0, 0)), 0, "re-sent ones wait for the bound");
    }

    #[test]
    fn settings_default_and_bound_the_check_period() {
        let d = ResendSettings::from_vars(&HashMap::new()).expect("defaults parse");
        assert_eq!(d, ResendSettings::default());
        assert!(d.after <= Duration::from_secs(300));
        assert_eq!(d.check_every(), Duration::from_secs(24));
        let quick = ResendSettings { after: Duration::from_secs(2), rate: 1 };
        assert_eq!(quick.check_every(), Duration::from_secs(1));
        let vars = HashMap::from([("REPUBLISH_RATE".to_string(), "0".to_string())]);
        assert!(ResendSettings::from_vars(&vars).is_err(), "a zero rate would never re-send");
    }
}
