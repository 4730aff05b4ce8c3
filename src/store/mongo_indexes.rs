//! The indexes of [`MongoStore`]'s collections, created at start-up. Each one serves a query of
//! the store; an index no query uses only makes every insert dearer (the per-index cost is
//! measured in `docs/performance.md`, "Indexes and growth"). Indexes on fields few tasks carry are
//! partial, so a new task writes no entry to them. Indexes of earlier versions that no query
//! needs any more are dropped here, so an existing deployment converges on the same set.
//!
//! A partial index serves a query only where the query's own conditions imply its filter, on
//! MongoDB and on the test server alike (SecantusDB proves it for equalities and `$gt`/`$gte`/
//! `$lt`/`$lte` bounds, never for `$exists`), so each filter below is one the queries imply.

use std::time::Duration;

use bson::{DateTime as BsonDate, Document, doc};
use mongodb::{IndexModel, options::IndexOptions};

use super::{StoreError, mongo::classify};
use crate::store::MongoStore;

/// Indexes of `tasks` created by earlier versions and since replaced (by a partial index under a
/// new name: an index's options cannot be changed in place).
const OBSOLETE: [&str; 4] = ["publish_due", "lease", "source_status", "report_due"];

/// The report states `report_owed` holds, as a range of their stored names (see below).
const OWED_RANGE: (&str, &str) = ("pending", "report_failed");

fn index(keys: Document, name: &str) -> IndexModel {
    IndexModel::builder().keys(keys).options(IndexOptions::builder().name(name.to_owned()).build()).build()
}

fn partial(keys: Document, name: &str, filter: Document) -> IndexModel {
    let options = IndexOptions::builder().name(name.to_owned()).partial_filter_expression(filter).build();
    IndexModel::builder().keys(keys).options(options).build()
}

/// The secondary indexes of `tasks`, each with the queries it serves.
pub fn task_indexes() -> Vec<IndexModel> {
    vec![
        // GET /tasks, newest first with keyset pagination; the retention sweep of topics without
        // their own retention (a creation-time range).
        index(doc! {"created_at": -1, "_id": -1}, "created_desc"),
        // GET /tasks?status=; a publish debt passed on (queued, creation range); stale tasks
        // (queued by creation time, retrying by due time).
        index(doc! {"status": 1, "created_at": -1, "_id": -1}, "status_created"),
        // GET /tasks?topic=; the retention sweep of a topic (its creation-time range).
        index(doc! {"topic": 1, "created_at": -1, "_id": -1}, "topic_created"),
        // GET /tasks?worker_id=.
        index(doc! {"worker_id": 1, "created_at": -1, "_id": -1}, "worker_created"),
        // The relay's take of owed publishes. Only tasks owing one carry the field (those a
        // publish debt stands for never do), and the take's range starts at the epoch, which
        // implies the filter.
        partial(
            doc! {"publish_due_at": 1},
            "publish_owed",
            doc! {"publish_due_at": {"$gte": BsonDate::from_millis(0)}},
        ),
        // Expired leases: only running tasks hold one.
        partial(doc! {"status": 1, "lease_until": 1}, "lease_processing", doc! {"status": "processing"}),
        // Owed reports (due, counted), given-up reports (counted): every query names one of the
        // two states by equality, which implies this range. It holds exactly those two of the
        // report states ("pending" ≤ s ≤ "report_failed" by byte order; "reported",
        // "not_applicable" and "completed_elsewhere" fall outside), so the tasks with no
        // Camunda link and the reported ones — nearly all of a large store — have no entry.
        partial(
            doc! {"camunda.report_state": 1, "camunda.report_due_at": 1},
            "report_owed",
            doc! {"camunda.report_state": {"$gte": OWED_RANGE.0, "$lte": OWED_RANGE.1}},
        ),
        // Pull mode: unfinished pulled tasks (capacity), the unstarted ones of a replica, their
        // Camunda locks. Push topics never carry `source: camunda`.
        partial(doc! {"source": 1, "status": 1}, "pulled", doc! {"source": "camunda"}),
    ]
}

/// The TTL index retention works through: the server deletes a task once its `expire_at` has
/// passed (see `mongo_retention`). Only tasks marked to expire are in it.
fn expiry_index() -> IndexModel {
    let options = IndexOptions::builder()
        .name("task_expiry".to_owned())
        .expire_after(Duration::ZERO)
        .partial_filter_expression(doc! {"expire_at": {"$exists": true}})
        .build();
    IndexModel::builder().keys(doc! {"expire_at": 1}).options(options).build()
}

impl MongoStore {
    /// Creates the indexes (idempotent) and drops those of earlier versions.
    pub async fn ensure_indexes(&self) -> Result<(), StoreError> {
        let existing: Vec<String> = self.tasks().list_index_names().await.unwrap_or_default();
        for name in OBSOLETE.iter().filter(|name| existing.iter().any(|e| e == *name)) {
            self.tasks().drop_index(*name).await.map_err(classify)?;
            tracing::info!(index = name, "dropped an index no query uses any more");
        }
        let mut models = task_indexes();
        models.push(expiry_index());
        self.tasks().create_indexes(models).await.map_err(classify)?;
        self.database()
            .collection::<Document>(super::mongo_debts::DEBTS)
            .create_index(index(doc! {"due_at": 1}, "debt_due"))
            .await
            .map_err(classify)?;
        Ok(())
    }

    /// The names of the secondary indexes on `tasks` as the server lists them.
    pub async fn task_index_names(&self) -> Result<Vec<String>, StoreError> {
        let mut names: Vec<String> = self.tasks().list_index_names().await.map_err(classify)?;
        names.retain(|n| n != "_id_");
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ReportState;

    #[test]
    fn the_owed_range_holds_the_two_states_the_report_queries_name_and_no_other() {
        let all = [
            ReportState::NotApplicable,
            ReportState::Pending,
            ReportState::Reported,
            ReportState::CompletedElsewhere,
            ReportState::ReportFailed,
        ];
        for state in all {
            // Exhaustive: a new state has to be placed in or out of the index here.
            let owed = match state {
                ReportState::Pending | ReportState::ReportFailed => true,
                ReportState::NotApplicable | ReportState::Reported | ReportState::CompletedElsewhere => false,
            };
            let stored = bson::to_bson(&state).expect("a state serializes");
            let name = stored.as_str().expect("stored as a string");
            assert_eq!((OWED_RANGE.0..=OWED_RANGE.1).contains(&name), owed, "{name}");
        }
    }
}
