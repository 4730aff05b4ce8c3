//! The read side of [`MongoStore`]: the task list (filters, newest first, keyset pagination)
//! and the statistics (one scan grouped by status, topic and worker; `crate::statistics` caches
//! it).

use std::collections::BTreeMap;

use bson::{DateTime as BsonDate, Document, doc};
use futures::TryStreamExt;

use super::{ListQuery, Statistics, StoreError, TaskRecord, mongo::classify};
use crate::{domain::TaskStatus, store::MongoStore};

impl MongoStore {
    pub(super) async fn list_impl(&self, query: &ListQuery) -> Result<Vec<TaskRecord>, StoreError> {
        let mut filter = Document::new();
        if let Some(status) = query.status {
            filter.insert("status", status.as_str());
        }
        if let Some(topic) = &query.topic {
            filter.insert("topic", topic.as_str());
        }
        if let Some(worker) = &query.worker_id {
            filter.insert("worker_id", worker.as_str());
        }
        if let Some((millis, id)) = &query.after {
            let at = BsonDate::from_millis(*millis);
            filter.insert("$or", vec![doc! {"created_at": {"$lt": at}}, doc! {"created_at": at, "_id": {"$lt": id}}]);
        }
        self.tasks()
            .find(filter)
            .sort(doc! {"created_at": -1, "_id": -1})
            .limit(i64::from(query.limit))
            .await
            .map_err(classify)?
            .try_collect()
            .await
            .map_err(classify)
    }

    pub(super) async fn statistics_impl(&self) -> Result<Statistics, StoreError> {
        // One scan, grouped by (status, topic, worker) and folded here: the groups are few next to
        // the tasks, and a scan per grouping read the collection four times.
        let timed = doc! {"$and": [
            {"$in": ["$status", ["succeeded", "failed"]]},
            {"$ne": [{"$ifNull": ["$processing_time_ms", null]}, null]},
        ]};
        let pipeline = vec![doc! {"$group": {
            "_id": {"s": "$status", "t": "$topic", "w": "$worker_id"},
            "n": {"$sum": 1},
            "time_sum": {"$sum": {"$cond": [&timed, "$processing_time_ms", 0]}},
            "time_n": {"$sum": {"$cond": [&timed, 1, 0]}},
        }}];
        let raw = self.database().collection::<Document>("tasks");
        let mut groups = raw.aggregate(pipeline).await.map_err(classify)?;
        let mut by: [BTreeMap<String, u64>; 3] = Default::default();
        let (mut time_sum, mut time_n) = (0.0, 0u64);
        while let Some(group) = groups.try_next().await.map_err(classify)? {
            let n = group.get("n").map_or(0, count);
            let key = group.get_document("_id").ok();
            for (i, field) in ["s", "t", "w"].iter().enumerate() {
                if let Some(value) = key.and_then(|k| k.get_str(field).ok()) {
                    *by[i].entry(value.to_owned()).or_default() += n;
                }
            }
            time_sum += group.get("time_sum").and_then(number).unwrap_or(0.0);
            time_n += group.get("time_n").map_or(0, count);
        }
        let [by_status, by_topic, by_worker] = by.map(sorted);
        let by_status: Vec<(TaskStatus, u64)> =
            by_status.into_iter().filter_map(|(s, n)| Some((TaskStatus::parse_label(&s)?, n))).collect();
        Ok(Statistics {
            total: by_status.iter().map(|(_, n)| n).sum(),
            by_status,
            by_topic,
            by_worker,
            average_processing_time_ms: (time_n > 0).then(|| time_sum / time_n as f64),
        })
    }
}

/// Most first, then by name.
fn sorted(counts: BTreeMap<String, u64>) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = counts.into_iter().collect();
    out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    out
}

fn number(b: &bson::Bson) -> Option<f64> {
    match b {
        bson::Bson::Int32(n) => Some(f64::from(*n)),
        bson::Bson::Int64(n) => Some(*n as f64),
        bson::Bson::Double(n) => Some(*n),
        _ => None,
    }
}

fn count(b: &bson::Bson) -> u64 {
    match b {
        bson::Bson::Int32(n) => u64::try_from(*n).unwrap_or(0),
        bson::Bson::Int64(n) => u64::try_from(*n).unwrap_or(0),
        bson::Bson::Double(n) => *n as u64,
        _ => 0,
    }
}
