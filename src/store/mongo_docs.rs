//! The documents behind [`MongoStore`]'s writes: a new task as stored, and the filter and update
//! of each lifecycle transition (the state it leaves from in the filter, so every write is one
//! conditional update). Pure functions: nothing here talks to the server.

use std::time::Duration;

use bson::{DateTime as BsonDate, Document, doc};
use chrono::{DateTime, Utc};

use super::{AttemptOutcome, NewTask, StoreError, TaskRecord};
use crate::{
    domain::{Event, TaskStatus},
    topics::ProcessingStep,
};

/// Processing steps kept per task; a chatty handler must not grow a document without bound.
pub(super) const MAX_STEPS: i32 = 100;

pub(super) fn bdate(t: DateTime<Utc>) -> BsonDate {
    BsonDate::from_chrono(t)
}

/// "A date no later than `t`", bounded below as well (by the epoch: every date here is later):
/// the field is absent from most tasks, and a bare `$lte` lets a server walk every absent (null)
/// index entry before the first date (SecantusDB took a second per sweep at 10 000 tasks; with
/// the bound, milliseconds). Used for the publish debt only: the lease and Camunda sweeps use
/// compound indexes led by the state, where the bound buys nothing, and with it there two
/// `tests/it` tests failed in one CI run (SecantusDB answered the bounded query wrongly).
pub(super) fn due_by(t: DateTime<Utc>) -> Document {
    doc! {"$gte": BsonDate::from_millis(0), "$lte": bdate(t)}
}

pub(super) fn states(list: &[TaskStatus]) -> Vec<&'static str> {
    list.iter().map(|s| s.as_str()).collect()
}

/// Filter and update for `event` on the tasks `base` selects: the filter names the states the
/// event may leave from, the update sets the state it leads to.
pub(super) fn transition_docs(
    mut base: Document,
    event: Event,
    extra_filter: Document,
    mut update: Document,
) -> (Document, Document) {
    let t = event.transition();
    base.insert("status", doc! {"$in": states(t.from)});
    base.extend(extra_filter);
    let set = update.entry("$set".to_owned()).or_insert_with(|| doc! {}.into());
    if let bson::Bson::Document(set) = set {
        set.insert("status", t.to.as_str());
        set.insert("updated_at", BsonDate::now());
    }
    (base, update)
}

/// Extra filter (due now) and update for claiming; `token` marks a batch claim's documents.
pub(super) fn claim_docs(lease_until: DateTime<Utc>, token: Option<&str>) -> (Document, Document) {
    let now = BsonDate::now();
    // Not yet due is the one excluded case ("no retry scheduled" is a missing or null field). A
    // top-level `$or` would say the same, but SecantusDB then scans the whole collection instead of
    // looking the ids up (1 s against 20 ms at 10 000 tasks).
    let due = doc! {"next_attempt_at": {"$not": {"$gt": now}}};
    let mut set = doc! {"lease_until": bdate(lease_until), "started_at": now, "substatus": null};
    if let Some(token) = token {
        set.insert("claim_token", token);
    }
    // Delivered, so nothing is owed to the broker any more: the publish's own record of its
    // confirm (written later, see `intake`) then finds nothing left to write.
    (due, doc! {"$set": set, "$inc": {"attempts": 1}, "$unset": {"publish_due_at": ""}})
}

/// The event, extra filter (this attempt) and update that record how `attempt` ended.
pub(super) fn finish_docs(
    attempt: u32,
    elapsed_ms: i64,
    steps: Vec<ProcessingStep>,
    outcome: AttemptOutcome,
) -> Result<(Event, Document, Document), StoreError> {
    let now = BsonDate::now();
    let (event, mut update) = match outcome {
        AttemptOutcome::Succeeded { result } => {
            let result = bson::to_bson(&result).map_err(|e| StoreError::Other(e.to_string()))?;
            (
                Event::Succeed,
                doc! {"$set": {"result": result, "completed_at": now, "substatus": null, "camunda.report_due_at": now},
                "$unset": {"lease_until": "", "next_attempt_at": "", "error_message": "", "error_code": ""}},
            )
        }
        AttemptOutcome::Retry { error, next_attempt_at } => (
            Event::FailRetryable,
            doc! {"$set": {"error_message": error, "next_attempt_at": bdate(next_attempt_at),
                     "publish_due_at": bdate(next_attempt_at)},
            "$inc": {"retries": 1},
            "$unset": {"lease_until": ""}},
        ),
        AttemptOutcome::Failed { error, error_code } => (
            Event::FailFinal,
            doc! {"$set": {"error_message": error, "error_code": error_code, "completed_at": now,
                           "camunda.report_due_at": now},
            "$unset": {"lease_until": "", "next_attempt_at": ""}},
        ),
    };
    if let Ok(set) = update.get_document_mut("$set") {
        set.insert("processing_time_ms", elapsed_ms);
    }
    if !steps.is_empty() {
        let steps = bson::to_bson(&steps).map_err(|e| StoreError::Other(e.to_string()))?;
        update.insert("$push", doc! {"processing_steps": {"$each": steps, "$slice": -MAX_STEPS}});
    }
    Ok((event, doc! {"attempts": attempt}, update))
}

/// The stored form of a new task: queued, no attempt yet, its publish owed from `publish_due_at`
/// (or by a publish debt).
pub(super) fn new_record(task: NewTask, now: BsonDate) -> TaskRecord {
    let s = task.submission;
    TaskRecord {
        task_id: s.task_id.to_string(),
        worker_id: s.worker_id.to_string(),
        topic: s.topic.to_string(),
        fingerprint: s.fingerprint(),
        variables: s.variables,
        source: task.source,
        status: TaskStatus::Queued,
        substatus: None,
        attempts: 0,
        max_attempts: task.max_attempts,
        result: None,
        error_message: None,
        error_code: None,
        retries: 0,
        processing_steps: Vec::new(),
        processing_time_ms: None,
        created_at: now,
        updated_at: now,
        started_at: None,
        completed_at: None,
        lease_until: None,
        next_attempt_at: None,
        publish_due_at: task.publish_due_at.map(bdate),
        camunda: task.camunda,
        audit: Vec::new(),
    }
}

/// How long a claim may run before the relay presumes the consumer dead: the handler's timeout
/// plus room for recording the outcome.
pub fn lease_for(timeout: Duration) -> chrono::Duration {
    chrono::Duration::from_std(timeout + Duration::from_secs(30)).unwrap_or(chrono::Duration::hours(1))
}
