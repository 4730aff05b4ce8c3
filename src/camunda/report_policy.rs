//! How long and how often an owed report to Camunda is sent again after Camunda could not take
//! it (5xx, network): backoff doubling from an initial wait to a cap, then re-sent at the cap
//! until the report reaches its maximum age, and only then given up (`report_failed`, re-sendable
//! by hand). A report never stops being tried just because it was tried many times: only its age
//! counts, so an outage of any length shorter than the maximum age loses no outcome. It decides;
//! it never talks to Camunda or the store.

use std::{collections::HashMap, time::Duration};

use crate::{
    config::{ConfigError, Reader, positive_millis},
    store::ReportOutcome,
};

/// Re-send settings for owed reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReportPolicy {
    /// `CAMUNDA_REPORT_BACKOFF_INITIAL_MS` (1000): wait after the first failed send; doubles with
    /// each further failed send.
    pub backoff_initial: Duration,
    /// `CAMUNDA_REPORT_BACKOFF_MAX_MS` (300000, 5 min): the longest wait between sends; reached
    /// after about nine sends, then every send waits this long.
    pub backoff_max: Duration,
    /// `CAMUNDA_REPORT_MAX_AGE_HOURS` (24; fractions allowed): how long after the task's completion
    /// (or its latest re-send by hand) a report is still re-sent; after that it is `report_failed`.
    pub max_age: Duration,
}

impl Default for ReportPolicy {
    fn default() -> Self {
        Self {
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            max_age: Duration::from_secs(24 * 3600),
        }
    }
}

impl ReportPolicy {
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let r = Reader(vars);
        let d = Self::default();
        let backoff_initial = r.parse_or("CAMUNDA_REPORT_BACKOFF_INITIAL_MS", d.backoff_initial, positive_millis)?;
        let backoff_max = r.parse_or("CAMUNDA_REPORT_BACKOFF_MAX_MS", d.backoff_max, positive_millis)?;
        if backoff_max < backoff_initial {
            return Err(ConfigError {
                var: "CAMUNDA_REPORT_BACKOFF_MAX_MS",
                message: "must be at least CAMUNDA_REPORT_BACKOFF_INITIAL_MS".into(),
            });
        }
        // Hours, as operators think of it; a fraction lets a test use seconds.
        let max_age = r.parse_or("CAMUNDA_REPORT_MAX_AGE_HOURS", d.max_age, |s| {
            let hours = s.parse::<f64>().ok().filter(|h| h.is_finite() && *h > 0.0 && *h <= 24.0 * 365.0)?;
            Some(Duration::from_secs_f64(hours * 3600.0))
        })?;
        Ok(Self { backoff_initial, backoff_max, max_age })
    }

    /// The wait after `sends` failed sends: the initial wait doubled per further send, capped.
    pub fn backoff(&self, sends: u32) -> Duration {
        let doublings = sends.saturating_sub(1).min(30);
        self.backoff_initial.saturating_mul(1 << doublings).min(self.backoff_max)
    }

    /// What becomes of a report whose send number `sends` failed with `error` (retryable), when
    /// the report is `age` old: sent again after the backoff, but never later than its maximum
    /// age (so the last try falls at that age, not up to a cap after it); given up once that age
    /// is reached.
    pub fn after_failure(&self, sends: u32, age: Duration, error: &str) -> ReportOutcome {
        if age >= self.max_age {
            return ReportOutcome::Failed {
                error: format!("gave up after {sends} sends over {} hours: {error}", hours(age)),
            };
        }
        ReportOutcome::Retry { error: error.to_owned(), after: self.backoff(sends).min(self.max_age - age) }
    }
}

/// Hours, rounded to three decimals and printed without trailing zeros (24, 0.002).
fn hours(age: Duration) -> f64 {
    (age.as_secs_f64() / 3.6).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> ReportPolicy {
        ReportPolicy::default()
    }

    #[test]
    fn the_backoff_doubles_to_the_cap_and_stays_there() {
        let p = policy();
        let waits: Vec<u64> = (1..=12).map(|n| p.backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(p.backoff(10_000), Duration::from_secs(300));
    }

    #[test]
    fn a_report_is_re_sent_after_many_sends_while_younger_than_its_maximum_age() {
        let outcome = policy().after_failure(500, Duration::from_secs(23 * 3600), "500 boom");
        assert_eq!(outcome, ReportOutcome::Retry { error: "500 boom".into(), after: Duration::from_secs(300) });
    }

    #[test]
    fn the_last_send_falls_at_the_maximum_age() {
        let age = Duration::from_secs(24 * 3600 - 10);
        let outcome = policy().after_failure(300, age, "boom");
        assert_eq!(outcome, ReportOutcome::Retry { error: "boom".into(), after: Duration::from_secs(10) });
    }

    #[test]
    fn a_report_is_given_up_at_its_maximum_age_saying_how_many_sends_over_how_long() {
        let outcome = policy().after_failure(301, Duration::from_secs(24 * 3600 + 1), "500 boom");
        assert_eq!(outcome, ReportOutcome::Failed { error: "gave up after 301 sends over 24 hours: 500 boom".into() });
    }

    #[test]
    fn settings_are_read_and_checked() {
        let vars = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert_eq!(ReportPolicy::from_vars(&HashMap::new()).ok(), Some(policy()));
        let small = ReportPolicy::from_vars(&vars(&[
            ("CAMUNDA_REPORT_BACKOFF_INITIAL_MS", "50"),
            ("CAMUNDA_REPORT_BACKOFF_MAX_MS", "200"),
            ("CAMUNDA_REPORT_MAX_AGE_HOURS", "0.002"),
        ]))
        .expect("valid");
        assert_eq!(small.max_age, Duration::from_millis(7200));
        assert_eq!(small.backoff(5), Duration::from_millis(200));
        for bad in [("CAMUNDA_REPORT_MAX_AGE_HOURS", "0"), ("CAMUNDA_REPORT_BACKOFF_MAX_MS", "10")] {
            let e = ReportPolicy::from_vars(&vars(&[bad])).expect_err("refused");
            assert_eq!(e.var, bad.0);
        }
    }
}
