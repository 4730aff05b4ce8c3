//! The store's clock. Replicas may disagree about the time; the task store may not. Every
//! decision about a task's fate (is it due, has its lease run out, may it be claimed) is taken by
//! the server against its own `$$NOW` inside the update that acts on it (see
//! `mongo_docs::Change::guarded`). What a replica still needs a time for — the range bound that
//! lets a sweep use an index before the server decides, the creation time it stamps on a new
//! task, the due time of a publish debt — comes from this estimate of the server's clock, never
//! from the replica's own.
//!
//! The estimate is the offset between the server's `hello.localTime` and this process's clock,
//! taken at the midpoint of the round trip (so it is off by at most half a round trip), measured
//! again once it is older than [`MAX_AGE`].

use std::{
    sync::{
        Mutex,
        atomic::{AtomicI64, Ordering},
    },
    time::{Duration, Instant},
};

use bson::doc;
use chrono::{DateTime, Utc};
use mongodb::Database;

use super::StoreError;

/// How long a measured offset is trusted. Clocks drift by microseconds a second; a jump (an NTP
/// step, a test's `faketime`) is picked up within this.
const MAX_AGE: Duration = Duration::from_secs(10);

/// Slack added to the estimate where it bounds an index range whose candidates the server then
/// judges exactly: larger than any error of the estimate, small enough to fetch few extra.
pub const RANGE_SLACK: chrono::Duration = chrono::Duration::seconds(2);

#[derive(Debug, Default)]
pub struct ServerClock {
    /// Server time minus local time, in milliseconds.
    offset_ms: AtomicI64,
    measured: Mutex<Option<Instant>>,
}

impl ServerClock {
    /// The server's time as last measured (the local clock until the first measurement).
    pub fn now(&self) -> DateTime<Utc> {
        Utc::now() + chrono::Duration::milliseconds(self.offset_ms.load(Ordering::Relaxed))
    }

    /// The server's time, measured again first if the last measurement is too old.
    pub async fn fresh_now(&self, database: &Database) -> Result<DateTime<Utc>, StoreError> {
        let stale = self.measured.lock().map(|m| m.is_none_or(|at| at.elapsed() > MAX_AGE)).unwrap_or(true);
        if stale {
            self.measure(database).await?;
        }
        Ok(self.now())
    }

    /// Asks the server for its time and keeps the offset. Concurrent callers may both measure;
    /// either answer is as good.
    pub async fn measure(&self, database: &Database) -> Result<(), StoreError> {
        let asked = Utc::now();
        let started = Instant::now();
        let reply = database.run_command(doc! {"hello": 1}).await.map_err(super::mongo::classify)?;
        let round_trip = started.elapsed();
        let server = reply
            .get_datetime("localTime")
            .map_err(|e| StoreError::Other(format!("hello answered without localTime: {e}")))?
            .to_chrono();
        let midpoint = asked + chrono::Duration::from_std(round_trip / 2).unwrap_or_default();
        let offset = (server - midpoint).num_milliseconds();
        let previous = self.offset_ms.swap(offset, Ordering::Relaxed);
        if (offset - previous).abs() > 1_000 {
            tracing::info!(offset_ms = offset, previous_ms = previous, "store clock offset changed");
        }
        if let Ok(mut measured) = self.measured.lock() {
            *measured = Some(Instant::now());
        }
        Ok(())
    }
}
