//! `EVENTS_*` and `STATUS_WAIT_MAX_SECONDS`: how much of the event history a process keeps, how
//! far a subscriber may fall behind, how often an idle stream is kept alive, how long a status
//! request may wait.

use std::{collections::HashMap, time::Duration};

use crate::config::{ConfigError, Reader, positive, positive_usize};

#[derive(Debug, Clone)]
pub struct EventsSettings {
    /// `EVENTS_RING_SIZE` (10000): recent events kept in memory, so a client reconnecting with
    /// `Last-Event-ID` is answered from memory; an older id is resumed from the store.
    pub ring_size: usize,
    /// `EVENTS_LAG_LIMIT` (1024): events a subscriber may fall behind the live stream before it
    /// is told `lagged` and dropped (the shared channel's capacity; memory shared by all).
    pub lag_limit: usize,
    /// `EVENTS_KEEP_ALIVE_SECONDS` (15): a `: keep-alive` comment on an idle stream this often.
    pub keep_alive: Duration,
    /// `STATUS_WAIT_MAX_SECONDS` (60): the most `GET /tasks/{id}/status?wait=` may wait.
    pub status_wait_max: Duration,
}

impl Default for EventsSettings {
    fn default() -> Self {
        Self {
            ring_size: 10_000,
            lag_limit: 1024,
            keep_alive: Duration::from_secs(15),
            status_wait_max: Duration::from_secs(60),
        }
    }
}

impl EventsSettings {
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let r = Reader(vars);
        let d = Self::default();
        Ok(Self {
            ring_size: r.parse_or("EVENTS_RING_SIZE", d.ring_size, positive_usize)?,
            lag_limit: r.parse_or("EVENTS_LAG_LIMIT", d.lag_limit, positive_usize)?,
            keep_alive: Duration::from_secs(r.parse_or("EVENTS_KEEP_ALIVE_SECONDS", 15, positive)?),
            status_wait_max: Duration::from_secs(r.parse_or("STATUS_WAIT_MAX_SECONDS", 60, |s| s.parse().ok())?),
        })
    }
}
