//! Retention for [`MongoStore`]: finished tasks past their retention get an `expire_at` date, and
//! the server's TTL monitor deletes them (index `task_expiry`, see `mongo_indexes`). The store
//! only marks; the deletion itself is the server's, by its own clock. It must never mark a task
//! whose outcome Camunda is still owed, or one whose report was given up (an operator may still
//! re-send it).

use std::time::Duration;

use bson::{Document, doc};
use futures::TryStreamExt;

use super::{StoreError, clock::RANGE_SLACK, mongo::classify, mongo_docs::bdate};
use crate::store::MongoStore;

/// The tasks one retention applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicScope {
    /// The tasks of one topic (its own `retention_days`).
    Topic(String),
    /// The tasks of every topic but these (the default retention; also topics no longer served).
    AllBut(Vec<String>),
}

const FINAL: [&str; 3] = ["succeeded", "failed", "cancelled"];

/// Report states after which nothing more is owed to Camunda, or nothing ever was.
/// `pending` is owed; `report_failed` waits for a re-send by hand, so it is kept.
const SETTLED: [&str; 3] = ["not_applicable", "reported", "completed_elsewhere"];

impl MongoStore {
    pub(super) async fn mark_expired_impl(
        &self,
        scope: &TopicScope,
        retention: Duration,
        limit: u32,
    ) -> Result<u64, StoreError> {
        let Ok(keep) = chrono::Duration::from_std(retention) else { return Ok(0) };
        // A candidate bound only: the TTL monitor decides by the server's own clock, on a date
        // computed from the task's own `completed_at`, so an early mark deletes nothing early.
        let Some(bound) = (self.server_now().await? + RANGE_SLACK).checked_sub_signed(keep) else { return Ok(0) };
        let bound = bdate(bound);
        // Completed after it was created: the creation range is what an index narrows (the
        // `topic_created` or `created_desc` index; SecantusDB picks the first clause an index
        // serves, so the indexed fields come first).
        let mut filter = match scope {
            TopicScope::Topic(topic) => doc! {"topic": topic, "created_at": {"$lte": bound}},
            TopicScope::AllBut(topics) => doc! {"created_at": {"$lte": bound}, "topic": {"$nin": topics.clone()}},
        };
        filter.extend(doc! {
            "completed_at": {"$lte": bound},
            "status": {"$in": FINAL.to_vec()},
            "camunda.report_state": {"$in": SETTLED.to_vec()},
            "expire_at": {"$exists": false},
        });
        let ids: Vec<String> = self
            .tasks()
            .clone_with_type::<Document>()
            .find(filter.clone())
            .projection(doc! {"_id": 1})
            .limit(i64::from(limit))
            .await
            .map_err(classify)?
            .try_collect::<Vec<_>>()
            .await
            .map_err(classify)?
            .iter()
            .filter_map(|d| d.get_str("_id").ok().map(str::to_owned))
            .collect();
        if ids.is_empty() {
            return Ok(0);
        }
        // The filter again: a task retried by hand since the read is final no more.
        let ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX / 4);
        let mark = vec![doc! {"$set": {"expire_at": {"$add": ["$completed_at", ms]}}}];
        self.update_among(&ids, &filter, mark).await
    }
}
