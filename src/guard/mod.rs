//! Keeps the gateway standing under more load than it can take: per-caller rate limits (429 +
//! `Retry-After`), load shedding before the intake queues up (503 + `Retry-After`), server
//! timeouts for slow headers and bodies, a request timeout and a cap on open connections.
//!
//! It decides who is let in and for how long; it does not authenticate (that is `auth`, whose
//! [`crate::auth::Caller`] it reads) and it never queues or stores anything itself.
//!
//! Where each piece sits: [`admit`] is a route layer inside the auth layer (rate limits and
//! shedding), [`deadlines`] wraps the whole router (body and request timeouts), and [`serve`]
//! is the server loop (header timeout, connection cap).

mod admission;
mod buckets;
mod deadlines;
mod server;
mod settings;

pub use admission::{Guard, Shed, admit};
pub use buckets::{BucketKey, Buckets};
pub use deadlines::deadlines;
pub use server::{CloseConnection, serve};
pub use settings::GuardSettings;
