//! The read side of [`MongoStore`]: the task list (filters, newest first, keyset pagination)
//! and the statistics (one aggregation per grouping, run concurrently).

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
        let raw = self.database().collection::<Document>("tasks");
        let group = |field: &str| {
            let raw = raw.clone();
            let pipeline = vec![doc! {"$group": {"_id": format!("${field}"), "n": {"$sum": 1}}}];
            async move {
                let docs: Vec<Document> =
                    raw.aggregate(pipeline).await.map_err(classify)?.try_collect().await.map_err(classify)?;
                let mut out: Vec<(String, u64)> =
                    docs.iter().filter_map(|d| Some((d.get_str("_id").ok()?.to_owned(), count(d.get("n")?)))).collect();
                out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                Ok::<_, StoreError>(out)
            }
        };
        let avg_pipeline = vec![
            doc! {"$match": {"status": {"$in": ["succeeded", "failed"]}, "processing_time_ms": {"$ne": null}}},
            doc! {"$group": {"_id": null, "avg": {"$avg": "$processing_time_ms"}}},
        ];
        let average = async {
            let docs: Vec<Document> =
                raw.aggregate(avg_pipeline).await.map_err(classify)?.try_collect().await.map_err(classify)?;
            Ok::<_, StoreError>(docs.first().and_then(|d| d.get("avg")).and_then(bson::Bson::as_f64))
        };
        let (by_status, by_topic, by_worker, average) =
            futures::try_join!(group("status"), group("topic"), group("worker_id"), average)?;
        let by_status: Vec<(TaskStatus, u64)> =
            by_status.into_iter().filter_map(|(s, n)| Some((TaskStatus::parse_label(&s)?, n))).collect();
        Ok(Statistics {
            total: by_status.iter().map(|(_, n)| n).sum(),
            by_status,
            by_topic,
            by_worker,
            average_processing_time_ms: average,
        })
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
