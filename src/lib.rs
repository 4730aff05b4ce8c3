//! worker-api-gateway: a Camunda 7 external-task gateway. Tasks are stored durably in MongoDB,
//! dispatched through RabbitMQ to the handler registered for their topic, retried with backoff,
//! and inspectable over HTTP. `main.rs` only wires tracing, config and [`startup::Application`].

pub mod auth;
pub mod batch;
pub mod broker;
pub mod camunda;
pub mod config;
pub mod dispatch;
pub mod domain;
pub mod events;
pub mod guard;
pub mod http;
pub mod intake;
pub mod metrics;
pub mod relay;
pub mod resend;
pub mod retention;
pub mod startup;
pub mod statistics;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod topics;
pub mod trace;
