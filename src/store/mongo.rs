//! [`TaskStore`] on MongoDB (official driver). Each transition is one `findOneAndUpdate` or
//! `updateOne` whose filter holds the expected state; no multi-document transactions. It must not
//! log variables or URIs.

use std::{collections::HashMap, sync::Arc, time::Duration};

use async_trait::async_trait;
use bson::{Document, doc};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use mongodb::{
    Collection, Database,
    error::ErrorKind,
    options::{ClientOptions, ReturnDocument},
};

use super::{
    AttemptOutcome, Finish, Finished, InsertOutcome, ListQuery, NewTask, ReportOutcome, Statistics, StoreError,
    TaskRecord, TaskSource, TaskStore, TransitionError,
};
use super::{
    clock::{RANGE_SLACK, ServerClock},
    mongo_change::{Change, due},
    mongo_docs::{MAX_STEPS, bdate, claim_change, claim_guard, finish_docs, new_record, transition_docs},
};
use crate::{
    config::MongoSettings,
    domain::{Event, TaskStatus},
    topics::ProcessingStep,
};

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
    /// Inserts one record; a duplicate id is an idempotent resubmit or a conflict.
    async fn insert_record(&self, record: TaskRecord) -> Result<InsertOutcome, StoreError> {
        match self.tasks.insert_one(&record).await {
            Ok(_) => Ok(InsertOutcome::Created(Box::new(record))),
            Err(e) if is_duplicate_key(&e) => self.compare_existing(&record).await,
            Err(e) => Err(classify(e)),
        }
    }

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

    /// Measures the server's clock now (at start-up, before anything is stamped with it).
    pub async fn measure_clock(&self) -> Result<(), StoreError> {
        self.clock.measure(&self.database).await
    }

    /// The server's time, measured again if the last measurement is old: the bound of a sweep's
    /// index range (see `clock`).
    pub(super) async fn server_now(&self) -> Result<DateTime<Utc>, StoreError> {
        self.clock.fresh_now(&self.database).await
    }

    async fn transition(
        &self,
        task_id: &str,
        event: Event,
        extra_filter: Document,
        change: Change,
    ) -> Result<Option<TaskRecord>, StoreError> {
        let (filter, change) = transition_docs(doc! {"_id": task_id}, event, extra_filter, change);
        self.tasks
            .find_one_and_update(filter, change.pipeline())
            .return_document(ReturnDocument::After)
            .await
            .map_err(classify)
    }

    /// A transition that applies only where `guard` holds by the server's clock: the task as
    /// changed, or `None` when the filter or the guard ruled it out.
    pub(super) async fn transition_guarded(
        &self,
        task_id: &str,
        event: Event,
        extra_filter: Document,
        change: Change,
        guard: Document,
    ) -> Result<Option<TaskRecord>, StoreError> {
        let token = bson::oid::ObjectId::new().to_hex();
        let change = change.set("change_token", token.as_str());
        let (filter, change) = transition_docs(doc! {"_id": task_id}, event, extra_filter, change);
        let found = self
            .tasks
            .clone_with_type::<Document>()
            .find_one_and_update(filter, change.guarded(guard))
            .return_document(ReturnDocument::After)
            .await
            .map_err(classify)?;
        match found {
            Some(doc) if doc.get_str("change_token").ok() == Some(token.as_str()) => {
                bson::from_document(doc).map(Some).map_err(|e| StoreError::Other(e.to_string()))
            }
            _ => Ok(None),
        }
    }

    /// Takes a processing task back from an attempt that will not finish (its lease ran out by
    /// the server's clock): retrying (due now) while attempts remain, failed otherwise. `filter`
    /// pins the attempt being taken back.
    async fn take_back_expired(&self, task: &TaskRecord, filter: Document, reason: &str) -> Result<bool, StoreError> {
        let (event, change) = if task.attempts >= task.max_attempts {
            let change = Change::new()
                .set("error_message", format!("{reason}; no attempts remain"))
                .now("completed_at")
                .now("camunda.report_due_at")
                .unset("lease_until");
            (Event::FailFinal, change)
        } else {
            (Event::LeaseExpired, back_to_retrying(reason))
        };
        let guard = due("lease_until");
        Ok(self.transition_guarded(&task.task_id, event, filter, change, guard).await?.is_some())
    }

    /// The id exists: an idempotent resubmit if the body matches, a conflict otherwise.
    async fn compare_existing(&self, record: &TaskRecord) -> Result<InsertOutcome, StoreError> {
        let existing = self
            .get(&record.task_id)
            .await?
            .ok_or_else(|| StoreError::Other("duplicate key, yet no task with that id".into()))?;
        Ok(if existing.fingerprint == record.fingerprint {
            InsertOutcome::Existing(Box::new(existing))
        } else {
            InsertOutcome::Conflict(Box::new(existing))
        })
    }

    /// Explains a refused user transition: unknown id, or the state it is in.
    async fn refusal(&self, task_id: &str) -> TransitionError {
        match self.get(task_id).await {
            Ok(Some(task)) => TransitionError::WrongState(task.status),
            Ok(None) => TransitionError::NotFound,
            Err(e) => TransitionError::Store(e),
        }
    }
}

