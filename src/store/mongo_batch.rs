//! Batched transitions for [`MongoStore`] (group commit on the consumer side): many claims in
//! one `updateMany` marked with a token, many attempt ends in one `bulkWrite`. Each document's
//! filter still carries the state it expects, so batching changes round trips, not guarantees.

use std::collections::HashMap;

use bson::{doc, oid::ObjectId};
use futures::TryStreamExt;
use mongodb::options::{UpdateModifications, UpdateOneModel};

use super::{
    Finish, Finished, StoreError, TaskRecord,
    clock::RANGE_SLACK,
    mongo::{MongoStore, classify},
    mongo_change::{Change, due},
    mongo_docs::{claim_change, claim_guard, due_by, finish_docs, transition_docs},
};
use crate::domain::Event;

/// The most task ids one command names in an `$in`. SecantusDB (the MongoDB-wire test server)
/// checks every candidate document against the whole list, so one command costs ids²: with 1 000
/// ids a confirm record took seconds and the ledger fell further behind the larger its next list
/// grew. Per-document cost measured on it (update / read): 0.75 / 0.15 ms at 32 ids, 0.90 / 0.26 ms
/// at 128. MongoDB itself does not care; the commands just get smaller.
pub(super) const IN_CHUNK: usize = 100;

/// `{_id: {$in: ids}}` and the conditions of `rest`, the id list first (SecantusDB picks the
/// first clause that an index serves).
fn among<S: AsRef<str>>(ids: &[S], rest: &bson::Document) -> bson::Document {
    let mut filter = doc! {"_id": {"$in": ids.iter().map(AsRef::as_ref).collect::<Vec<&str>>()}};
    filter.extend(rest.clone());
    filter
}

/// How often a token-marked step is tried while the store is unavailable, and the first wait
/// between tries (doubling).
const TOKEN_TRIES: u32 = 4;
const TOKEN_RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(250);

/// `op` (a step whose repeat is harmless), tried again while the store is unavailable; its
/// value and how many tries it took.
async fn same_token<T, F, Fut>(mut op: F) -> Result<(T, u32), StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let (mut wait, mut tried) = (TOKEN_RETRY_FIRST, 1);
    loop {
        match op().await {
            Err(StoreError::Unavailable(error)) if tried < TOKEN_TRIES => {
                tracing::warn!(%error, tried, "the store did not answer a step of a batch claim; trying it again under the same token");
            }
            other => return other.map(|value| (value, tried)),
        }
        tokio::time::sleep(wait).await;
        (wait, tried) = (wait * 2, tried + 1);
    }
}

impl MongoStore {
    /// The ids of the first `limit` tasks that match `filter`, in `order`: only the ids travel
    /// (a read that picks what a later conditional update then takes).
    pub(super) async fn first_ids(
        &self,
        filter: bson::Document,
        order: bson::Document,
        limit: i64,
    ) -> Result<Vec<String>, StoreError> {
        let found: Vec<bson::Document> = self
            .tasks()
            .clone_with_type::<bson::Document>()
            .find(filter)
            .sort(order)
            .limit(limit)
            .projection(doc! {"_id": 1})
            .await
            .map_err(classify)?
            .try_collect()
            .await
            .map_err(classify)?;
        Ok(found.iter().filter_map(|d| d.get_str("_id").ok().map(str::to_owned)).collect())
    }

    async fn find_ids(&self, filter: bson::Document) -> Result<Vec<TaskRecord>, StoreError> {
        self.tasks().find(filter).await.map_err(classify)?.try_collect().await.map_err(classify)
    }

    /// The records among `ids` that also match `rest`, read [`IN_CHUNK`] ids at a time.
    async fn find_among<S: AsRef<str>>(&self, ids: &[S], rest: bson::Document) -> Result<Vec<TaskRecord>, StoreError> {
        let mut found = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(IN_CHUNK) {
            found.extend(self.find_ids(among(chunk, &rest)).await?);
        }
        Ok(found)
    }

    /// Applies `update` to the documents among `ids` that match `rest`, [`IN_CHUNK`] ids per
    /// command; how many it modified.
    pub(super) async fn update_among<S: AsRef<str>>(
        &self,
        ids: &[S],
        rest: &bson::Document,
        update: impl Into<UpdateModifications> + Clone,
    ) -> Result<u64, StoreError> {
        let mut modified = 0;
        for chunk in ids.chunks(IN_CHUNK) {
            modified +=
                self.tasks().update_many(among(chunk, rest), update.clone()).await.map_err(classify)?.modified_count;
        }
        Ok(modified)
    }

    pub(super) async fn take_due_publishes_impl(
        &self,
        hold: std::time::Duration,
        limit: u32,
    ) -> Result<Vec<TaskRecord>, StoreError> {
        // The index narrows to publishes about to fall due by the server's clock; the guard in
        // the take decides by it exactly.
        let candidates = doc! {"publish_due_at": due_by(self.server_now().await? + RANGE_SLACK)};
        let ids = self.first_ids(candidates.clone(), doc! {"publish_due_at": 1}, i64::from(limit)).await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // Still due means nobody else took it (a taker moves it into the future); the token
        // tells this take's documents from anyone else's in the read that follows.
        let token = ObjectId::new().to_hex();
        let take = Change::new().after("publish_due_at", hold).set("publish_token", token.as_str());
        if self.update_among(&ids, &candidates, take.guarded(due("publish_due_at"))).await? == 0 {
            return Ok(Vec::new());
        }
        self.find_among(&ids, doc! {"publish_token": &token}).await
    }

    pub(super) async fn claim_batch_impl(
        &self,
        task_ids: Vec<String>,
        lease: std::time::Duration,
    ) -> Result<Vec<TaskRecord>, StoreError> {
        // The token tells this batch's claims from anyone else's in the read that follows. An
        // answer lost to an outage leaves unknown which claims landed: the same update is tried
        // again under the same token, so the read finds them either way (a new token would
        // leave them running nowhere until their lease ran out).
        let token = ObjectId::new().to_hex();
        let (expected, change) = transition_docs(doc! {}, Event::Claim, doc! {}, claim_change(lease, &token));
        let update = change.guarded(claim_guard());
        let (modified, tries) = same_token(|| self.update_among(&task_ids, &expected, update.clone())).await?;
        if modified == 0 && tries == 1 {
            return Ok(Vec::new());
        }
        let (claimed, _) = same_token(|| self.find_among(&task_ids, doc! {"claim_token": &token})).await?;
        Ok(claimed)
    }

    pub(super) async fn finish_batch_impl(&self, finishes: Vec<Finish>) -> Vec<Result<Finished, StoreError>> {
        let namespace = self.tasks().namespace();
        let mut models = Vec::with_capacity(finishes.len());
        for f in &finishes {
            match finish_docs(f.attempt, f.elapsed_ms, f.steps.clone(), f.outcome.clone()) {
                Ok((event, extra, change)) => {
                    let (filter, change) = transition_docs(doc! {"_id": &f.task_id}, event, extra, change);
                    models.push(
                        UpdateOneModel::builder()
                            .namespace(namespace.clone())
                            .filter(filter)
                            .update(change.pipeline())
                            .build(),
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
            match self.find_among(&wanted, doc! {}).await {
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
