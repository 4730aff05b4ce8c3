//! The report gauges: how many reports are owed to Camunda, how many were given up, and how old
//! the oldest owed one is. Counted by the store through its report index, at most every few
//! seconds (the relay's sweep calls in every tick; a scrape never triggers a count), so their
//! cost is bounded by the backlog of owed reports and never by the collection.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::{metrics::Metrics, store::TaskStore};

/// How often the gauges are counted at most.
const EVERY: Duration = Duration::from_secs(5);

pub struct ReportGauges {
    store: Arc<dyn TaskStore>,
    metrics: Metrics,
    /// When the gauges were last counted.
    counted: Mutex<Option<Instant>>,
}

impl ReportGauges {
    pub fn new(store: Arc<dyn TaskStore>, metrics: Metrics) -> Self {
        Self { store, metrics, counted: Mutex::new(None) }
    }

    /// Counts into the gauges unless they were counted less than [`EVERY`] ago.
    pub async fn count_if_due(&self) {
        let due = match self.counted.lock() {
            Ok(mut at) if at.is_none_or(|t| t.elapsed() >= EVERY) => {
                *at = Some(Instant::now());
                true
            }
            _ => false,
        };
        if !due {
            return;
        }
        match self.store.report_counts().await {
            Ok(g) => {
                // Ages on the store's clock, which stamped the completion.
                let oldest = g.oldest_owed.map(|at| (self.store.now() - at).num_milliseconds().max(0) as f64 / 1000.0);
                self.metrics.camunda_report_states(g.owed, g.failed, oldest.unwrap_or(0.0));
            }
            Err(error) => tracing::warn!(%error, "could not count the reports owed to Camunda"),
        }
    }
}
