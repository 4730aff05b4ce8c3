//! Keeps the gateway standing under more load than it can take: per-caller rate limits (429 +
//! `Retry-After`), load shedding before the intake queues up (503 + `Retry-After`), server
//! timeouts for slow headers and bodies, a request timeout and a cap on open connections.

mod settings;

pub use settings::GuardSettings;
