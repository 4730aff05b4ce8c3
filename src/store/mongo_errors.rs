//! How a MongoDB driver error reads to the gateway: "try again later" (`Unavailable`) or a real
//! failure (`Other`), whether it is a duplicate key, and the write concern every write uses.

use mongodb::{
    error::{ErrorKind, WriteFailure},
    options::{Acknowledgment, WriteConcern},
};

use super::StoreError;

/// Maps a driver error: anything that says "the server is not reachable" becomes `Unavailable`.
pub(crate) fn classify(e: mongodb::error::Error) -> StoreError {
    match e.kind.as_ref() {
        ErrorKind::ServerSelection { .. } | ErrorKind::Io(_) | ErrorKind::ConnectionPoolCleared { .. } => {
            StoreError::Unavailable(e.kind.to_string().chars().take(300).collect())
        }
        _ => StoreError::Other(e.to_string().chars().take(300).collect()),
    }
}

pub(crate) fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == 11000,
        ErrorKind::Command(c) => c.code == 11000,
        _ => false,
    }
}

/// Acknowledged by a majority and written to the journal: the gateway's writes are few and
/// batched, so the journal flush is paid per batch, not per task.
pub fn durable_write_concern() -> WriteConcern {
    WriteConcern::builder().w(Acknowledgment::Majority).journal(true).build()
}
