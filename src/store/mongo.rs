//! [`MongoStore`]: the [`TaskStore`](super::TaskStore) on MongoDB (official driver), and its
//! connection set-up: timeouts, the journaled write concern, the TLS failure it remembers, the
//! server's clock. The transitions are in the `mongo_*` siblings (each one `findOneAndUpdate` or
//! `updateOne` whose filter holds the expected state; no multi-document transactions) and the
//! trait's methods in `mongo_trait`. It must not log variables or URIs.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use mongodb::{Collection, Database, error::ErrorKind, options::ClientOptions};

use super::{StoreError, TaskRecord, clock::ServerClock};
use crate::config::MongoSettings;

#[derive(Clone)]
pub struct MongoStore {
    tasks: Collection<TaskRecord>,
    database: Database,
    /// With TLS in the URI: the last server that failed a TLS handshake, and why (see `connect`).
    tls_failure: Arc<std::sync::Mutex<Option<String>>>,
    /// The server's clock as this replica estimates it (see `clock`).
    clock: Arc<ServerClock>,
}

pub use super::mongo_errors::durable_write_concern;
pub(crate) use super::mongo_errors::{classify, is_duplicate_key};

impl MongoStore {
    /// Connects lazily (the driver dials on first use) with bounded timeouts so an unreachable
    /// server answers within `settings.timeout` instead of the driver's 30 s default.
    pub async fn connect(settings: &MongoSettings) -> Result<Self, StoreError> {
        let mut options = ClientOptions::parse(settings.uri.expose())
            .await
            .map_err(|e| StoreError::Other(format!("MONGODB_URI is not a valid MongoDB URI: {}", e.kind)))?;
        options.server_selection_timeout = Some(settings.timeout);
        options.connect_timeout = Some(settings.timeout);
        options.max_pool_size = Some(settings.max_pool_size);
        // An `appName` in the URI wins: it names the replica in the server's logs and lets a
        // failpoint (`configureFailPoint` with `data.appName`) target one gateway.
        options.app_name.get_or_insert_with(|| "worker-api-gateway".into());
        // "200 means stored" must survive a crash of the server too: without a journaled write
        // concern an acknowledged write can sit in the server's log buffer and vanish with a
        // SIGKILL (seen with the test server: a claim acknowledged, then gone after the restart).
        // An explicit `w`/`journal` in the URI is the operator's choice and is kept. Every write
        // gets a time limit (`MONGODB_WRITE_TIMEOUT_MS`) unless the URI set `wtimeoutMS`.
        super::mongo_errors::bound_writes(&mut options, settings.write_timeout);
        // The driver's server-selection error only summarises why each server is unusable: keep
        // the failed TLS handshakes it sees, structured, to name the server and the reason.
        let tls_failure = Arc::new(std::sync::Mutex::new(None));
        if matches!(options.tls, Some(mongodb::options::Tls::Enabled(_))) {
            let slot = tls_failure.clone();
            options.sdam_event_handler = Some(mongodb::event::EventHandler::callback(move |event| {
                use mongodb::event::sdam::SdamEvent;
                // The latest heartbeat decides: a TLS failure is kept, anything else clears it.
                let failure = match event {
                    SdamEvent::ServerHeartbeatFailed(failed) => match failed.failure.kind.as_ref() {
                        ErrorKind::Io(io) => crate::tls::tls_cause(io.as_ref())
                            .map(|reason| format!("{}: TLS handshake failed: {reason}", failed.server_address)),
                        _ => None,
                    },
                    SdamEvent::ServerHeartbeatSucceeded(_) => None,
                    _ => return,
                };
                if let Ok(mut slot) = slot.lock() {
                    *slot = failure;
                }
            }));
        }
        let client = mongodb::Client::with_options(options).map_err(classify)?;
        Ok(Self { tls_failure, ..Self::new(client.database(&settings.database)) })
    }

    pub fn new(database: Database) -> Self {
        Self { tasks: database.collection("tasks"), database, tls_failure: Arc::default(), clock: Arc::default() }
    }

    /// `host:port: TLS handshake failed: reason` for the last server whose TLS handshake failed,
    /// when the URI asks for TLS: what a start-up failure should say.
    pub fn tls_failure(&self) -> Option<String> {
        self.tls_failure.lock().ok().and_then(|f| f.clone())
    }

    pub fn database(&self) -> &Database {
        &self.database
    }

    pub(super) fn tasks(&self) -> &Collection<TaskRecord> {
        &self.tasks
    }

    /// The server's clock as this replica estimates it.
    pub(super) fn clock(&self) -> &ServerClock {
        &self.clock
    }

    /// Measures the server's clock now (at start-up, before anything is stamped with it).
    pub async fn measure_clock(&self) -> Result<(), StoreError> {
        self.clock.measure(&self.database).await
    }

    /// The server's time, measured again if the last measurement is old: the bound of a sweep's
    /// index range (see `clock`).
    pub(super) async fn server_now(&self) -> Result<DateTime<Utc>, StoreError> {
        self.clock.fresh_now(&self.database).await
    }
}
