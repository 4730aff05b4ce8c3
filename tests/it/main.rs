//! All integration tests, one binary (faster to build and link). Each test spawns its own
//! gateway against the real RabbitMQ and MongoDB-wire servers.

mod alerts;
mod api;
mod auth;
mod bad_input;
mod binary;
mod bulkheads;
mod camunda;
mod camunda_outcomes;
#[path = "../common/mod.rs"]
mod common;
mod engine;
mod events;
mod failover;
mod guard;
mod helpers;
mod http2;
mod leaks;
mod lifecycle;
mod lost_messages;
mod metrics_format;
mod openapi_examples;
mod publishing;
mod report_age;
mod retention;
mod seed_workers;
mod shutdown;
mod store_clock;
mod tls;
mod tracing;
mod ui;
mod variables;
