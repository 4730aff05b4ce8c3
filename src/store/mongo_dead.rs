//! The dead-letter part of [`MongoStore`]: records of dead-lettered messages in their own
//! collection (`dead_letters`, expired by a TTL index on `expire_at`, so it stays bounded), and
//! handing a dead-lettered task back to the relay with one conditional update judged by the
//! server's clock. It must not touch a task that is running or finished.

use std::time::Duration;

use bson::{Bson, Document, doc, oid::ObjectId};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use mongodb::{Collection, IndexModel, options::IndexOptions};

use super::{DeadLetter, DeadLetterQuery, StoreError, mongo::classify};
use crate::store::MongoStore;

pub(super) const DEAD_LETTERS: &str = "dead_letters";

fn bdate(at: DateTime<Utc>) -> bson::DateTime {
    bson::DateTime::from_chrono(at)
}

impl MongoStore {
    fn dead_letters_collection(&self) -> Collection<Document> {
        self.database().collection(DEAD_LETTERS)
    }

    /// The TTL index that bounds the collection: each record carries its own `expire_at`, so a
    /// changed `DEAD_LETTER_RETENTION_DAYS` applies to new records without rebuilding the index.
    pub async fn ensure_dead_letter_indexes(&self) -> Result<(), StoreError> {
        let options =
            IndexOptions::builder().name("dead_letter_expiry".to_owned()).expire_after(Duration::from_secs(0)).build();
        let model = IndexModel::builder().keys(doc! {"expire_at": 1}).options(options).build();
        self.dead_letters_collection().create_index(model).await.map_err(classify)?;
        Ok(())
    }

    pub(super) async fn record_dead_letter_impl(
        &self,
        letter: DeadLetter,
        retention: Duration,
    ) -> Result<(), StoreError> {
        let retention = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::days(14));
        let opt = |v: Option<String>| v.map_or(Bson::Null, Bson::String);
        let document = doc! {
            "task_id": opt(letter.task_id),
            "topic": opt(letter.topic),
            "routing_key": letter.routing_key,
            "reason": opt(letter.reason),
            "count": letter.count.map_or(Bson::Null, Bson::Int64),
            "queue": opt(letter.queue),
            "died_at": letter.died_at.map_or(Bson::Null, |t| Bson::DateTime(bdate(t))),
            "received_at": bdate(letter.received_at),
            "expire_at": bdate(letter.received_at + retention),
            "body": letter.body,
            "body_bytes": i64::try_from(letter.body_bytes).unwrap_or(i64::MAX),
            "body_truncated": letter.body_truncated,
            "republished": letter.republished,
        };
        self.dead_letters_collection().insert_one(document).await.map_err(classify)?;
        Ok(())
    }

    pub(super) async fn republish_dead_lettered_impl(&self, task_id: &str) -> Result<bool, StoreError> {
        let filter = doc! {"_id": task_id, "status": {"$in": ["queued", "retrying"]}};
        // Due now by the server's clock; a retry whose backoff has not run out stays due when it
        // does (its delivery would be refused as early anyway).
        let due = doc! {"$cond": [
            {"$eq": ["$status", "retrying"]},
            {"$max": ["$$NOW", {"$ifNull": ["$next_attempt_at", "$$NOW"]}]},
            "$$NOW",
        ]};
        let pipeline = vec![doc! {"$set": {"publish_due_at": due}}];
        let result = self.tasks().update_one(filter, pipeline).await.map_err(classify)?;
        Ok(result.matched_count > 0)
    }

    pub(super) async fn dead_letters_impl(&self, query: &DeadLetterQuery) -> Result<Vec<DeadLetter>, StoreError> {
        let mut filter = Document::new();
        if let Some(topic) = &query.topic {
            filter.insert("topic", topic.as_str());
        }
        if let Some(task_id) = &query.task_id {
            filter.insert("task_id", task_id.as_str());
        }
        if let Some(after) = &query.after {
            let after = ObjectId::parse_str(after).map_err(|_| StoreError::Other("not a dead-letter id".into()))?;
            filter.insert("_id", doc! {"$lt": after});
        }
        // `_id` order is insertion order to the second and then per process: newest first
        // without an index of its own.
        let found: Vec<Document> = self
            .dead_letters_collection()
            .find(filter)
            .sort(doc! {"_id": -1})
            .limit(i64::from(query.limit))
            .await
            .map_err(classify)?
            .try_collect()
            .await
            .map_err(classify)?;
        Ok(found.iter().map(read).collect())
    }
}

/// A stored record back into its struct; a missing or odd field reads as empty.
fn read(d: &Document) -> DeadLetter {
    let text = |k: &str| d.get_str(k).ok().map(str::to_owned);
    let date = |k: &str| d.get_datetime(k).ok().map(|t| t.to_chrono());
    DeadLetter {
        id: d.get_object_id("_id").map(|id| id.to_hex()).unwrap_or_default(),
        task_id: text("task_id"),
        topic: text("topic"),
        routing_key: text("routing_key").unwrap_or_default(),
        reason: text("reason"),
        count: d.get_i64("count").ok(),
        queue: text("queue"),
        died_at: date("died_at"),
        received_at: date("received_at").unwrap_or_default(),
        body: text("body").unwrap_or_default(),
        body_bytes: d.get_i64("body_bytes").ok().and_then(|n| u64::try_from(n).ok()).unwrap_or(0),
        body_truncated: d.get_bool("body_truncated").unwrap_or(false),
        republished: d.get_bool("republished").unwrap_or(false),
    }
}
