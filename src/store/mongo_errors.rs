//! How a MongoDB driver error reads to the gateway: "try again later" (`Unavailable`) or a real
//! failure (`Other`), whether it is a duplicate key, and the write concern every write uses.
//!
//! `Unavailable` is what a replica set says while it fails over, or a network says while it is
//! down: the same request succeeds later, against the new primary. The HTTP edge answers it with
//! 503 and `Retry-After`; dispatch, the relay and the reporter back off and try again. Everything
//! else (a refused document, a bad query) is `Other`: retrying it would fail the same way.

use std::time::Duration;

use mongodb::{
    error::{
        ErrorKind, RETRYABLE_ERROR, RETRYABLE_WRITE_ERROR, SYSTEM_OVERLOADED_ERROR, TRANSIENT_TRANSACTION_ERROR,
        WriteConcernError, WriteFailure,
    },
    options::{Acknowledgment, ClientOptions, WriteConcern},
};

use super::StoreError;

/// Server error codes that mean "not here, not now": the node is not (or no longer) the primary,
/// is shutting down or recovering, the network between the nodes failed, or a time limit ran out
/// (a write concern not satisfied in time is code 64).
const UNAVAILABLE_CODES: [(i32, &str); 16] = [
    (6, "HostUnreachable"),
    (7, "HostNotFound"),
    (50, "MaxTimeMSExpired"),
    (64, "WriteConcernFailed"),
    (89, "NetworkTimeout"),
    (91, "ShutdownInProgress"),
    (134, "ReadConcernMajorityNotAvailableYet"),
    (189, "PrimarySteppedDown"),
    (262, "ExceededTimeLimit"),
    (9001, "SocketException"),
    (10058, "LegacyNotPrimary"),
    (10107, "NotWritablePrimary"),
    (11600, "InterruptedAtShutdown"),
    (11602, "InterruptedDueToReplStateChange"),
    (13435, "NotPrimaryNoSecondaryOk"),
    (13436, "NotPrimaryOrSecondary"),
];

/// Labels the server or the driver put on errors worth retrying.
const UNAVAILABLE_LABELS: [&str; 4] =
    [RETRYABLE_WRITE_ERROR, TRANSIENT_TRANSACTION_ERROR, RETRYABLE_ERROR, SYSTEM_OVERLOADED_ERROR];

fn unavailable_code(code: i32) -> bool {
    UNAVAILABLE_CODES.iter().any(|(c, _)| *c == code)
}

/// A write concern error: a failover code, or the write concern's time limit (`wtimeout`).
fn unavailable_write_concern(e: &WriteConcernError) -> bool {
    let timed_out = e.details.as_ref().is_some_and(|d| d.get_bool("wtimeout").unwrap_or(false));
    timed_out || unavailable_code(e.code)
}

