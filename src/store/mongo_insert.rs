//! Storing new tasks in [`MongoStore`]: one, many in one unordered `insertMany` (group commit), or
//! one refused by validation and stored already failed. A duplicate id is never an error: it is an
//! idempotent resubmit when the body matches, a conflict otherwise.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use mongodb::error::ErrorKind;

use super::{
    InsertOutcome, NewTask, StoreError, TaskRecord, TaskStore,
    mongo::{MongoStore, classify, is_duplicate_key},
    mongo_docs::bdate,
};
use crate::domain::TaskStatus;

impl MongoStore {
    /// Inserts one record; a duplicate id is an idempotent resubmit or a conflict.
    async fn insert_record(&self, record: TaskRecord) -> Result<InsertOutcome, StoreError> {
        match self.tasks().insert_one(&record).await {
            Ok(_) => Ok(InsertOutcome::Created(Box::new(record))),
            Err(e) if is_duplicate_key(&e) => self.compare_existing(&record).await,
            Err(e) => Err(classify(e)),
        }
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

    pub(super) async fn insert_impl(&self, task: NewTask) -> Result<InsertOutcome, StoreError> {
        self.insert_record(task.into_record(bdate(self.clock().now()))).await
    }

    pub(super) async fn insert_refused_impl(&self, task: NewTask, reason: &str) -> Result<InsertOutcome, StoreError> {
        let now = bdate(self.clock().now());
        let mut record = task.into_record(now);
        record.status = TaskStatus::Failed;
        record.error_message = Some(reason.to_owned());
        record.error_code = Some("validation".to_owned());
        record.completed_at = Some(now);
        record.publish_due_at = None;
        // Owed to Camunda like any final outcome (report mode only; otherwise never looked at).
        record.camunda.report_due_at = Some(now);
        self.insert_record(record).await
    }

    pub(super) async fn insert_batch_impl(
        &self,
        tasks: Vec<NewTask>,
        created_at: DateTime<Utc>,
    ) -> Vec<Result<InsertOutcome, StoreError>> {
        let now = bdate(created_at);
        let records: Vec<TaskRecord> = tasks.into_iter().map(|t| t.into_record(now)).collect();
        // Unordered: one duplicate does not stop the others; each failure comes back with its index.
        let failed: HashMap<usize, (i32, String)> = match self.tasks().insert_many(&records).ordered(false).await {
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
}
