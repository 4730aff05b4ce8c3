//! The documents behind [`MongoStore`]'s writes: a new task as stored, and the filter and update
//! of each lifecycle transition (the state it leaves from in the filter, so every write is one
//! conditional update). Pure functions: nothing here talks to the server.

use std::time::Duration;

use bson::{Bson, DateTime as BsonDate, Document, doc};
use chrono::{DateTime, Utc};

use super::{
    AttemptOutcome, NewTask, StoreError, TaskRecord,
    mongo_change::{Change, not_future},
};
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

/// Filter and change for `event` on the tasks `base` selects: the filter names the states the
/// event may leave from, the change sets the state it leads to.
pub(super) fn transition_docs(
    mut base: Document,
    event: Event,
    extra_filter: Document,
    change: Change,
) -> (Document, Change) {
    let t = event.transition();
    base.insert("status", doc! {"$in": states(t.from)});
    base.extend(extra_filter);
    (base, change.set("status", t.to.as_str()).now("updated_at"))
}

/// The claim of one more attempt, leased for `lease` from the server's now; `token` marks the
/// claim's documents. It applies only where the task is due ([`claim_guard`]).
pub(super) fn claim_change(lease: Duration, token: &str) -> Change {
    // Delivered, so nothing is owed to the broker any more: the publish's own record of its
    // confirm (written later, see `intake`) then finds nothing left to write.
    Change::new()
        .after("lease_until", lease)
        .now("started_at")
        .set("substatus", Bson::Null)
        .set("claim_token", token)
        .inc("attempts", 1)
        .unset("publish_due_at")
}

/// Claimable means not yet due is ruled out ("no retry scheduled" is a missing field), by the
/// server's clock.
pub(super) fn claim_guard() -> Document {
    not_future("next_attempt_at")
}

/// The event, extra filter (this attempt) and change that record how `attempt` ended.
pub(super) fn finish_docs(
    attempt: u32,
    elapsed_ms: i64,
    steps: Vec<ProcessingStep>,
    outcome: AttemptOutcome,
) -> Result<(Event, Document, Change), StoreError> {
    let (event, mut change) = match outcome {
        AttemptOutcome::Succeeded { result } => {
            let result = bson::to_bson(&result).map_err(|e| StoreError::Other(e.to_string()))?;
            let change = Change::new()
                .set("result", result)
                .now("completed_at")
                .set("substatus", Bson::Null)
                .now("camunda.report_due_at")
                .unset("lease_until")
                .unset("next_attempt_at")
                .unset("error_message")
                .unset("error_code");
            (Event::Succeed, change)
        }
        AttemptOutcome::Retry { error, backoff } => (
            Event::FailRetryable,
            Change::new()
                .set("error_message", error)
                .after("next_attempt_at", backoff)
                .after("publish_due_at", backoff)
                .inc("retries", 1)
                .unset("lease_until"),
        ),
        AttemptOutcome::Failed { error, error_code } => (
            Event::FailFinal,
            Change::new()
                .set("error_message", error)
                .set("error_code", error_code)
                .now("completed_at")
                .now("camunda.report_due_at")
                .unset("lease_until")
                .unset("next_attempt_at"),
        ),
    };
    change = change.set("processing_time_ms", elapsed_ms);
    if !steps.is_empty() {
        let steps = bson::to_bson(&steps).map_err(|e| StoreError::Other(e.to_string()))?;
        change = change.push("processing_steps", steps, MAX_STEPS);
    }
    Ok((event, doc! {"attempts": attempt}, change))
}

/// The stored form of a new task: queued, no attempt yet, its publish owed from `publish_due_at`
/// (or by a publish debt).
pub(super) fn new_record(task: NewTask, now: BsonDate) -> TaskRecord {
    let publish_due_at = task.publish_after.map(|after| {
        BsonDate::from_millis(now.timestamp_millis().saturating_add(i64::try_from(after.as_millis()).unwrap_or(0)))
    });
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
        publish_due_at,
        camunda: task.camunda,
        trace_id: task.trace_id,
        audit: Vec::new(),
    }
}

/// How long a claim may run before the relay presumes the consumer dead: the handler's timeout
/// plus room for recording the outcome.
pub fn lease_for(timeout: Duration) -> Duration {
    timeout + Duration::from_secs(30)
}
