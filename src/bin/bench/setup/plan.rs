//! What one benchmark invocation is asked to do: the phases to run and the counts and durations
//! of each, in a full and a smoke size. Plain values; nothing here touches a service.

use std::time::Duration;

/// Counts and durations of one invocation.
#[derive(Debug, Clone)]
pub struct Plan {
    pub smoke: bool,
    pub runs: usize,
    /// Length of the RabbitMQ limit measurement (the MongoDB ones last as long as the wrk load).
    pub limit_duration: Duration,
    /// Concurrent `insert_one` loops, besides 1 (the gateway's pool is 10 connections; SecantusDB
    /// gets slower, not faster, with many).
    pub mongo_single_concurrency: usize,
    /// Concurrent `insert_many` loops of [`BATCH`] documents (and 1, the limit is the better).
    pub mongo_batch_concurrency: usize,
    /// Publishes awaiting their confirm at once.
    pub publish_window: usize,
    /// The overload phase offers this many times the measured submit throughput, open loop.
    pub overload_factor: f64,
    /// Requests the overload phase's client has in flight at most (one connection each).
    pub overload_in_flight: usize,
    /// wrk connections at peak load (the issue asks for at least 64); half load uses half.
    pub wrk_connections: u32,
    pub wrk_threads: u32,
    pub wrk_duration_s: u64,
    /// Unmeasured load before the peak measurement (connection pools, allocator).
    pub wrk_warmup_s: u64,
    /// Concurrent HTTP clients for fixed-count submissions.
    pub submit_concurrency: usize,
    pub e2e_tasks: usize,
    pub memory_tasks: usize,
    /// The phases to run (`--phases`); all of them by default.
    pub phases: Vec<Phase>,
    /// Tasks in the small and the large store of the statistics phase (`--stats-tasks` sets the
    /// large one).
    pub stats_small: usize,
    pub stats_large: usize,
}

/// The parts of a run, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Limits,
    Submit,
    Overload,
    Queued,
    EndToEnd,
    InFlight,
    /// Insert cost of the secondary indexes.
    Indexes,
    /// Statistics latency over a small and a large store: only when `--phases` names it.
    Statistics,
}

impl Phase {
    /// The default phases (not [`Phase::Statistics`]: filling its large store takes minutes).
    pub const ALL: [Phase; 7] = [
        Phase::Limits,
        Phase::Indexes,
        Phase::Submit,
        Phase::Overload,
        Phase::Queued,
        Phase::EndToEnd,
        Phase::InFlight,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Phase::Limits => "limits",
            Phase::Submit => "submit",
            Phase::Overload => "overload",
            Phase::Queued => "queued",
            Phase::EndToEnd => "e2e",
            Phase::InFlight => "inflight",
            Phase::Indexes => "indexes",
            Phase::Statistics => "statistics",
        }
    }

    pub fn parse(name: &str) -> Option<Phase> {
        Phase::ALL.into_iter().chain([Phase::Statistics]).find(|p| p.name() == name)
    }
}

/// Documents per `insert_many` in the batched raw limit.
pub const BATCH: usize = 100;

impl Plan {
    pub fn full() -> Self {
        Self {
            smoke: false,
            runs: 1,
            limit_duration: Duration::from_secs(5),
            mongo_single_concurrency: 4,
            mongo_batch_concurrency: 2,
            publish_window: 1000,
            overload_factor: 3.0,
            // Past SHED_BACKLOG (128), so the shedding bound is what holds, not this client.
            overload_in_flight: 512,
            wrk_connections: 64,
            wrk_threads: 2,
            wrk_duration_s: 20,
            wrk_warmup_s: 3,
            submit_concurrency: 64,
            e2e_tasks: 5000,
            memory_tasks: 10_000,
            phases: Phase::ALL.to_vec(),
            stats_small: 2_000,
            stats_large: 200_000,
        }
    }

    pub fn smoke() -> Self {
        Self {
            smoke: true,
            limit_duration: Duration::from_secs(1),
            wrk_duration_s: 3,
            // Each wrk phase ends with requests cut off, which can stall the gateway for a while
            // (see load::settle); one phase fewer keeps the smoke run short.
            wrk_warmup_s: 0,
            e2e_tasks: 200,
            memory_tasks: 200,
            ..Self::full()
        }
    }
}
