//! How the consumer side retries and what it keeps: the time a queue may take to start being
//! consumed, the backoff between tries of a topic that cannot be consumed, and how long a
//! dead-letter record is kept. Read from the environment once; it decides nothing by itself.

use std::{collections::HashMap, time::Duration};

use crate::config::{ConfigError, Reader, positive_millis};

/// Consumer supervision and dead-letter retention settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConsumerPolicy {
    /// `RABBITMQ_CONSUME_TIMEOUT_MS` (30000): how long opening a topic's channel, declaring its
    /// queue and `basic.consume` may take before the topic counts as not consumable. Below
    /// RabbitMQ's own 65 s so the gateway gives up on a sick queue first.
    pub consume_timeout: Duration,
    /// `RABBITMQ_CONSUMER_RETRY_MIN_MS` (500): the first wait before a topic whose queue could
    /// not be consumed is tried again; doubles per failure.
    pub retry_min: Duration,
    /// `RABBITMQ_CONSUMER_RETRY_MAX_MS` (30000): the longest wait between tries (each wait is
    /// jittered between half and all of its step).
    pub retry_max: Duration,
    /// `DEAD_LETTER_RETENTION_DAYS` (14): how long a dead-letter record is kept (a TTL index
    /// removes it then).
    pub dead_letter_retention: Duration,
}

impl Default for ConsumerPolicy {
    fn default() -> Self {
        Self {
            consume_timeout: Duration::from_secs(30),
            retry_min: Duration::from_millis(500),
            retry_max: Duration::from_secs(30),
            dead_letter_retention: Duration::from_secs(14 * 86_400),
        }
    }
}

impl ConsumerPolicy {
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let r = Reader(vars);
        let d = Self::default();
        let consume_timeout = r.parse_or("RABBITMQ_CONSUME_TIMEOUT_MS", d.consume_timeout, positive_millis)?;
        let retry_min = r.parse_or("RABBITMQ_CONSUMER_RETRY_MIN_MS", d.retry_min, positive_millis)?;
        let retry_max = r.parse_or("RABBITMQ_CONSUMER_RETRY_MAX_MS", d.retry_max, positive_millis)?;
        if retry_max < retry_min {
            return Err(ConfigError {
                var: "RABBITMQ_CONSUMER_RETRY_MAX_MS",
                message: "must be at least RABBITMQ_CONSUMER_RETRY_MIN_MS".into(),
            });
        }
        // Whole days; at most ten years, so the expiry date stays representable.
        let dead_letter_retention = r.parse_or("DEAD_LETTER_RETENTION_DAYS", d.dead_letter_retention, |s| {
            s.parse::<u64>().ok().filter(|n| (1..=3650).contains(n)).map(|days| Duration::from_secs(days * 86_400))
        })?;
        Ok(Self { consume_timeout, retry_min, retry_max, dead_letter_retention })
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, time::Duration};

    use super::ConsumerPolicy;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn defaults_and_overrides_are_read_and_bad_values_name_their_variable() {
        assert_eq!(ConsumerPolicy::from_vars(&vars(&[])).ok(), Some(ConsumerPolicy::default()));
        let p = ConsumerPolicy::from_vars(&vars(&[("DEAD_LETTER_RETENTION_DAYS", "2")])).ok();
        assert_eq!(p.map(|p| p.dead_letter_retention), Some(Duration::from_secs(2 * 86_400)));
        let e = ConsumerPolicy::from_vars(&vars(&[("DEAD_LETTER_RETENTION_DAYS", "0")])).err();
        assert_eq!(e.map(|e| e.var), Some("DEAD_LETTER_RETENTION_DAYS"));
        let e = ConsumerPolicy::from_vars(&vars(&[("RABBITMQ_CONSUMER_RETRY_MAX_MS", "100")])).err();
        assert_eq!(e.map(|e| e.var), Some("RABBITMQ_CONSUMER_RETRY_MAX_MS"));
    }
}
