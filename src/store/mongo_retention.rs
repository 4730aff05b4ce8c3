//! Retention for [`MongoStore`]: finished tasks past their retention get an `expire_at` date, and
//! the server's TTL monitor deletes them (index `task_expiry`, see `mongo_indexes`). The store
//! only marks; the deletion itself is the server's, by its own clock. It must never mark a task
//! whose outcome Camunda is still owed (a report given up, `report_failed`, is settled: it had its
//! retention to be re-sent by hand).

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

/// A final task whose outcome Camunda is owed: never marked.
const OWED: &str = "pending";

/// Whether a candidate (with the fields the sweep reads) may be marked: final, completed by
/// `bound`, its report not owed, not marked yet.
fn eligible(task: &Document, bound: bson::DateTime) -> bool {
    let state = task.get_document("camunda").ok().and_then(|c| c.get_str("report_state").ok());
    task.get_str("status").is_ok_and(|s| FINAL.contains(&s))
        && task.get_datetime("completed_at").is_ok_and(|at| *at <= bound)
        && state != Some(OWED)
        && !task.contains_key("expire_at")
}

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
        // `topic_created` or `created_desc` index). The candidates are read with that range
        // alone and judged here: SecantusDB, given more clauses, scans the topic's every task.
        let range = match scope {
            TopicScope::Topic(topic) => doc! {"topic": topic, "created_at": {"$lte": bound}},
            TopicScope::AllBut(topics) => doc! {"created_at": {"$lte": bound}, "topic": {"$nin": topics.clone()}},
        };
        let fields = doc! {"_id": 1, "status": 1, "completed_at": 1, "camunda.report_state": 1, "expire_at": 1};
        let candidates: Vec<Document> = self
            .tasks()
            .clone_with_type::<Document>()
            .find(range)
            .projection(fields)
            .limit(i64::from(limit) * 2)
            .await
            .map_err(classify)?
            .try_collect()
            .await
            .map_err(classify)?;
        let ids: Vec<&str> = candidates
            .iter()
            .filter(|d| eligible(d, bound))
            .filter_map(|d| d.get_str("_id").ok())
            .take(limit as usize)
            .collect();
        if ids.is_empty() {
            return Ok(0);
        }
        // The filter again: a task retried by hand since the read is final no more.
        let ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX / 4);
        let mark = vec![doc! {"$set": {"expire_at": {"$add": ["$completed_at", ms]}}}];
        let still = doc! {
            "status": {"$in": FINAL.to_vec()},
            "completed_at": {"$lte": bound},
            "camunda.report_state": {"$ne": OWED},
            "expire_at": {"$exists": false},
        };
        self.update_among(&ids, &still, mark).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_final_settled_unmarked_tasks_past_the_bound_are_eligible() {
        let bound = bson::DateTime::from_millis(10_000);
        let task = |status: &str, at: i64, state: &str| {
            doc! {"_id": "t", "status": status, "completed_at": bson::DateTime::from_millis(at),
            "camunda": {"report_state": state}}
        };
        assert!(eligible(&task("succeeded", 9_000, "not_applicable"), bound));
        assert!(eligible(&task("cancelled", 10_000, "report_failed"), bound));
        assert!(!eligible(&task("failed", 9_000, "pending"), bound), "Camunda is owed its outcome");
        assert!(!eligible(&task("retrying", 9_000, "not_applicable"), bound), "not final");
        assert!(!eligible(&task("succeeded", 10_001, "reported"), bound), "too recent");
        let mut marked = task("succeeded", 9_000, "reported");
        marked.insert("expire_at", bound);
        assert!(!eligible(&marked, bound), "marked already");
    }
}
