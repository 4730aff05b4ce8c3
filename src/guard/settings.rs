//! The guard's settings (rate limits, shedding bounds, server timeouts, connection cap). The
//! defaults, and why, are in `.env.gateway.example` ("Limits and load shedding").

use std::{collections::HashMap, time::Duration};

use crate::{
    auth::Rate,
    config::{ConfigError, Reader, positive, positive_usize},
};

#[derive(Debug, Clone)]
pub struct GuardSettings {
    /// `RATE_LIMIT_PER_SECOND` (1000) and `RATE_LIMIT_BURST` (2000): the rate of a key that has
    /// none of its own in the key file.
    pub key_rate: Rate,
    /// `ANONYMOUS_RATE_PER_SECOND` (10000) and `ANONYMOUS_RATE_BURST` (20000): the rate of each
    /// client address calling without a key (an IPv6 address counts by its /64).
    pub anonymous_rate: Rate,
    /// `RATE_LIMIT_MAX_BUCKETS` (65536): callers tracked at once; idle ones are forgotten first,
    /// and beyond the cap newcomers share one bucket at the anonymous rate.
    pub max_buckets: usize,
    /// `SHED_BACKLOG` (128): submissions admitted and not yet answered; one more is shed (503).
    pub shed_backlog: usize,
    /// `SHED_STORE_LATENCY_MS` (500): when the store's recent batch time (an average of the
    /// intake's batches) is above this, a submit is shed once a full batch is already waiting.
    pub shed_store_latency: Duration,
    /// `HEADER_READ_TIMEOUT_SECONDS` (10): a connection that has not sent a request's headers in
    /// this time (also an idle keep-alive connection) is closed.
    pub header_read_timeout: Duration,
    /// `BODY_READ_TIMEOUT_SECONDS` (15): a request whose body has not arrived in this time, from
    /// its headers on, is answered 408.
    pub body_read_timeout: Duration,
    /// `REQUEST_TIMEOUT_SECONDS` (25): a request not answered in this time is answered 503.
    pub request_timeout: Duration,
    /// `MAX_CONNECTIONS` (1024): open connections at once; more wait in the listen queue.
    pub max_connections: usize,
}

impl Default for GuardSettings {
    fn default() -> Self {
        Self {
            key_rate: Rate { per_second: 1000.0, burst: 2000 },
            anonymous_rate: Rate { per_second: 10_000.0, burst: 20_000 },
            max_buckets: 65_536,
            shed_backlog: 128,
            shed_store_latency: Duration::from_millis(500),
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(15),
            request_timeout: Duration::from_secs(25),
            max_connections: 1024,
        }
    }
}

fn per_second(s: &str) -> Option<f64> {
    s.parse::<f64>().ok().filter(|r| r.is_finite() && *r > 0.0)
}

fn burst(s: &str) -> Option<u32> {
    s.parse::<u32>().ok().filter(|b| *b > 0)
}

impl GuardSettings {
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let r = Reader(vars);
        let d = Self::default();
        let seconds = |var, default: Duration| r.parse_or(var, default.as_secs(), positive).map(Duration::from_secs);
        Ok(Self {
            key_rate: Rate {
                per_second: r.parse_or("RATE_LIMIT_PER_SECOND", d.key_rate.per_second, per_second)?,
                burst: r.parse_or("RATE_LIMIT_BURST", d.key_rate.burst, burst)?,
            },
            anonymous_rate: Rate {
                per_second: r.parse_or("ANONYMOUS_RATE_PER_SECOND", d.anonymous_rate.per_second, per_second)?,
                burst: r.parse_or("ANONYMOUS_RATE_BURST", d.anonymous_rate.burst, burst)?,
            },
            max_buckets: r.parse_or("RATE_LIMIT_MAX_BUCKETS", d.max_buckets, positive_usize)?,
            shed_backlog: r.parse_or("SHED_BACKLOG", d.shed_backlog, positive_usize)?,
            shed_store_latency: Duration::from_millis(r.parse_or(
                "SHED_STORE_LATENCY_MS",
                d.shed_store_latency.as_millis() as u64,
                positive,
            )?),
            header_read_timeout: seconds("HEADER_READ_TIMEOUT_SECONDS", d.header_read_timeout)?,
            body_read_timeout: seconds("BODY_READ_TIMEOUT_SECONDS", d.body_read_timeout)?,
            request_timeout: seconds("REQUEST_TIMEOUT_SECONDS", d.request_timeout)?,
            max_connections: r.parse_or("MAX_CONNECTIONS", d.max_connections, positive_usize)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_hold_without_variables_and_values_are_read_when_given() {
        let s = GuardSettings::from_vars(&HashMap::new()).expect("defaults are valid");
        assert_eq!(s.shed_backlog, 128);
        assert_eq!(s.anonymous_rate, Rate { per_second: 10_000.0, burst: 20_000 });
        let s = GuardSettings::from_vars(&vars(&[
            ("ANONYMOUS_RATE_PER_SECOND", "0.5"),
            ("ANONYMOUS_RATE_BURST", "2"),
            ("SHED_STORE_LATENCY_MS", "40"),
            ("MAX_CONNECTIONS", "3"),
        ]))
        .expect("valid");
        assert_eq!(s.anonymous_rate, Rate { per_second: 0.5, burst: 2 });
        assert_eq!(s.shed_store_latency, Duration::from_millis(40));
        assert_eq!(s.max_connections, 3);
    }

    #[test]
    fn a_bad_value_names_its_variable() {
        for (var, value) in [
            ("RATE_LIMIT_PER_SECOND", "0"),
            ("ANONYMOUS_RATE_BURST", "-1"),
            ("SHED_BACKLOG", "none"),
            ("HEADER_READ_TIMEOUT_SECONDS", "0"),
            ("MAX_CONNECTIONS", "0"),
        ] {
            let err = GuardSettings::from_vars(&vars(&[(var, value)])).err().map(|e| e.var);
            assert_eq!(err, Some(var), "{var}={value}");
        }
    }
}
