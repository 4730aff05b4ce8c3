//! The Camunda-facing part of [`MongoStore`]: owed reports (taken by one reporter at a time with a
//! conditional update, like publishes, due by the server's clock and never a replica's), their
//! gauges, and the locks of pulled tasks.

use std::time::Duration;

use bson::{doc, oid::ObjectId};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use mongodb::options::ReturnDocument;

use super::{
    ReportCounts, ReportOutcome, StoreError, TaskRecord, TaskSource,
    clock::RANGE_SLACK,
    mongo::classify,
    mongo_change::{Change, due},
    mongo_docs::bdate,
};
use crate::store::MongoStore;

const UNFINISHED: [&str; 3] = ["queued", "processing", "retrying"];
const FINAL: [&str; 3] = ["succeeded", "failed", "cancelled"];

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

    pub(super) async fn due_reports_impl(&self, limit: u32) -> Result<Vec<TaskRecord>, StoreError> {
        // The index (state, due time) narrows to reports about to fall due by the server's
        // clock as last measured; `take_report` then decides exactly, by `$$NOW`. A bare `$lte`
        // here: see `mongo_docs::due_by` for why this index gets no lower bound.
        let bound = self.server_now().await? + RANGE_SLACK;
        let filter = doc! {
            "camunda.report_state": "pending",
            "camunda.report_due_at": {"$lte": bdate(bound)},
            "status": {"$in": FINAL.to_vec()},
        };
        self.tasks()
            .find(filter)
            .sort(doc! {"camunda.report_due_at": 1})
            .limit(i64::from(limit))
            .await
            .map_err(classify)?
            .try_collect()
            .await
            .map_err(classify)
    }

    pub(super) async fn take_report_impl(
        &self,
        task_id: &str,
        hold: Duration,
    ) -> Result<Option<TaskRecord>, StoreError> {
        // Due by the server's clock, decided inside the write; the hold and the token tell this
        // take from anyone else's. Counted when taken, before the send: if the process dies
        // after Camunda's 2xx, the next sender knows an earlier send may have landed.
        let token = ObjectId::new().to_hex();
        let take = Change::new()
            .after("camunda.report_due_at", hold)
            .inc("camunda.report_attempts", 1)
            .set("camunda.report_token", token.as_str());
        let filter = doc! {"_id": task_id, "camunda.report_state": "pending", "status": {"$in": FINAL.to_vec()}};
        let found = self
            .tasks()
            .clone_with_type::<bson::Document>()
            .find_one_and_update(filter, take.guarded(due("camunda.report_due_at")))
            .return_document(ReturnDocument::After)
            .await
            .map_err(classify)?;
        match found {
            Some(d) if d.get_document("camunda").ok().and_then(|c| c.get_str("report_token").ok()) == Some(&token) => {
                bson::from_document(d).map(Some).map_err(|e| StoreError::Other(e.to_string()))
            }
            _ => Ok(None),
        }
    }

    pub(super) async fn record_report_impl(&self, task_id: &str, outcome: ReportOutcome) -> Result<(), StoreError> {
        let settled = |state: &str| {
            Change::new()
                .set("camunda.report_state", state)
                .now("updated_at")
                .unset("camunda.report_due_at")
                .unset("camunda.report_token")
        };
        let change = match outcome {
            ReportOutcome::Reported { how } => {
                settled("reported").now("camunda.reported_at").set("camunda.reported_as", how)
            }
            ReportOutcome::CompletedElsewhere { by } => settled("completed_elsewhere").set("camunda.completed_by", by),
            ReportOutcome::Failed { error } => settled("report_failed").set("camunda.last_report_error", error),
            // Due again a backoff from the server's now, never from this replica's.
            ReportOutcome::Retry { error, after } => Change::new()
                .set("camunda.last_report_error", error)
                .after("camunda.report_due_at", after)
                .now("updated_at"),
        };
        self.tasks()
            .update_one(doc! {"_id": task_id, "camunda.report_state": "pending"}, change.pipeline())
            .await
            .map_err(classify)?;
        Ok(())
    }

    pub(super) async fn report_counts_impl(&self) -> Result<ReportCounts, StoreError> {
        // Owed reports are the pending ones with a due time (only a final task has one): a
        // range of the (state, due time) index, as small as the backlog of reports, never the
        // whole collection. Delivered reports are not counted: they grow without bound (their
        // rate is the `camunda_reports_total` counter).
        let owed = vec![
            doc! {"$match": {"camunda.report_state": "pending", "camunda.report_due_at": {"$exists": true}}},
            doc! {"$group": {"_id": null, "owed": {"$sum": 1}, "oldest": {"$min": "$completed_at"}}},
        ];
        let group = self
            .tasks()
            .aggregate(owed)
            .await
            .map_err(classify)?
            .try_next()
            .await
            .map_err(classify)?
            .unwrap_or_default();
        let failed =
            self.tasks().count_documents(doc! {"camunda.report_state": "report_failed"}).await.map_err(classify)?;
        let owed = match group.get("owed") {
            Some(bson::Bson::Int32(n)) => u64::try_from(*n).unwrap_or_default(),
            Some(bson::Bson::Int64(n)) => u64::try_from(*n).unwrap_or_default(),
            _ => 0,
        };
        let oldest_owed = group.get_datetime("oldest").ok().map(|d| d.to_chrono());
        Ok(ReportCounts { owed, failed, oldest_owed })
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
        // A pulled task is pending from its fetch until Camunda has its outcome: its lock is kept
        // while it runs and while its report is owed, so no other worker takes it meanwhile. A
        // report delivered or given up (`report_failed`) no longer matches, and the lock lapses.
        let filter = doc! {
            "source": "camunda",
            "camunda.report_state": "pending",
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
