//! The indexes of [`MongoStore`]'s collections, created at start-up. Each one serves a query of
//! the store; an index no query uses only makes every insert dearer.

use bson::{Document, doc};
use mongodb::{IndexModel, options::IndexOptions};

use super::{StoreError, mongo::classify};
use crate::store::MongoStore;

fn index(keys: Document, name: &str) -> IndexModel {
    IndexModel::builder().keys(keys).options(IndexOptions::builder().name(name.to_owned()).build()).build()
}

impl MongoStore {
    /// Indexes serving the list filters (newest first), the statistics, and the relay's sweeps.
    pub async fn ensure_indexes(&self) -> Result<(), StoreError> {
        let models = vec![
            index(doc! {"created_at": -1, "_id": -1}, "created_desc"),
            index(doc! {"status": 1, "created_at": -1, "_id": -1}, "status_created"),
            index(doc! {"topic": 1, "created_at": -1, "_id": -1}, "topic_created"),
            index(doc! {"worker_id": 1, "created_at": -1, "_id": -1}, "worker_created"),
            index(doc! {"publish_due_at": 1}, "publish_due"),
            index(doc! {"status": 1, "lease_until": 1}, "lease"),
            index(doc! {"camunda.report_state": 1, "camunda.report_due_at": 1}, "report_due"),
            index(doc! {"source": 1, "status": 1}, "source_status"),
        ];
        self.tasks().create_indexes(models).await.map_err(classify)?;
        self.database()
            .collection::<Document>(super::mongo_debts::DEBTS)
            .create_index(index(doc! {"due_at": 1}, "debt_due"))
            .await
            .map_err(classify)?;
        Ok(())
    }
}
