//! [`TaskStore`] for [`MongoStore`]: each method forwards to the inherent method that holds the
//! work, in the `mongo_*` module of its concept (inserts, attempts, manual transitions, batches,
//! publish debts, Camunda reports, queries, dead letters, stale tasks, retention); only methods of a
//! line or three live here. Must not grow logic of its own: a method with a body goes to its module.

use std::time::Duration;

use async_trait::async_trait;
use bson::doc;
use chrono::{DateTime, Utc};

use super::{
    AttemptOutcome, DeadLetter, DeadLetterQuery, Finish, Finished, InsertOutcome, ListQuery, NewTask, ReportCounts,
    ReportOutcome, StaleCount, Statistics, StoreError, TaskRecord, TaskSource, TaskStore, TopicScope, TransitionError,
    mongo::{MongoStore, classify},
    mongo_docs::{bdate, finish_docs},
};
use crate::topics::ProcessingStep;

#[async_trait]
impl TaskStore for MongoStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.database().run_command(doc! {"ping": 1}).await.map(|_| ()).map_err(classify)
    }

    fn now(&self) -> DateTime<Utc> {
        self.clock().now()
    }

    #[tracing::instrument(skip_all, fields(task_id = %task.submission.task_id))]
    async fn insert_refused(&self, task: NewTask, reason: &str) -> Result<InsertOutcome, StoreError> {
        self.insert_refused_impl(task, reason).await
    }

    async fn insert(&self, task: NewTask) -> Result<InsertOutcome, StoreError> {
        self.insert_impl(task).await
    }

    async fn insert_batch(
        &self,
        tasks: Vec<NewTask>,
        created_at: DateTime<Utc>,
    ) -> Vec<Result<InsertOutcome, StoreError>> {
        self.insert_batch_impl(tasks, created_at).await
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
        self.tasks().find_one(doc! {"_id": task_id}).await.map_err(classify)
    }

    async fn take_due_publishes(&self, hold: Duration, limit: u32) -> Result<Vec<TaskRecord>, StoreError> {
        self.take_due_publishes_impl(hold, limit).await
    }

    #[tracing::instrument(skip_all, fields(task_id))]
    async fn claim(&self, task_id: &str, lease: Duration) -> Result<Option<TaskRecord>, StoreError> {
        self.claim_impl(task_id, lease).await
    }

    async fn claim_batch(&self, task_ids: Vec<String>, lease: Duration) -> Result<Vec<TaskRecord>, StoreError> {
        self.claim_batch_impl(task_ids, lease).await
    }

    async fn keep_publish_owed(&self, task_id: &str) -> Result<(), StoreError> {
        self.keep_publish_owed_impl(task_id).await
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
        self.record_progress_impl(task_id, attempt, substatus, steps).await
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
        self.expire_leases_impl().await
    }

    async fn release(&self, task_id: &str, attempt: u32) -> Result<bool, StoreError> {
        self.release_impl(task_id, attempt).await
    }

    async fn cancel(&self, task_id: &str, by: &str) -> Result<TaskRecord, TransitionError> {
        self.cancel_impl(task_id, by).await
    }

    async fn manual_retry(
        &self,
        task_id: &str,
        hold: Duration,
        by: &str,
        unreported_only: bool,
    ) -> Result<TaskRecord, TransitionError> {
        self.manual_retry_impl(task_id, hold, by, unreported_only).await
    }

    async fn resend_report(&self, task_id: &str, by: &str) -> Result<TaskRecord, TransitionError> {
        self.resend_report_impl(task_id, by).await
    }

    async fn due_reports(&self, limit: u32) -> Result<Vec<TaskRecord>, StoreError> {
        self.due_reports_impl(limit).await
    }

    async fn take_report(&self, task_id: &str, hold: Duration) -> Result<Option<TaskRecord>, StoreError> {
        self.take_report_impl(task_id, hold).await
    }

    async fn report_counts(&self) -> Result<ReportCounts, StoreError> {
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

    async fn record_dead_letter(&self, letter: DeadLetter, retention: Duration) -> Result<(), StoreError> {
        self.record_dead_letter_impl(letter, retention).await
    }

    async fn republish_dead_lettered(&self, task_id: &str) -> Result<bool, StoreError> {
        self.republish_dead_lettered_impl(task_id).await
    }

    async fn dead_letters(&self, query: &DeadLetterQuery) -> Result<Vec<DeadLetter>, StoreError> {
        self.dead_letters_impl(query).await
    }

    async fn count_stale(&self, after: Duration) -> Result<Vec<StaleCount>, StoreError> {
        self.count_stale_impl(after).await
    }

    async fn republish_stale(&self, topic: &str, after: Duration, limit: u32) -> Result<u64, StoreError> {
        self.republish_stale_impl(topic, after, limit).await
    }

    async fn owe_publish_again(&self, task_ids: &[String], grace: Duration) -> Result<u64, StoreError> {
        self.owe_publish_again_impl(task_ids, grace).await
    }

    async fn mark_expired(&self, scope: &TopicScope, retention: Duration, limit: u32) -> Result<u64, StoreError> {
        self.mark_expired_impl(scope, retention, limit).await
    }
}