/// The verdict on an error's kind and labels (`labelled` answers "does it carry this label?").
fn is_unavailable(kind: &ErrorKind, labelled: impl Fn(&str) -> bool) -> bool {
    if UNAVAILABLE_LABELS.iter().any(|label| labelled(label)) {
        return true;
    }
    match kind {
        // No server to talk to, or the connection to it broke (the driver's network errors).
        ErrorKind::ServerSelection { .. }
        | ErrorKind::Io(_)
        | ErrorKind::ConnectionPoolCleared { .. }
        | ErrorKind::DnsResolve { .. } => true,
        ErrorKind::Command(c) => unavailable_code(c.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => unavailable_write_concern(w),
        ErrorKind::Write(WriteFailure::WriteError(w)) => unavailable_code(w.code),
        // A batch whose documents were all refused by a failover, or whose write concern failed:
        // the documents may or may not be there, so the whole batch is "try again" (a resubmit of
        // one that did land is an idempotent duplicate).
        ErrorKind::InsertMany(many) => {
            many.write_concern_error.as_ref().is_some_and(unavailable_write_concern)
                || many
                    .write_errors
                    .as_ref()
                    .is_some_and(|all| !all.is_empty() && all.iter().all(|w| unavailable_code(w.code)))
        }
        ErrorKind::BulkWrite(bulk) => bulk.write_concern_errors.iter().any(unavailable_write_concern),
        _ => false,
    }
}

/// Maps a driver error: a failover, a network failure or a time limit is `Unavailable` (try
/// again later); anything else is `Other`.
pub(crate) fn classify(e: mongodb::error::Error) -> StoreError {
    if is_unavailable(e.kind.as_ref(), |label| e.contains_label(label)) {
        StoreError::Unavailable(e.kind.to_string().chars().take(300).collect())
    } else {
        StoreError::Other(e.to_string().chars().take(300).collect())
    }
}

/// Whether the write reached a primary but its write concern failed (no majority in time):
/// the health probe's "no majority", as against "no primary".
pub(crate) fn is_write_concern_failure(e: &mongodb::error::Error) -> bool {
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteConcernError(_)) => true,
        ErrorKind::InsertMany(many) => many.write_concern_error.is_some(),
        ErrorKind::BulkWrite(bulk) => !bulk.write_concern_errors.is_empty(),
        ErrorKind::Command(c) => c.code == 64,
        _ => false,
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

/// Gives the client's write concern a time limit (`wtimeout`) unless the URI set one: a primary
/// that cannot reach a majority then answers "write concern timed out" (`Unavailable`) instead of
/// holding every write for ever. Without a `w` in the URI the durable write concern applies.
pub(crate) fn bound_writes(options: &mut ClientOptions, limit: Duration) {
    let concern = options.write_concern.get_or_insert_with(durable_write_concern);
    concern.w_timeout.get_or_insert(limit);
}

#[cfg(test)]
mod tests {
    use bson::{Document, doc};
    use mongodb::error::{BulkWriteError, Error, ErrorKind, WriteFailure};

    use super::*;

    fn parsed<T: serde::de::DeserializeOwned>(d: Document) -> T {
        bson::from_document(d).expect("a well-formed test document")
    }

    fn command(code: i32) -> Error {
        ErrorKind::Command(parsed(doc! {"code": code, "codeName": "X", "errmsg": "m"})).into()
    }

    fn write_concern(d: Document) -> Error {
        ErrorKind::Write(WriteFailure::WriteConcernError(parsed(d))).into()
    }

    fn unavailable(e: Error) -> bool {
        matches!(classify(e), StoreError::Unavailable(_))
    }

    #[test]
    fn failover_and_network_codes_are_unavailable() {
        for (code, name) in UNAVAILABLE_CODES {
            assert!(unavailable(command(code)), "{name} ({code})");
            let wce = write_concern(doc! {"code": code, "codeName": name, "errmsg": "m"});
            assert!(unavailable(wce), "write concern {name} ({code})");
        }
        for code in [10107, 13435, 13436, 189, 11602, 11600, 91, 6, 7, 89, 9001, 262, 50, 64] {
            assert!(unavailable(command(code)), "{code}");
        }
    }

    #[test]
    fn other_server_errors_are_not() {
        // Duplicate key, document validation, bad value, unauthorised, unsatisfiable write concern.
        for code in [11000, 121, 2, 13, 100, 9, 26] {
            assert!(!unavailable(command(code)), "{code}");
        }
        let write: Error =
            ErrorKind::Write(WriteFailure::WriteError(parsed(doc! {"code": 11000, "errmsg": "dup"}))).into();
        assert!(!unavailable(write));
    }

    #[test]
    fn a_write_concern_timeout_is_unavailable_whatever_its_code() {
        let wtimeout = doc! {"code": 64, "codeName": "WriteConcernFailed", "errmsg": "waiting for replication timed out",
        "errInfo": {"wtimeout": true}};
        assert!(unavailable(write_concern(wtimeout.clone())));
        let mut odd = wtimeout;
        odd.insert("code", 1);
        assert!(unavailable(write_concern(odd)));
        assert!(!unavailable(write_concern(doc! {"code": 100, "errmsg": "unsatisfiable"})));
    }

    #[test]
    fn batches_read_by_their_write_concern_error_or_all_their_write_errors() {
        let many = |d: Document| -> Error { ErrorKind::InsertMany(parsed(d)).into() };
        assert!(unavailable(many(
            doc! {"writeConcernError": {"code": 64, "errmsg": "m", "errInfo": {"wtimeout": true}}}
        )));
        assert!(unavailable(many(doc! {"writeErrors": [{"index": 0, "code": 10107, "errmsg": "m"}]})));
        let mixed = doc! {"writeErrors": [{"index": 0, "code": 10107, "errmsg": "m"}, {"index": 1, "code": 11000, "errmsg": "m"}]};
        assert!(!unavailable(many(mixed)));
        assert!(!unavailable(many(doc! {"writeErrors": [{"index": 0, "code": 11000, "errmsg": "m"}]})));

        let mut bulk = BulkWriteError::default();
        bulk.write_concern_errors.push(parsed(doc! {"code": 91, "errmsg": "m"}));
        assert!(unavailable(ErrorKind::BulkWrite(bulk).into()));
        assert!(!unavailable(ErrorKind::BulkWrite(BulkWriteError::default()).into()));
    }

    #[test]
    fn network_errors_and_unreachable_servers_are_unavailable() {
        let io = std::sync::Arc::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(unavailable(ErrorKind::Io(io).into()));
        let timeout = std::sync::Arc::new(std::io::Error::from(std::io::ErrorKind::TimedOut));
        assert!(unavailable(ErrorKind::Io(timeout).into()));
        // (ServerSelection and ConnectionPoolCleared cannot be built outside the driver.)
        assert!(!unavailable(Error::custom("not a driver failure")));
    }

    #[test]
    fn retryable_labels_are_unavailable() {
        let error = Error::custom("labelled");
        for label in [RETRYABLE_WRITE_ERROR, TRANSIENT_TRANSACTION_ERROR] {
            assert!(is_unavailable(&error.kind, |l| l == label), "{label}");
        }
        assert!(!is_unavailable(&error.kind, |_| false));
    }

    #[test]
    fn write_concern_failures_are_told_from_missing_primaries() {
        let wtimeout = doc! {"code": 64, "errmsg": "m", "errInfo": {"wtimeout": true}};
        assert!(is_write_concern_failure(&write_concern(wtimeout)));
        assert!(is_write_concern_failure(&command(64)));
        assert!(!is_write_concern_failure(&command(10107)));
    }

    #[test]
    fn writes_get_a_time_limit_unless_the_uri_set_one() {
        let mut options = ClientOptions::default();
        bound_writes(&mut options, Duration::from_secs(10));
        let concern = options.write_concern.expect("set");
        assert_eq!(
            (concern.w, concern.journal, concern.w_timeout),
            (Some(Acknowledgment::Majority), Some(true), Some(Duration::from_secs(10)))
        );

        let mut options = ClientOptions::default();
        options.write_concern = Some(WriteConcern::builder().w_timeout(Duration::from_secs(3)).build());
        bound_writes(&mut options, Duration::from_secs(10));
        assert_eq!(options.write_concern.and_then(|c| c.w_timeout), Some(Duration::from_secs(3)));
    }
}
