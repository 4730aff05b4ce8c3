//! Batched transitions for [`MongoStore`] (group commit on the consumer side): many claims in
//! one `updateMany` marked with a token, many attempt ends in one `bulkWrite`. Each document's
//! filter still carries the state it expects, so batching changes round trips, not guarantees.

use std::collections::HashMap;

use bson::{doc, oid::ObjectId};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use mongodb::options::UpdateOneModel;

use super::{
    Finish, Finished, StoreError, TaskRecord,
    mongo::{MongoStore, classify},
    mongo_docs::{bdate, claim_docs, due_by, finish_docs, transition_docs},
};
use crate::domain::Event;

impl MongoStore {
    async fn find_ids(&self, filter: bson::Document) -> Result<Vec<TaskRecord>, StoreError> {
        self.tasks().find(filter).await.map_err(classify)?.try_collect().await.map_err(classify)
    }

    pub(super) async fn take_due_publishes_impl(
        &self,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<TaskRecord>, StoreError> {
        let due = doc! {"publish_due_at": due_by(now)};
        let ids: Vec<String> = self
            .tasks()
            .clone_with_type::<bson::Document>()
            .find(due.clone())
            .sort(doc! {"publish_due_at": 1})
            .limit(i64::from(limit))
            .projection(doc! {"_id": 1})
            .await
            .map_err(classify)?
            .try_collect::<Vec<_>>()
            .await
            .map_err(classify)?
            .iter()
            .filter_map(|d| d.get_str("_id").ok().map(str::to_owned))
            .collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // Still due means nobody else took it (a taker moves it into the future); the token
        // tells this take's documents from anyone else's in the read that follows.
        let token = ObjectId::new().to_hex();
        let mut filter = doc! {"_id": {"$in": &ids}};
        filter.extend(due);
        let taken = self
            .tasks()
            .update_many(filter, doc! {"$set": {"publish_due_at": bdate(until), "publish_token": &token}})
            .await
            .map_err(classify)?;
        if taken.modified_count == 0 {
            return Ok(Vec::new());
        }
        self.find_ids(doc! {"_id": {"$in": &ids}, "publish_token": &token}).await
    }

    pub(super) async fn claim_batch_impl(
        &self,
        task_ids: Vec<String>,
        lease_until: DateTime<Utc>,
    ) -> Result<Vec<TaskRecord>, StoreError> {
        // The token tells this batch's claims from anyone else's in the read that follows.
        let token = ObjectId::new().to_hex();
        let (due, update) = claim_docs(lease_until, Some(&token));
        let (filter, update) = transition_docs(doc! {"_id": {"$in": &task_ids}}, Event::Claim, due, update);
        let claimed = self.tasks().update_many(filter, update).await.map_err(classify)?;
        if claimed.modified_count == 0 {
            return Ok(Vec::new());
        }
        self.find_ids(doc! {"_id": {"$in": &task_ids}, "claim_token": &token}).await
    }

    pub(super) async fn finish_batch_impl(&self, finishes: Vec<Finish>) -> Vec<Result<Finished, StoreError>> {
        let namespace = self.tasks().namespace();
        let mut models = Vec::with_capacity(finishes.len());
        for f in &finishes {
            match finish_docs(f.attempt, f.elapsed_ms, f.steps.clone(), f.outcome.clone()) {
                Ok((event, extra, update)) => {
                    let (filter, update) = transition_docs(doc! {"_id": &f.task_id}, event, extra, update);
                    models.push(
                        UpdateOneModel::builder().namespace(namespace.clone()).filter(filter).update(update).build(),
                    );
                }
                Err(e) => return finishes.iter().map(|_| Err(e.clone())).collect(),
            }
        }
        let written = match self.database().client().bulk_write(models).ordered(false).verbose_results().await {
            Ok(result) => result.update_results,
            // Unknown which landed: answer item by item (each is a conditional update, safe to repeat).
            Err(_) => return self.finish_one_by_one(finishes).await,
        };
        let wanted: Vec<&str> = finishes.iter().filter(|f| f.read_back).map(|f| f.task_id.as_str()).collect();
        let mut records: HashMap<String, TaskRecord> = if wanted.is_empty() {
            HashMap::new()
        } else {
            match self.find_ids(doc! {"_id": {"$in": wanted}}).await {
                Ok(found) => found.into_iter().map(|t| (t.task_id.clone(), t)).collect(),
                Err(e) => return finishes.iter().map(|_| Err(e.clone())).collect(),
            }
        };
        finishes
            .iter()
            .enumerate()
            .map(|(i, f)| {
                if written.get(&i).is_none_or(|r| r.matched_count != 1) {
                    return Ok(Finished::Missed);
                }
                let record = if f.read_back { records.remove(&f.task_id).map(Box::new) } else { None };
                Ok(Finished::Written(record))
            })
            .collect()
    }

    async fn finish_one_by_one(&self, finishes: Vec<Finish>) -> Vec<Result<Finished, StoreError>> {
        use super::TaskStore;
        let mut out = Vec::with_capacity(finishes.len());
        for f in finishes {
            out.push(
                self.finish(&f.task_id, f.attempt, f.elapsed_ms, f.steps, f.outcome)
                    .await
                    .map(|t| t.map_or(Finished::Missed, |t| Finished::Written(Some(Box::new(t))))),
            );
        }
        out
    }
}
