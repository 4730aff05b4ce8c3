//! Stale tasks for [`MongoStore`]: the store's side of "the broker is a cache of the store". A
//! task that should have a message in the broker (queued, or retrying and due) and has waited
//! longer than a bound by the store's clock without being claimed may have lost it (a purged or
//! deleted queue, a dead letter, an exhausted delivery limit). These queries count such tasks per
//! topic and mark some of them to be published again; whether to, and how many, is the relay's
//! call (`crate::resend`), which weighs the counts against what the broker still holds.
//!
//! Marks: `republished_at` (the store's `$$NOW` when a re-send was decided) and
//! `republish_count`. A task re-sent within the bound is not re-sent again.
//!
//! Must not: decide staleness on a replica's own clock (bounds come from the server's clock as
//! measured, see `clock`), or walk the whole collection (every query is led by the state, which
//! the `status_created` index serves, and bounded by age).

use std::time::Duration;

use bson::{Bson, Document, doc};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;

use super::{
    StoreError,
    mongo::{MongoStore, classify},
    mongo_change::Change,
    mongo_docs::bdate,
};

/// Stale tasks of one topic, as [`super::TaskStore::count_stale`] counts them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StaleCount {
    pub topic: String,
    /// Tasks that should have a message in the broker and have waited longer than the bound:
    /// queued since before it, or retrying and due since before it, with no publish owed.
    pub stale: u64,
    /// Of those, the ones re-sent within the bound (their new message is presumably in the
    /// broker; they are not re-sent again yet).
    pub recently_resent: u64,
}

/// The time `after` ago by the store's clock.
fn bound(now: DateTime<Utc>, after: Duration) -> DateTime<Utc> {
    now - chrono::Duration::from_std(after).unwrap_or_else(|_| chrono::Duration::days(365))
}

/// The stale tasks of one state: the state first and the age as a range of the field that says
/// since when the task waits, so the state's index serves it (`created_at`: `status_created`).
fn stale_in(status: &str, since_field: &str, before: DateTime<Utc>) -> Document {
    let mut filter = doc! {"status": status};
    filter.insert(since_field, doc! {"$lte": bdate(before)});
    // An owed or held publish is the relay's ordinary work, not a lost message.
    filter.insert("publish_due_at", doc! {"$exists": false});
    filter
}

/// The two kinds of stale task: queued since before `before` (`created_at`: a queued task is
/// claimed by its first delivery), and retrying whose retry fell due before it.
fn stale_filters(before: DateTime<Utc>) -> [Document; 2] {
    [stale_in("queued", "created_at", before), stale_in("retrying", "next_attempt_at", before)]
}

/// "Not re-sent since `before`".
fn not_resent_since(before: DateTime<Utc>) -> Document {
    doc! {"$or": [{"republished_at": {"$exists": false}}, {"republished_at": {"$lte": bdate(before)}}]}
}

/// A re-send: marked, and its publish owed now by the store's clock (the relay's take sends it).
fn resend_change() -> Vec<Document> {
    Change::new().now("republished_at").inc("republish_count", 1).now("publish_due_at").pipeline()
}

fn as_u64(value: Option<&Bson>) -> u64 {
    match value {
        Some(Bson::Int32(n)) => u64::try_from(*n).unwrap_or(0),
        Some(Bson::Int64(n)) => u64::try_from(*n).unwrap_or(0),
        Some(Bson::Double(n)) if *n > 0.0 => *n as u64,
        _ => 0,
    }
}

