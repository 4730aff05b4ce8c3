//! Publish debts for [`MongoStore`]: the intake's outbox. A batch of submissions owes its
//! publishes through one small document in `publish_debts`, written before the tasks and deleted
//! once every publish is confirmed. Two small writes a batch replace a write to every task, which
//! on a store where an update costs as much as an insert halved what the submit path could take.

use bson::{Document, doc};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use mongodb::Collection;

use super::{
    StoreError,
    mongo::{MongoStore, classify},
    mongo_docs::{bdate, due_by},
};

/// The collection holding the debts: `{_id: debt id, task_ids: [...], due_at}`.
pub(super) const DEBTS: &str = "publish_debts";

impl MongoStore {
    fn debts(&self) -> Collection<Document> {
        self.database().collection(DEBTS)
    }

    pub(super) async fn owe_publishes_impl(
        &self,
        debt_id: &str,
        task_ids: &[String],
        due_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.debts()
            .insert_one(doc! {"_id": debt_id, "task_ids": task_ids, "due_at": bdate(due_at)})
            .await
            .map_err(classify)?;
        Ok(())
    }

    pub(super) async fn settle_publishes_impl(&self, debt_id: &str) -> Result<(), StoreError> {
        self.debts().delete_one(doc! {"_id": debt_id}).await.map_err(classify)?;
        Ok(())
    }

    pub(super) async fn pass_on_due_debts_impl(&self, now: DateTime<Utc>, limit: u32) -> Result<u64, StoreError> {
        let due: Vec<Document> = self
            .debts()
            .find(doc! {"due_at": due_by(now)})
            .sort(doc! {"due_at": 1})
            .limit(i64::from(limit))
            .await
            .map_err(classify)?
            .try_collect()
            .await
            .map_err(classify)?;
        // Several relays may pass on the same debt at once: each step is conditional or
        // idempotent, and a task owing its publish twice is only published again, which the
        // consumer's claim turns into a no-op.
        let unpublished = doc! {"status": "queued", "publish_due_at": null};
        let owe = doc! {"$set": {"publish_due_at": bdate(now)}};
        let mut owed = 0;
        for debt in due {
            let ids: Vec<&str> =
                debt.get_array("task_ids").map(|a| a.iter().filter_map(|v| v.as_str()).collect()).unwrap_or_default();
            owed += self.update_among(&ids, &unpublished, &owe).await?;
            self.debts().delete_one(doc! {"_id": debt.get("_id")}).await.map_err(classify)?;
        }
        Ok(owed)
    }
}
