//! The aggregate behind `GET /tasks/statistics`, cached. Counting every task is a scan of the whole
//! collection; done per request it costs a million-task store a million reads each time. Here a
//! request answers from the last aggregate (its age shown) and, once that is older than
//! `STATISTICS_MAX_AGE_SECONDS`, starts one refresh in the background. The first count starts
//! with the process ([`StatisticsCache::warm`]); a request that comes before it ends waits for
//! it, sharing the one scan. With a maximum age of 0 every request counts afresh (single-flight),
//! as before the cache.
//!
//! The scan's cost grows with the store, so its frequency shrinks with it: a refresh waits at
//! least [`DUTY`] times as long as the last count took (on the test server a 200 000-task count
//! takes about half a minute, so such a store is counted every few minutes, and the scans never
//! take more than a tenth of the store's time, however often the dashboard asks).

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};

use crate::{
    config::{ConfigError, Reader},
    store::{Statistics, StoreError, TaskStore},
};

/// A refresh waits at least this many times as long as the last count took.
const DUTY: u32 = 10;

/// `STATISTICS_MAX_AGE_SECONDS`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StatisticsSettings {
    /// `STATISTICS_MAX_AGE_SECONDS` (10, fractions allowed): age past which the cached statistics
    /// are refreshed in the background (answers meanwhile show the older figures and their age);
    /// 0 counts afresh for every request.
    pub max_age: Duration,
}

impl StatisticsSettings {
    pub(crate) fn from_vars(vars: &std::collections::HashMap<String, String>) -> Result<Self, ConfigError> {
        let max_age = Reader(vars).parse_or("STATISTICS_MAX_AGE_SECONDS", Duration::from_secs(10), |s| {
            s.parse().ok().filter(|n: &f64| *n >= 0.0).and_then(|n| Duration::try_from_secs_f64(n).ok())
        })?;
        Ok(Self { max_age })
    }
}

/// Statistics as counted at `computed_at` (the store's clock, when the count began).
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub stats: Statistics,
    pub computed_at: DateTime<Utc>,
    started: Instant,
    /// When the count ended: the age that decides a refresh runs from here, so a count slower
    /// than the maximum age is not started again the moment it ends.
    finished: Instant,
}

impl Snapshot {
    /// Whether it is time to count again: older than `max_age`, and at least [`DUTY`] counts'
    /// durations since this one ended.
    fn due(&self, max_age: Duration) -> bool {
        let took = self.finished.saturating_duration_since(self.started);
        self.finished.elapsed() > max_age.max(took * DUTY)
    }

    /// Seconds since the count began.
    pub fn age_seconds(&self, now: DateTime<Utc>) -> f64 {
        ((now - self.computed_at).num_milliseconds().max(0) as f64) / 1000.0
    }
}

#[derive(Default)]
struct State {
    current: Option<Arc<Snapshot>>,
    refreshing: bool,
}

/// Cheap to clone (shared).
#[derive(Clone)]
pub struct StatisticsCache {
    store: Arc<dyn TaskStore>,
    max_age: Duration,
    state: Arc<Mutex<State>>,
    /// Held by whoever counts while no snapshot exists (and for every count with max age 0), so
    /// that concurrent first requests share one scan.
    first: Arc<tokio::sync::Mutex<()>>,
}

impl StatisticsCache {
    pub fn new(store: Arc<dyn TaskStore>, settings: StatisticsSettings) -> Self {
        Self { store, max_age: settings.max_age, state: Arc::default(), first: Arc::default() }
    }

    fn current(&self) -> Option<Arc<Snapshot>> {
        self.state.lock().ok().and_then(|s| s.current.clone())
    }

    /// The statistics to answer with now.
    pub async fn get(&self) -> Result<Arc<Snapshot>, StoreError> {
        if self.max_age.is_zero() {
            return self.count_shared(false).await;
        }
        match self.current() {
            Some(snapshot) => {
                if snapshot.due(self.max_age) {
                    self.refresh_in_background();
                }
                Ok(snapshot)
            }
            None => self.count_shared(true).await,
        }
    }

    /// Starts the first count now, in the background, so that requests find figures sooner; one
    /// that comes before it ends waits for it (not a second scan).
    pub fn warm(&self) {
        if self.max_age.is_zero() {
            return;
        }
        let cache = self.clone();
        tokio::spawn(async move {
            if let Err(error) = cache.count_shared(true).await {
                tracing::warn!(%error, "statistics not counted at start; the first request counts");
            }
        });
    }

    /// Counts, one caller at a time; a caller that waited its turn takes the count made meanwhile
    /// if it began after the caller asked (or, with `any`, whatever exists by then).
    async fn count_shared(&self, any: bool) -> Result<Arc<Snapshot>, StoreError> {
        let asked = Instant::now();
        let _turn = self.first.lock().await;
        if let Some(snapshot) = self.current()
            && (any || snapshot.started >= asked)
        {
            return Ok(snapshot);
        }
        self.count().await
    }

    async fn count(&self) -> Result<Arc<Snapshot>, StoreError> {
        let (computed_at, started) = (self.store.now(), Instant::now());
        let stats = self.store.statistics().await?;
        let snapshot = Arc::new(Snapshot { stats, computed_at, started, finished: Instant::now() });
        if let Ok(mut state) = self.state.lock() {
            state.current = Some(snapshot.clone());
        }
        Ok(snapshot)
    }

    /// Starts one refresh unless one is running; a failed refresh keeps the old figures.
    fn refresh_in_background(&self) {
        let Ok(mut state) = self.state.lock() else { return };
        if state.refreshing {
            return;
        }
        state.refreshing = true;
        drop(state);
        let cache = self.clone();
        tokio::spawn(async move {
            if let Err(error) = cache.count().await {
                tracing::warn!(%error, "statistics not refreshed; the older figures stay");
            }
            if let Ok(mut state) = cache.state.lock() {
                state.refreshing = false;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot whose count took `took` and ended `ago`.
    fn counted(took: u64, ago: u64) -> Snapshot {
        let now = Instant::now();
        let finished = now.checked_sub(Duration::from_secs(ago)).expect("the machine has been up longer");
        let started = finished.checked_sub(Duration::from_secs(took)).expect("the machine has been up longer");
        Snapshot { stats: Statistics::default(), computed_at: Utc::now(), started, finished }
    }

    #[test]
    fn a_quick_count_is_refreshed_after_the_maximum_age() {
        let max_age = Duration::from_secs(10);
        assert!(!counted(1, 5).due(max_age));
        assert!(counted(1, 11).due(max_age));
    }

    #[test]
    fn a_slow_count_is_refreshed_only_after_ten_times_its_duration() {
        let max_age = Duration::from_secs(10);
        assert!(!counted(30, 100).due(max_age), "a 30 s scan every 130 s would be a quarter of the store's time");
        assert!(!counted(30, 299).due(max_age));
        assert!(counted(30, 301).due(max_age));
    }
}
