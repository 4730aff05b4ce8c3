//! Publish debts for [`MongoStore`]: the intake's outbox. The tasks the intake stores in a window
//! of time owe their publishes through one small document in `publish_debts`, written before the
//! first of them and deleted once every publish is confirmed (see `intake::windows`). Two small
//! writes a second replace a write to every task, which on a store where an update costs as much
//! as an insert halved what the submit path could take.

use std::ops::Range;

use bson::{Document, doc};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use mongodb::Collection;

use super::{
    StoreError,
    mongo::{MongoStore, classify},
    mongo_change::Change,
    mongo_docs::{bdate, due_by},
};

/// The collection holding the debts: `{_id: debt id, from, until, due_at}`, standing for the tasks
/// created in `[from, until)`.
pub(super) const DEBTS: &str = "publish_debts";

impl MongoStore {
    fn debts(&self) -> Collection<Document> {
        self.database().collection(DEBTS)
    }

    pub(super) async fn owe_publishes_impl(
        &self,
        debt_id: &str,
        created: Range<DateTime<Utc>>,
        due_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let debt =
            doc! {"_id": debt_id, "from": bdate(created.start), "until": bdate(created.end), "due_at": bdate(due_at)};
        // The intake opens a window a second on the store's clock as last measured: keep the
        // measurement fresh (a no-op unless it is old), also on a replica that runs no relay.
        self.server_now().await?;
        self.debts().insert_one(debt).await.map_err(classify)?;
        Ok(())
    }

    pub(super) async fn settle_publishes_impl(&self, debt_id: &str) -> Result<(), StoreError> {
        self.debts().delete_one(doc! {"_id": debt_id}).await.map_err(classify)?;
        Ok(())
    }

    pub(super) async fn pass_on_due_debts_impl(&self, limit: u32) -> Result<u64, StoreError> {
        // A debt passed on early only publishes again what may already be published; the
        // server's clock (as measured) is precise enough for that, and the tasks' own publish
        // times below are the server's `$$NOW`.
        let due: Vec<Document> = self
            .debts()
            .find(doc! {"due_at": due_by(self.server_now().await?)})
            .sort(doc! {"due_at": 1})
            .limit(i64::from(limit))
            .await
            .map_err(classify)?
            .try_collect()
            .await
            .map_err(classify)?;
        // Several relays may pass on the same debt at once, and windows (of one gateway or of
        // several) may overlap: a task owing its publish twice, or one already published, is only
        // published again, which the consumer's claim turns into a no-op. So the filter is the
        // state and the creation range alone, which the `status_created` index serves.
        let owe = Change::new().now("publish_due_at").pipeline();
        let mut owed = 0;
        for debt in due {
            owed += match (debt.get_datetime("from"), debt.get_datetime("until")) {
                (Ok(from), Ok(until)) => {
                    let window = doc! {"status": "queued", "created_at": {"$gte": from, "$lt": until}};
                    self.tasks().update_many(window, owe.clone()).await.map_err(classify)?.modified_count
                }
                // A debt of one batch, as gateways before publish windows wrote them.
                _ => {
                    let ids: Vec<&str> = debt
                        .get_array("task_ids")
                        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
                        .unwrap_or_default();
                    self.update_among(&ids, &doc! {"status": "queued"}, owe.clone()).await?
                }
            };
            self.debts().delete_one(doc! {"_id": debt.get("_id")}).await.map_err(classify)?;
        }
        Ok(owed)
    }
}
