//! The fault-injection suite: the gateway binary runs as a child process against the real
//! RabbitMQ, MongoDB-wire server and stand-ins for Camunda and a topic handler; each test submits
//! tasks, injects one fault, waits for quiescence and sorts every acknowledged task into lost,
//! duplicated or ok (see `docs/reliability.md`).
//!
//! The faults hit the shared services, so the tests take one global lock and run one at a time,
//! and every test leaves the services up, even when it fails ([`services::Lab`]). This binary must
//! not run at the same time as `tests/it` (cargo runs test binaries one after another).
//!
//! Size: `FAULTS_N` tasks per scenario (default 200), `FAULTS_SLOW_N` on the slow topic (default
//! 1000). The full run: `FAULTS_N=1000 FAULTS_SLOW_N=10000 cargo test --test faults`.

mod camunda_standin;
mod checker;
#[path = "../common/mod.rs"]
mod common;
mod gateway;
mod mongo_server;
mod recorder;
mod services;

mod broker_faults;
mod camunda_faults;
mod crash_faults;
mod failover_faults;
mod handler_faults;
mod replica_faults;
mod schema_fuzz;
mod store_faults;
mod submit_races;
