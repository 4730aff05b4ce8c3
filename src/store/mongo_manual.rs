//! The transitions a person asks for through the API, in [`MongoStore`]: cancel, manual retry and
//! a report sent again. Each leaves an audit entry on the task and, when refused, says why (unknown
//! id, or the state the task is in).

use std::time::Duration;

use bson::doc;
use chrono::{DateTime, Utc};
use mongodb::options::ReturnDocument;

use super::{
    ReportState, TaskRecord, TaskStore, TransitionError,
    mongo::{MongoStore, classify},
    mongo_change::Change,
    mongo_docs::bdate,
};
use crate::domain::Event;

impl MongoStore {
    /// Explains a refused user transition: unknown id, or the state it is in.
    async fn refusal(&self, task_id: &str) -> TransitionError {
        match self.get(task_id).await {
            Ok(Some(task)) => TransitionError::WrongState(task.status),
            Ok(None) => TransitionError::NotFound,
            Err(e) => TransitionError::Store(e),
        }
    }

    pub(super) async fn cancel_impl(&self, task_id: &str, by: &str) -> Result<TaskRecord, TransitionError> {
        // A Camunda-linked task owes Camunda its cancel (its report is pending from the start);
        // on other tasks the due time is never looked at.
        let change = Change::new()
            .now("completed_at")
            .set("error_message", super::CANCELLED_MESSAGE)
            .set("error_code", "CANCELLED")
            .now("camunda.report_due_at")
            .unset("publish_due_at")
            .unset("next_attempt_at");
        let change = audit(change, "cancel", by, self.clock().now());
        match self.transition(task_id, Event::Cancel, doc! {}, change).await? {
            Some(task) => Ok(task),
            None => Err(self.refusal(task_id).await),
        }
    }

    pub(super) async fn manual_retry_impl(
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
        let update = audit(change, "retry", by, self.clock().now());
        let guard = if unreported_only {
            doc! {"$or": [{"camunda.linked": {"$ne": true}}, {"camunda.report_state": "report_failed"}]}
        } else {
            doc! {}
        };
        match self.transition(task_id, Event::ManualRetry, guard, update).await? {
            Some(mut task) => {
                if task.camunda.linked {
                    // A new run owes Camunda a new report.
                    self.tasks()
                        .update_one(
                            doc! {"_id": task_id, "camunda.linked": true},
                            doc! {"$set": {"camunda.report_state": "pending"},
                            "$unset": {"camunda.report_due_at": "", "camunda.report_attempts": "",
                                       "camunda.last_report_error": "", "camunda.reported_at": "",
                                       "camunda.reported_as": "", "camunda.completed_by": ""}},
                        )
                        .await
                        .map_err(classify)?;
                    task.camunda.report_state = ReportState::Pending;
                }
                Ok(task)
            }
            None => Err(self.refusal(task_id).await),
        }
    }

    pub(super) async fn resend_report_impl(&self, task_id: &str, by: &str) -> Result<TaskRecord, TransitionError> {
        // Counted as sent before: an earlier send may have landed, which a 404 then checks.
        let change = Change::new()
            .set("camunda.report_state", "pending")
            .now("camunda.report_due_at")
            .set("camunda.report_attempts", 1)
            .now("updated_at");
        let update = audit(change, "resend_report", by, self.clock().now()).pipeline();
        let filter = doc! {"_id": task_id, "camunda.report_state": "report_failed"};
        let found = self
            .tasks()
            .find_one_and_update(filter, update)
            .return_document(ReturnDocument::After)
            .await
            .map_err(|e| TransitionError::Store(classify(e)))?;
        match found {
            Some(task) => Ok(task),
            None => Err(self.refusal(task_id).await),
        }
    }
}

/// Appends one audit record (the last 50 kept), stamped with the store's clock.
fn audit(change: Change, action: &str, by: &str, at: DateTime<Utc>) -> Change {
    let entry = bson::bson!([{"action": action, "by": by, "at": bdate(at)}]);
    change.push("audit", entry, 50)
}
