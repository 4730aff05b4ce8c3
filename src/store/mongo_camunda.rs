//! The Camunda-facing part of [`MongoStore`]: owed reports (taken by one reporter at a time with a
//! conditional update, like publishes) and the locks of pulled tasks.

use bson::{DateTime as BsonDate, doc};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;

use super::{ReportOutcome, StoreError, TaskRecord, TaskSource, mongo::classify, mongo_docs::bdate};
use crate::store::MongoStore;

const UNFINISHED: [&str; 3] = ["queued", "processing", "retrying"];

fn source_name(source: TaskSource) -> &'static str {
    match source {
        TaskSource::Http => "http",
        TaskSource::Amqp => "amqp",
        TaskSource::Camunda => "camunda",
    }
}

impl MongoStore {
    async fn find_many(&self, filter: bson::Document, limit: u32) -> Result<Vec<TaskRecord>, StoreError> {
        self.tasks().find(filter).limit(i64::from(limit)).await.map_err(classify)?.try_collect().await.map_err(classify)
    }

    pub(super) async fn due_reports_impl(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<TaskRecord>, StoreError> {
        let filter = doc! {
            "camunda.report_state": "pending",
            "status": {"$in": ["succeeded", "failed", "cancelled"]},
            "camunda.report_due_at": {"$lte": bdate(now)},
        };
        self.find_many(filter, limit).await
    }

    pub(super) async fn take_report_impl(
        &self,
        task_id: &str,
        seen: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let r = self
            .tasks()
            .update_one(
                doc! {"_id": task_id, "camunda.report_state": "pending", "camunda.report_due_at": bdate(seen)},
                // Counted when taken, before the send: if the process dies after Camunda's 2xx,
                // the next sender knows an earlier send may have landed.
                doc! {"$set": {"camunda.report_due_at": bdate(until)}, "$inc": {"camunda.report_attempts": 1}},
            )
            .await
            .map_err(classify)?;
        Ok(r.modified_count == 1)
    }

    pub(super) async fn record_report_impl(&self, task_id: &str, outcome: ReportOutcome) -> Result<(), StoreError> {
        let now = BsonDate::now();
        let update = match outcome {
            ReportOutcome::Reported { how } => doc! {
                "$set": {"camunda.report_state": "reported", "camunda.reported_at": now,
                         "camunda.reported_as": how, "updated_at": now},
                "$unset": {"camunda.report_due_at": ""},
            },
            ReportOutcome::CompletedElsewhere { by } => doc! {
                "$set": {"camunda.report_state": "completed_elsewhere", "camunda.completed_by": by, "updated_at": now},
                "$unset": {"camunda.report_due_at": ""},
            },
            ReportOutcome::Failed { error } => doc! {
                "$set": {"camunda.report_state": "report_failed", "camunda.last_report_error": error, "updated_at": now},
                "$unset": {"camunda.report_due_at": ""},
            },
            ReportOutcome::Retry { error, at } => doc! {
                "$set": {"camunda.last_report_error": error, "camunda.report_due_at": bdate(at), "updated_at": now},
            },
        };
        self.tasks()
            .update_one(doc! {"_id": task_id, "camunda.report_state": "pending"}, update)
            .await
            .map_err(classify)?;
        Ok(())
    }

    pub(super) async fn count_unfinished_impl(&self, source: TaskSource) -> Result<u64, StoreError> {
        self.tasks()
            .count_documents(doc! {"source": source_name(source), "status": {"$in": UNFINISHED.to_vec()}})
            .await
            .map_err(classify)
    }

    pub(super) async fn locks_expiring_impl(
        &self,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<TaskRecord>, StoreError> {
        let filter = doc! {
            "source": "camunda",
            "status": {"$in": UNFINISHED.to_vec()},
            "camunda.lock_expires_at": {"$lte": bdate(before)},
        };
        self.find_many(filter, limit).await
    }

    pub(super) async fn set_lock_expiry_impl(&self, task_id: &str, at: DateTime<Utc>) -> Result<(), StoreError> {
        self.tasks()
            .update_one(doc! {"_id": task_id}, doc! {"$set": {"camunda.lock_expires_at": bdate(at)}})
            .await
            .map_err(classify)?;
        Ok(())
    }

    pub(super) async fn unstarted_impl(&self, pulled_by: &str, limit: u32) -> Result<Vec<TaskRecord>, StoreError> {
        let filter = doc! {"source": "camunda", "status": "queued", "attempts": 0, "camunda.pulled_by": pulled_by};
        self.find_many(filter, limit).await
    }
}