impl MongoStore {
    pub(super) async fn count_stale_impl(&self, after: Duration) -> Result<Vec<StaleCount>, StoreError> {
        let before = bound(self.server_now().await?, after);
        let before_ms = before.timestamp_millis();
        let raw = self.tasks().clone_with_type::<Document>();
        let mut counts: Vec<StaleCount> = Vec::new();
        for filter in stale_filters(before) {
            // Dates compared as numbers: the test server compares dates inside expressions
            // wrongly otherwise (see `mongo_change`).
            let resent = doc! {"$gt": [{"$toLong": {"$ifNull": ["$republished_at", Bson::Null]}}, before_ms]};
            let pipeline = vec![
                doc! {"$match": filter},
                doc! {"$group": {
                    "_id": "$topic",
                    "stale": {"$sum": 1},
                    "resent": {"$sum": {"$cond": [resent, 1, 0]}},
                }},
            ];
            let groups: Vec<Document> =
                raw.aggregate(pipeline).await.map_err(classify)?.try_collect().await.map_err(classify)?;
            for group in groups {
                let Ok(topic) = group.get_str("_id") else { continue };
                let (stale, resent) = (as_u64(group.get("stale")), as_u64(group.get("resent")));
                match counts.iter_mut().find(|c| c.topic == topic) {
                    Some(count) => {
                        count.stale += stale;
                        count.recently_resent += resent;
                    }
                    None => counts.push(StaleCount { topic: topic.to_owned(), stale, recently_resent: resent }),
                }
            }
        }
        counts.sort_by(|a, b| a.topic.cmp(&b.topic));
        Ok(counts)
    }

    pub(super) async fn republish_stale_impl(
        &self,
        topic: &str,
        after: Duration,
        limit: u32,
    ) -> Result<u64, StoreError> {
        if limit == 0 {
            return Ok(0);
        }
        let before = bound(self.server_now().await?, after);
        let mut marked = 0u64;
        for (filter, oldest_first) in stale_filters(before).into_iter().zip([doc! {"created_at": 1}, doc! {}]) {
            let left = u64::from(limit).saturating_sub(marked);
            if left == 0 {
                break;
            }
            let mut filter = filter;
            filter.insert("topic", topic);
            filter.extend(not_resent_since(before));
            // Oldest first: the longest-waiting task is the likeliest to have lost its message
            // (a queue hands out its oldest first).
            let ids = self.first_ids(filter.clone(), oldest_first, i64::try_from(left).unwrap_or(i64::MAX)).await?;
            // The filter again in the update: a task another relay marked (or a consumer claimed)
            // since the read no longer matches, so each re-send is decided once.
            marked += self.update_among(&ids, &filter, resend_change()).await?;
        }
        Ok(marked)
    }

    pub(super) async fn owe_publish_again_impl(&self, task_ids: &[String], grace: Duration) -> Result<u64, StoreError> {
        if task_ids.is_empty() {
            return Ok(0);
        }
        // Never claimed (a claim counts an attempt), no publish owed, and old enough that the
        // publish of its own submission (or its window's debt) has had its chance.
        let filter = doc! {
            "status": "queued",
            "attempts": 0,
            "publish_due_at": {"$exists": false},
            "created_at": {"$lte": bdate(bound(self.server_now().await?, grace))},
        };
        self.update_among(task_ids, &filter, resend_change()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_filters_are_led_by_the_state_and_skip_owed_publishes() {
        let before = Utc::now();
        let [queued, retrying] = stale_filters(before);
        assert_eq!(queued.keys().next().map(String::as_str), Some("status"));
        assert_eq!(queued.get_str("status").ok(), Some("queued"));
        assert!(queued.get_document("created_at").is_ok_and(|d| d.contains_key("$lte")));
        assert_eq!(retrying.get_str("status").ok(), Some("retrying"));
        assert!(retrying.get_document("next_attempt_at").is_ok_and(|d| d.contains_key("$lte")));
        for filter in [queued, retrying] {
            assert_eq!(filter.get_document("publish_due_at").ok(), Some(&doc! {"$exists": false}));
        }
    }

    #[test]
    fn a_bound_is_the_given_time_ago() {
        let now = Utc::now();
        assert_eq!(bound(now, Duration::from_secs(30)), now - chrono::Duration::seconds(30));
    }
}
