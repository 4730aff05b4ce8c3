//! What a written batch owes the broker, read from its insert outcomes: the tasks it stored are
//! published now; a task this batch stored but saw only through a retried insert (its first answer
//! lost) too; an idempotent resubmit of a task still waiting for its first delivery has its
//! publish made owed again by the store; and an outcome the batch cannot know keeps the window's
//! debt. Pure: nothing here writes or publishes.

use chrono::{DateTime, Utc};

use crate::{
    domain::TaskStatus,
    store::{InsertOutcome, StoreError, TaskRecord},
};

/// How long after its submission a task's own publish (or its window's debt, passed on) has had
/// its chance; an idempotent resubmit of an older task still waiting for its first delivery
/// publishes it again.
pub const RESUBMIT_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// What a written batch owes the broker, from its insert outcomes.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Plan {
    /// Published now: the tasks this batch stored.
    pub(super) publish: Vec<TaskRecord>,
    /// Idempotent resubmits of tasks not yet delivered (still queued, never claimed): their
    /// publish is owed again unless young.
    pub(super) resubmitted: Vec<String>,
    /// Every outcome is known. Otherwise a task may have landed unseen, and only the window's
    /// debt (kept: the ticket is not paid) publishes it.
    pub(super) all_known: bool,
}

pub(super) fn plan(outcomes: &[Result<InsertOutcome, StoreError>], created_at: DateTime<Utc>) -> Plan {
    let mut plan = Plan { all_known: true, ..Plan::default() };
    for outcome in outcomes {
        match outcome {
            Ok(InsertOutcome::Created(task)) => plan.publish.push((**task).clone()),
            // Created by this very batch (its creation time is the batch's): the driver retried
            // an insert whose first answer was lost and found the task already there.
            // (The same id twice in one batch is published once.)
            Ok(InsertOutcome::Existing(task))
                if task.created_at.timestamp_millis() == created_at.timestamp_millis() =>
            {
                if !plan.publish.iter().any(|t| t.task_id == task.task_id) {
                    plan.publish.push((**task).clone());
                }
            }
            Ok(InsertOutcome::Existing(task)) if task.status == TaskStatus::Queued && task.attempts == 0 => {
                plan.resubmitted.push(task.task_id.clone());
            }
            Ok(InsertOutcome::Existing(_) | InsertOutcome::Conflict(_)) => {}
            // The store does not tell a definite per-document refusal from an answer lost after
            // the write: either may have landed as far as this batch knows. Keeping the debt
            // costs at most a second's tasks published again (duplicates the claim skips).
            Err(_) => plan.all_known = false,
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::NewTask;

    fn task(id: &str, created_at: DateTime<Utc>, status: TaskStatus, attempts: u32) -> Box<TaskRecord> {
        let at = bson::DateTime::from_chrono(created_at);
        Box::new(TaskRecord { status, attempts, ..NewTask::sample(id).into_record(at) })
    }

    fn ids(tasks: &[TaskRecord]) -> Vec<&str> {
        tasks.iter().map(|t| t.task_id.as_str()).collect()
    }

    #[test]
    fn an_unknown_outcome_keeps_the_windows_debt() {
        let now = Utc::now();
        let outcomes = vec![
            Ok(InsertOutcome::Created(task("a", now, TaskStatus::Queued, 0))),
            Err(StoreError::Unavailable("connection reset after the write".into())),
        ];
        let lost = plan(&outcomes, now);
        assert!(!lost.all_known, "a lost answer must leave the debt to the relay");
        assert_eq!(ids(&lost.publish), ["a"]);
        let refused = vec![Err(StoreError::Other("insert refused (121): document failed validation".into()))];
        assert!(!plan(&refused, now).all_known);
    }

    #[test]
    fn every_outcome_known_pays_for_the_batch() {
        let now = Utc::now();
        let earlier = now - chrono::Duration::seconds(60);
        let outcomes = vec![
            Ok(InsertOutcome::Created(task("a", now, TaskStatus::Queued, 0))),
            Ok(InsertOutcome::Conflict(task("b", earlier, TaskStatus::Queued, 0))),
            Ok(InsertOutcome::Existing(task("c", earlier, TaskStatus::Succeeded, 1))),
        ];
        let known = plan(&outcomes, now);
        assert!(known.all_known);
        assert_eq!(ids(&known.publish), ["a"]);
        assert!(known.resubmitted.is_empty(), "a finished task is not published again");
    }

    #[test]
    fn a_task_this_batch_stored_but_found_by_a_retried_insert_is_published() {
        let now = Utc::now();
        let outcomes = vec![
            Ok(InsertOutcome::Existing(task("a", now, TaskStatus::Queued, 0))),
            Ok(InsertOutcome::Created(task("b", now, TaskStatus::Queued, 0))),
            Ok(InsertOutcome::Existing(task("b", now, TaskStatus::Queued, 0))),
        ];
        let retried = plan(&outcomes, now);
        assert_eq!(ids(&retried.publish), ["a", "b"], "published once each");
        assert!(retried.resubmitted.is_empty());
    }

    #[test]
    fn a_resubmit_of_a_task_never_delivered_owes_its_publish_again() {
        let now = Utc::now();
        let earlier = now - chrono::Duration::seconds(60);
        let outcomes = vec![
            Ok(InsertOutcome::Existing(task("queued", earlier, TaskStatus::Queued, 0))),
            Ok(InsertOutcome::Existing(task("running", earlier, TaskStatus::Processing, 1))),
            Ok(InsertOutcome::Existing(task("retried", earlier, TaskStatus::Retrying, 1))),
        ];
        let resubmits = plan(&outcomes, now);
        assert_eq!(resubmits.resubmitted, ["queued"]);
        assert!(resubmits.publish.is_empty());
        assert!(resubmits.all_known);
    }
}
