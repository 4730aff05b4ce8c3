//! An attempt's transitions in [`MongoStore`], one task at a time: claim, progress, release at
//! shutdown and the take-back of expired leases (an attempt's end is `finish_docs` applied by
//! `transition`, in `mongo_trait`). Each is one `findOneAndUpdate` or `updateOne` whose filter
//! holds the state it expects; a guarded one also decides by the server's clock inside the write
//! (see `mongo_change`) and tells its own change by a token.

use std::time::Duration;

use bson::{Document, doc};
use futures::TryStreamExt;
use mongodb::options::ReturnDocument;

use super::{
    StoreError, TaskRecord,
    clock::RANGE_SLACK,
    mongo::{MongoStore, classify},
    mongo_change::{Change, due},
    mongo_docs::{MAX_STEPS, bdate, claim_change, claim_guard, transition_docs},
};
use crate::{domain::Event, topics::ProcessingStep};

impl MongoStore {
    /// `event` applied to `task_id` where its state and `extra_filter` allow: the task as changed,
    /// or `None` when the filter ruled it out.
    pub(super) async fn transition(
        &self,
        task_id: &str,
        event: Event,
        extra_filter: Document,
        change: Change,
    ) -> Result<Option<TaskRecord>, StoreError> {
        let (filter, change) = transition_docs(doc! {"_id": task_id}, event, extra_filter, change);
        self.tasks()
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
            .tasks()
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

    pub(super) async fn claim_impl(&self, task_id: &str, lease: Duration) -> Result<Option<TaskRecord>, StoreError> {
        let token = bson::oid::ObjectId::new().to_hex();
        self.transition_guarded(task_id, Event::Claim, doc! {}, claim_change(lease, &token), claim_guard()).await
    }

    pub(super) async fn keep_publish_owed_impl(&self, task_id: &str) -> Result<(), StoreError> {
        // The message a relay sends when the retry falls due: the one in hand came early (a
        // duplicate, or a publish another replica took before the store says it was due).
        let filter = doc! {"_id": task_id, "status": "retrying", "publish_due_at": {"$exists": false}};
        let change = Change::new().copy("publish_due_at", "next_attempt_at");
        self.tasks().update_one(filter, change.pipeline()).await.map_err(classify)?;
        Ok(())
    }

    pub(super) async fn record_progress_impl(
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
        self.tasks()
            .update_one(doc! {"_id": task_id, "status": "processing", "attempts": attempt}, change.pipeline())
            .await
            .map_err(classify)?;
        Ok(())
    }

    pub(super) async fn expire_leases_impl(&self) -> Result<u64, StoreError> {
        // The index narrows to leases about to end by the server's clock; the guard in each
        // take-back decides by it exactly.
        let bound = self.server_now().await? + RANGE_SLACK;
        let expired: Vec<TaskRecord> = self
            .tasks()
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

    pub(super) async fn release_impl(&self, task_id: &str, attempt: u32) -> Result<bool, StoreError> {
        // The attempt was interrupted, not failed: it gets one more, so that a deploy on a
        // topic with `max_attempts = 1` (or on a task's last attempt) never fails the task
        // without its handler having had a full run.
        let reason = "released: the gateway shut down before this attempt finished";
        let change = back_to_retrying(reason).inc("max_attempts", 1);
        let released = self.transition(task_id, Event::LeaseExpired, doc! {"attempts": attempt}, change).await?;
        Ok(released.is_some())
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