/// Retrying, due now by the server's clock, for an attempt that ended without an outcome.
fn back_to_retrying(reason: &str) -> Change {
    Change::new()
        .set("error_message", reason)
        .now("next_attempt_at")
        .now("publish_due_at")
        .inc("retries", 1)
        .unset("lease_until")
}

/// Appends one audit record (the last 50 kept), stamped with the store's clock.
fn audit(change: Change, action: &str, by: &str, at: DateTime<Utc>) -> Change {
    let entry = bson::bson!([{"action": action, "by": by, "at": bdate(at)}]);
    change.push("audit", entry, 50)
}

#[async_trait]
impl TaskStore for MongoStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.database.run_command(doc! {"ping": 1}).await.map(|_| ()).map_err(classify)
    }

    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    #[tracing::instrument(skip_all, fields(task_id = %task.submission.task_id))]
    async fn insert_refused(&self, task: NewTask, reason: &str) -> Result<InsertOutcome, StoreError> {
        let now = bdate(self.clock.now());
        let mut record = new_record(task, now);
        record.status = TaskStatus::Failed;
        record.error_message = Some(reason.to_owned());
        record.error_code = Some("validation".to_owned());
        record.completed_at = Some(now);
        record.publish_due_at = None;
        // Owed to Camunda like any final outcome (report mode only; otherwise never looked at).
        record.camunda.report_due_at = Some(now);
        self.insert_record(record).await
    }

    async fn insert(&self, task: NewTask) -> Result<InsertOutcome, StoreError> {
        self.insert_record(new_record(task, bdate(self.clock.now()))).await
    }

    async fn insert_batch(
        &self,
        tasks: Vec<NewTask>,
        created_at: DateTime<Utc>,
    ) -> Vec<Result<InsertOutcome, StoreError>> {
        let now = bdate(created_at);
        let records: Vec<TaskRecord> = tasks.into_iter().map(|t| new_record(t, now)).collect();
        // Unordered: one duplicate does not stop the others; each failure comes back with its index.
        let failed: HashMap<usize, (i32, String)> = match self.tasks.insert_many(&records).ordered(false).await {
            Ok(_) => HashMap::new(),
            Err(e) => match e.kind.as_ref() {
                ErrorKind::InsertMany(many) if many.write_concern_error.is_none() => {
                    many.write_errors.iter().flatten().map(|w| (w.index, (w.code, w.message.clone()))).collect()
                }
                // Nothing is known of any document: every request gets the error.
                _ => {
                    let error = classify(e);
                    return records.iter().map(|_| Err(error.clone())).collect();
                }
            },
        };
        let mut outcomes = Vec::with_capacity(records.len());
        for (i, record) in records.into_iter().enumerate() {
            outcomes.push(match failed.get(&i) {
                None => Ok(InsertOutcome::Created(Box::new(record))),
                Some((11000, _)) => self.compare_existing(&record).await,
                Some((code, message)) => Err(StoreError::Other(format!(
                    "insert refused ({code}): {}",
                    message.chars().take(200).collect::<String>()
                ))),
            });
        }
        outcomes
    }

    async fn owe_publishes(
        &self,
        debt_id: &str,
        created: std::ops::Range<DateTime<Utc>>,
        due_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.owe_publishes_impl(debt_id, created, due_at).await
    }

    async fn settle_publishes(&self, debt_id: &str) -> Result<(), StoreError> {
        self.settle_publishes_impl(debt_id).await
    }

    async fn pass_on_due_debts(&self, limit: u32) -> Result<u64, StoreError> {
        self.pass_on_due_debts_impl(limit).await
    }

    async fn publish_confirmed_many(
        &self,
        task_ids: &[String],
        held: std::ops::RangeInclusive<DateTime<Utc>>,
    ) -> Result<(), StoreError> {
        let held = doc! {"publish_due_at": {"$gte": bdate(*held.start()), "$lte": bdate(*held.end())}};
        self.update_among(task_ids, &held, doc! {"$unset": {"publish_due_at": ""}}).await?;
        Ok(())
    }

    async fn get(&self, task_id: &str) -> Result<Option<TaskRecord>, StoreError> {
        self.tasks.find_one(doc! {"_id": task_id}).await.map_err(classify)
    }

    async fn take_due_publishes(&self, hold: Duration, limit: u32) -> Result<Vec<TaskRecord>, StoreError> {
        self.take_due_publishes_impl(hold, limit).await
    }

    #[tracing::instrument(skip_all, fields(task_id))]
    async fn claim(&self, task_id: &str, lease: Duration) -> Result<Option<TaskRecord>, StoreError> {
        let token = bson::oid::ObjectId::new().to_hex();
        self.transition_guarded(task_id, Event::Claim, doc! {}, claim_change(lease, &token), claim_guard()).await
    }

    async fn claim_batch(&self, task_ids: Vec<String>, lease: Duration) -> Result<Vec<TaskRecord>, StoreError> {
        self.claim_batch_impl(task_ids, lease).await
    }

    async fn keep_publish_owed(&self, task_id: &str) -> Result<(), StoreError> {
        // The message a relay sends when the retry falls due: the one in hand came early (a
        // duplicate, or a publish another replica took before the store says it was due).
        let filter = doc! {"_id": task_id, "status": "retrying", "publish_due_at": {"$exists": false}};
        let change = Change::new().copy("publish_due_at", "next_attempt_at");
        self.tasks.update_one(filter, change.pipeline()).await.map_err(classify)?;
        Ok(())
    }

    async fn finish_batch(&self, finishes: Vec<Finish>) -> Vec<Result<Finished, StoreError>> {
        self.finish_batch_impl(finishes).await
    }

    async fn record_progress(
        &self,
        task_id: &str,
        attempt: u32,
        substatus: Option<String>,
        steps: Vec<ProcessingStep>,
    ) -> Result<(), StoreError> {
        let steps = bson::to_bson(&steps).map_err(|e| StoreError::Other(e.to_string()))?;
        let mut change = Change::new().now("updated_at").push("processing_steps", steps, MAX_STEPS);
        if let Some(sub) = substatus {
            change = change.set("substatus", sub);
        }
        self.tasks
            .update_one(doc! {"_id": task_id, "status": "processing", "attempts": attempt}, change.pipeline())
            .await
            .map_err(classify)?;
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(task_id, attempt))]
    async fn finish(
        &self,
        task_id: &str,
        attempt: u32,
        elapsed_ms: i64,
        steps: Vec<ProcessingStep>,
        outcome: AttemptOutcome,
    ) -> Result<Option<TaskRecord>, StoreError> {
        let (event, filter, change) = finish_docs(attempt, elapsed_ms, steps, outcome)?;
        self.transition(task_id, event, filter, change).await
    }

    async fn expire_leases(&self) -> Result<u64, StoreError> {
        // The index narrows to leases about to end by the server's clock; the guard in each
        // take-back decides by it exactly.
        let bound = self.server_now().await? + RANGE_SLACK;
        let expired: Vec<TaskRecord> = self
            .tasks
            .find(doc! {"status": "processing", "lease_until": {"$lte": bdate(bound)}})
            .limit(500)
            .await
            .map_err(classify)?
            .try_collect()
            .await
            .map_err(classify)?;
        let mut moved = 0;
        for task in expired {
            let this_attempt = doc! {"attempts": task.attempts};
            if self.take_back_expired(&task, this_attempt, "lease expired: the consumer stopped mid-attempt").await? {
                tracing::warn!(task_id = %task.task_id, trace_id = task.trace_id.as_deref(), attempt = task.attempts, "processing lease expired");
                moved += 1;
            }
        }
        Ok(moved)
    }

    async fn release(&self, task_id: &str, attempt: u32) -> Result<bool, StoreError> {
        // The attempt was interrupted, not failed: it gets one more, so that a deploy on a
        // topic with `max_attempts = 1` (or on a task's last attempt) never fails the task
        // without its handler having had a full run.
        let reason = "released: the gateway shut down before this attempt finished";
        let change = back_to_retrying(reason).inc("max_attempts", 1);
        let released = self.transition(task_id, Event::LeaseExpired, doc! {"attempts": attempt}, change).await?;
        Ok(released.is_some())
    }

    async fn cancel(&self, task_id: &str, by: &str) -> Result<TaskRecord, TransitionError> {
        // A Camunda-linked task owes Camunda its cancel (its report is pending from the start);
        // on other tasks the due time is never looked at.
        let change = Change::new()
            .now("completed_at")
            .set("error_message", super::CANCELLED_MESSAGE)
            .set("error_code", "CANCELLED")
            .now("camunda.report_due_at")
            .unset("publish_due_at")
            .unset("next_attempt_at");
        let change = audit(change, "cancel", by, self.clock.now());
        match self.transition(task_id, Event::Cancel, doc! {}, change).await? {
            Some(task) => Ok(task),
            None => Err(self.refusal(task_id).await),
        }
    }

    async fn manual_retry(
        &self,
        task_id: &str,
        hold: Duration,
        by: &str,
        unreported_only: bool,
    ) -> Result<TaskRecord, TransitionError> {
        let mut change = Change::new()
            .set("attempts", 0)
            .set("retries", 0)
            .after("publish_due_at", hold)
            .set("substatus", bson::Bson::Null);
        for field in
            ["completed_at", "next_attempt_at", "error_message", "error_code", "result", "lease_until", "expire_at"]
        {
            change = change.unset(field);
        }
        let update = audit(change, "retry", by, self.clock.now());
        let guard = if unreported_only {
            doc! {"$or": [{"camunda.linked": {"$ne": true}}, {"camunda.report_state": "report_failed"}]}
        } else {
            doc! {}
        };
        match self.transition(task_id, Event::ManualRetry, guard, update).await? {
            Some(mut task) => {
                if task.camunda.linked {
                    // A new run owes Camunda a new report.
                    self.tasks
                        .update_one(
                            doc! {"_id": task_id, "camunda.linked": true},
                            doc! {"$set": {"camunda.report_state": "pending"},
                            "$unset": {"camunda.report_due_at": "", "camunda.report_attempts": "",
                                       "camunda.last_report_error": "", "camunda.reported_at": "",
                                       "camunda.reported_as": "", "camunda.completed_by": ""}},
                        )
                        .await
                        .map_err(classify)?;
                    task.camunda.report_state = super::ReportState::Pending;
                }
                Ok(task)
            }
            None => Err(self.refusal(task_id).await),
        }
    }

    async fn resend_report(&self, task_id: &str, by: &str) -> Result<TaskRecord, TransitionError> {
        // Counted as sent before: an earlier send may have landed, which a 404 then checks.
        let change = Change::new()
            .set("camunda.report_state", "pending")
            .now("camunda.report_due_at")
            .set("camunda.report_attempts", 1)
            .now("updated_at");
        let update = audit(change, "resend_report", by, self.clock.now()).pipeline();
        let filter = doc! {"_id": task_id, "camunda.report_state": "report_failed"};
        let found = self
            .tasks
            .find_one_and_update(filter, update)
            .return_document(ReturnDocument::After)
            .await
            .map_err(|e| TransitionError::Store(classify(e)))?;
        match found {
            Some(task) => Ok(task),
            None => Err(self.refusal(task_id).await),
        }
    }

    async fn due_reports(&self, limit: u32) -> Result<Vec<TaskRecord>, StoreError> {
        self.due_reports_impl(limit).await
    }

    async fn take_report(&self, task_id: &str, hold: Duration) -> Result<Option<TaskRecord>, StoreError> {
        self.take_report_impl(task_id, hold).await
    }

    async fn report_counts(&self) -> Result<super::ReportCounts, StoreError> {
        self.report_counts_impl().await
    }

    async fn record_report(&self, task_id: &str, outcome: ReportOutcome) -> Result<(), StoreError> {
        self.record_report_impl(task_id, outcome).await
    }

    async fn count_unfinished(&self, source: TaskSource) -> Result<u64, StoreError> {
        self.count_unfinished_impl(source).await
    }

    async fn locks_expiring(&self, before: DateTime<Utc>, limit: u32) -> Result<Vec<TaskRecord>, StoreError> {
        self.locks_expiring_impl(before, limit).await
    }

    async fn set_lock_expiry(&self, task_id: &str, at: DateTime<Utc>) -> Result<(), StoreError> {
        self.set_lock_expiry_impl(task_id, at).await
    }

    async fn unstarted(&self, pulled_by: &str, limit: u32) -> Result<Vec<TaskRecord>, StoreError> {
        self.unstarted_impl(pulled_by, limit).await
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<TaskRecord>, StoreError> {
        self.list_impl(query).await
    }

    async fn statistics(&self) -> Result<Statistics, StoreError> {
        self.statistics_impl().await
    }

    async fn record_dead_letter(&self, letter: super::DeadLetter, retention: Duration) -> Result<(), StoreError> {
        self.record_dead_letter_impl(letter, retention).await
    }

    async fn republish_dead_lettered(&self, task_id: &str) -> Result<bool, StoreError> {
        self.republish_dead_lettered_impl(task_id).await
    }

    async fn dead_letters(&self, query: &super::DeadLetterQuery) -> Result<Vec<super::DeadLetter>, StoreError> {
        self.dead_letters_impl(query).await
    }

    async fn count_stale(&self, after: Duration) -> Result<Vec<super::StaleCount>, StoreError> {
        self.count_stale_impl(after).await
    }

    async fn republish_stale(&self, topic: &str, after: Duration, limit: u32) -> Result<u64, StoreError> {
        self.republish_stale_impl(topic, after, limit).await
    }

    async fn owe_publish_again(&self, task_ids: &[String], grace: Duration) -> Result<u64, StoreError> {
        self.owe_publish_again_impl(task_ids, grace).await
    }

    async fn mark_expired(
        &self,
        scope: &super::TopicScope,
        retention: Duration,
        limit: u32,
    ) -> Result<u64, StoreError> {
        self.mark_expired_impl(scope, retention, limit).await
    }
}
