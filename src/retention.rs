//! Retention: finished tasks do not stay for ever. A background sweep, in every replica, marks the
//! finished tasks of each topic whose retention has run out (`TASK_RETENTION_DAYS`, or the topic
//! file's `retention_days`) with an `expire_at` date, and the store's TTL index deletes them. The
//! sweep never deletes anything itself, and never marks a task whose report Camunda is still owed
//! (the store's rule, see `TaskStore::mark_expired`). Replicas sweeping at once only repeat the
//! same idempotent marks.

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use crate::{
    config::{ConfigError, Reader},
    store::{TaskStore, TopicScope},
    topics::Registry,
};

/// Tasks marked per store call; a sweep step repeats it up to [`ROUNDS`] times per scope, so the
/// first sweep over a long-kept collection spreads over several ticks instead of one huge write.
const BATCH: u32 = 1000;
const ROUNDS: usize = 20;

/// `TASK_RETENTION_DAYS` and the sweep's period.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetentionSettings {
    /// `TASK_RETENTION_DAYS` (30): days a finished task (succeeded, failed, cancelled) is kept
    /// after it completed; fractions allowed; 0 keeps finished tasks for ever (`None`). A topic
    /// file's `retention_days` overrides it.
    pub retention: Option<Duration>,
    /// `RETENTION_SWEEP_SECONDS` (60, fractions allowed): how often the sweep marks expired tasks.
    pub sweep_interval: Duration,
}

/// A number of days as a retention: `None` if it is not a finite number >= 0, `Some(None)` for 0
/// (keep for ever).
pub fn retention_from_days(days: f64) -> Option<Option<Duration>> {
    if !days.is_finite() || days < 0.0 {
        return None;
    }
    if days == 0.0 {
        return Some(None);
    }
    Duration::try_from_secs_f64(days * 86_400.0).ok().map(Some)
}

impl RetentionSettings {
    pub(crate) fn from_vars(vars: &std::collections::HashMap<String, String>) -> Result<Self, ConfigError> {
        let r = Reader(vars);
        let retention = r.parse_or("TASK_RETENTION_DAYS", Some(Duration::from_secs(30 * 86_400)), |s| {
            s.parse().ok().and_then(retention_from_days)
        })?;
        let sweep_interval = r.parse_or("RETENTION_SWEEP_SECONDS", Duration::from_secs(60), |s| {
            s.parse().ok().filter(|n: &f64| *n > 0.0).and_then(|n| Duration::try_from_secs_f64(n).ok())
        })?;
        Ok(Self { retention, sweep_interval })
    }
}

/// Which tasks keep how long: each topic with its own `retention_days`, then every other topic
/// (also those no longer served) with the default. Scopes kept for ever are left out.
pub fn plan(registry: &Registry, default: Option<Duration>) -> Vec<(TopicScope, Duration)> {
    let mut scopes = Vec::new();
    let mut own = Vec::new();
    for topic in registry.iter().filter(|t| t.spec.retention_days.is_some()) {
        own.push(topic.spec.name.clone());
        if let Some(keep) = topic.spec.retention(default) {
            scopes.push((TopicScope::Topic(topic.spec.name.clone()), keep));
        }
    }
    if let Some(keep) = default {
        scopes.push((TopicScope::AllBut(own), keep));
    }
    scopes
}

/// The background sweep.
pub struct RetentionSweep {
    pub store: Arc<dyn TaskStore>,
    pub registry: Registry,
    pub settings: RetentionSettings,
}

impl RetentionSweep {
    /// Sweeps every `sweep_interval` until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let scopes = plan(&self.registry, self.settings.retention);
        if scopes.is_empty() {
            tracing::info!("retention: finished tasks are kept for ever");
            return;
        }
        let mut tick = tokio::time::interval(self.settings.sweep_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            for (scope, keep) in &scopes {
                self.sweep(scope, *keep, &stop).await;
            }
        }
    }

    async fn sweep(&self, scope: &TopicScope, keep: Duration, stop: &CancellationToken) {
        let mut marked = 0;
        for _ in 0..ROUNDS {
            if stop.is_cancelled() {
                break;
            }
            match self.store.mark_expired(scope, keep, BATCH).await {
                Ok(n) => {
                    marked += n;
                    if n < u64::from(BATCH) {
                        break;
                    }
                }
                Err(error) => {
                    // Harmless: the next tick tries again; nothing expires early meanwhile.
                    tracing::warn!(%error, ?scope, "retention sweep failed");
                    break;
                }
            }
        }
        if marked > 0 {
            tracing::info!(marked, ?scope, retention_s = keep.as_secs_f64(), "finished tasks marked to expire");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_become_durations_and_zero_keeps_for_ever() {
        assert_eq!(retention_from_days(30.0), Some(Some(Duration::from_secs(30 * 86_400))));
        assert_eq!(retention_from_days(0.5), Some(Some(Duration::from_secs(43_200))));
        assert_eq!(retention_from_days(0.0), Some(None));
        assert_eq!(retention_from_days(-1.0), None);
        assert_eq!(retention_from_days(f64::NAN), None);
    }

    #[test]
    fn settings_default_to_thirty_days_and_name_a_bad_value() {
        let vars = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let s = RetentionSettings::from_vars(&vars(&[])).expect("defaults are valid");
        assert_eq!(s.retention, Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(s.sweep_interval, Duration::from_secs(60));
        let keep = RetentionSettings::from_vars(&vars(&[("TASK_RETENTION_DAYS", "0")])).expect("0 is valid");
        assert_eq!(keep.retention, None);
        let e = RetentionSettings::from_vars(&vars(&[("TASK_RETENTION_DAYS", "-2")])).err().map(|e| e.var);
        assert_eq!(e, Some("TASK_RETENTION_DAYS"));
        let e = RetentionSettings::from_vars(&vars(&[("RETENTION_SWEEP_SECONDS", "0")])).err().map(|e| e.var);
        assert_eq!(e, Some("RETENTION_SWEEP_SECONDS"));
    }
}
