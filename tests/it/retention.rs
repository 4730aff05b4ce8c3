//! Bounded growth: finished tasks past their retention are deleted by the store's TTL index (and
//! none whose report Camunda is still owed, nor a newer one, nor one retried by hand), the indexes
//! converge on the current set, and statistics answer from a cache that shows its age.

use std::time::{Duration, Instant};

use bson::{Document, doc};
use serde_json::json;

use crate::helpers::{AppOptions, TestApp, body, eventually, spawn_app_with};

const WAIT: Duration = Duration::from_secs(30);
/// The retention of the `brief` topic: one minute, in days.
const BRIEF_RETENTION_S: f64 = 60.0;

fn brief_topic() -> (String, String) {
    let days = BRIEF_RETENTION_S / 86_400.0;
    ("brief".into(), format!("handler = \"native\"\nnative = \"say_hello\"\nretention_days = {days}\n"))
}

fn tasks(app: &TestApp) -> mongodb::Collection<Document> {
    app.mongo.collection("tasks")
}

async fn stored(app: &TestApp, id: &str) -> Option<Document> {
    tasks(app).find_one(doc! {"_id": id}).await.expect("store answers")
}

/// A copy of `template` stored as `id`, completed `ago` seconds back, with `changes` applied.
async fn finished_copy(app: &TestApp, template: &Document, id: &str, ago: f64, changes: Document) {
    let mut copy = template.clone();
    let completed = bson::DateTime::from_millis(bson::DateTime::now().timestamp_millis() - (ago * 1000.0) as i64);
    copy.insert("_id", id);
    copy.insert("created_at", completed);
    copy.insert("completed_at", completed);
    copy.extend(changes);
    tasks(app).insert_one(copy).await.expect("insert a finished task");
}

/// How many of `ids` carry an `expire_at`.
async fn filter_marked(app: &TestApp, ids: &[&str]) -> u64 {
    let filter = doc! {"_id": {"$in": ids}, "expire_at": {"$exists": true}};
    tasks(app).count_documents(filter).await.expect("store answers")
}

/// Runs the server's TTL deletion now: SecantusDB's own pass (the one its 60 s monitor runs);
/// on a server without that command, waits for its TTL monitor (MongoDB: every 60 s).
async fn run_ttl_monitor(app: &TestApp, gone: &str) {
    let admin = app.mongo.client().database("admin");
    if admin.run_command(doc! {"secantusAdmin.pruneTtl": 1}).await.is_ok() {
        return;
    }
    eventually("the TTL monitor's pass", Duration::from_secs(120), || async { stored(app, gone).await.is_none() })
        .await;
}

#[tokio::test]
async fn finished_tasks_past_their_retention_expire_and_the_rest_stay() {
    let app = app_with_brief_retention().await;
    expire_and_keep(&app).await;
    app.cleanup().await;
}

async fn app_with_brief_retention() -> TestApp {
    let options = AppOptions {
        topics: vec![brief_topic()],
        vars: vec![("RETENTION_SWEEP_SECONDS".into(), "0.2".into())],
        ..Default::default()
    };
    spawn_app_with(options).await
}

async fn expire_and_keep(app: &TestApp) {
    // A real task of each topic, run to the end.
    for (id, topic) in [("ret-fresh", "brief"), ("ret-default", "say_hello")] {
        assert_eq!(app.submit(&body(id, topic, json!({"name": id}))).await.0, 200);
        app.wait_status(id, "succeeded", WAIT).await;
    }
    let template = stored(app, "ret-fresh").await.expect("stored");
    let old = 2.0 * BRIEF_RETENTION_S;
    // Past its retention: expires.
    finished_copy(app, &template, "ret-old", old, doc! {}).await;
    // Past its retention, but Camunda is still owed its outcome: stays.
    let owed = doc! {"camunda": {"linked": true, "report_state": "pending", "report_due_at": bson::DateTime::now()}};
    finished_copy(app, &template, "ret-owed", old, owed).await;
    // Its report was given up (settled: it had its retention to be re-sent by hand): expires.
    let given_up = doc! {"camunda": {"linked": true, "report_state": "report_failed"}};
    finished_copy(app, &template, "ret-given-up", old, given_up).await;
    // Of a topic kept 30 days (TASK_RETENTION_DAYS): stays.
    let mut default_template = stored(app, "ret-default").await.expect("stored");
    default_template.insert("topic", "say_hello");
    finished_copy(app, &default_template, "ret-default-old", old, doc! {}).await;
    // Failed, its retention about to run out: marked, then retried by hand before it does.
    let failed = doc! {"status": "failed", "error_message": "boom"};
    finished_copy(app, &template, "ret-retried", BRIEF_RETENTION_S - 1.5, failed).await;

    eventually("the sweep to mark the expired tasks", WAIT, || async move {
        let marked = filter_marked(app, &["ret-old", "ret-given-up", "ret-retried"]).await;
        marked == 3
    })
    .await;
    let response = app.client.post(app.url("/tasks/ret-retried/retry")).send().await.expect("gateway answers");
    assert_eq!(response.status().as_u16(), 200);
    let retried = stored(app, "ret-retried").await.expect("still stored");
    assert!(!retried.contains_key("expire_at"), "a retried task is no longer finished: {retried}");
    // Past 1.5 s its `expire_at` would have passed: the TTL pass below would have deleted it.
    tokio::time::sleep(Duration::from_millis(1600)).await;

    run_ttl_monitor(app, "ret-old").await;
    for gone in ["ret-old", "ret-given-up"] {
        assert!(stored(app, gone).await.is_none(), "{gone}: a task past its retention is deleted");
    }
    for kept in ["ret-fresh", "ret-owed", "ret-default", "ret-default-old", "ret-retried"] {
        let task = stored(app, kept).await;
        assert!(task.as_ref().is_some_and(|d| !d.contains_key("expire_at")), "{kept} stays: {task:?}");
    }
}

#[tokio::test]
async fn the_store_keeps_only_the_indexes_its_queries_use() {
    let app = spawn_app_with(AppOptions::default()).await;
    // Older versions' indexes: dropped at the next start-up.
    let old = |keys: Document, name: &str| {
        let options = mongodb::options::IndexOptions::builder().name(name.to_owned()).build();
        mongodb::IndexModel::builder().keys(keys).options(options).build()
    };
    let olds = [
        old(doc! {"source": 1, "status": 1}, "source_status"),
        old(doc! {"camunda.report_state": 1, "camunda.report_due_at": 1}, "report_due"),
    ];
    app.mongo.collection::<Document>("tasks").create_indexes(olds).await.expect("create old indexes");
    let store = worker_api_gateway::store::MongoStore::new(app.mongo.clone());
    store.ensure_indexes().await.expect("indexes");
    let mut names = store.task_index_names().await.expect("index names");
    names.sort();
    let expected = [
        "created_desc",
        "lease_processing",
        "publish_owed",
        "pulled",
        "report_owed",
        "status_created",
        "task_expiry",
        "topic_created",
        "worker_created",
    ];
    assert_eq!(names, expected);
    app.cleanup().await;
}

#[tokio::test]
async fn statistics_answer_from_a_cache_that_shows_its_age() {
    let max_age = 4.0;
    let options =
        AppOptions { vars: vec![("STATISTICS_MAX_AGE_SECONDS".into(), max_age.to_string())], ..Default::default() };
    let app = spawn_app_with(options).await;
    let (status, first) = app.get_json("/tasks/statistics").await;
    let counted = Instant::now();
    assert_eq!(status, 200);
    assert_eq!(first["total_tasks"], 0);
    assert!(first["age_seconds"].as_f64().is_some_and(|a| a < max_age), "{first}");
    for i in 0..3 {
        let id = format!("stats-{i}");
        assert_eq!(app.submit(&body(&id, "say_hello", json!({"name": id}))).await.0, 200);
        app.wait_status(&id, "succeeded", WAIT).await;
    }
    let (_, cached) = app.get_json("/tasks/statistics").await;
    if counted.elapsed().as_secs_f64() < max_age - 0.5 {
        // Younger than the maximum age: the same figures, older now.
        assert_eq!(cached["computed_at"], first["computed_at"], "{cached}");
        assert_eq!(cached["total_tasks"], 0, "{cached}");
        assert!(cached["age_seconds"].as_f64() > first["age_seconds"].as_f64(), "{cached}");
    }
    // Past it, a request starts a count in the background and a later one gets its figures.
    let fresh =
        app.wait_for("the statistics to be counted again", WAIT, |s| s["total_tasks"] == 3, "/tasks/statistics").await;
    assert_ne!(fresh["computed_at"], first["computed_at"]);
    assert_eq!(fresh["by_status"]["succeeded"], 3, "{fresh}");
    assert_eq!(fresh["by_topic"]["say_hello"], 3, "{fresh}");
    assert_eq!(fresh["by_worker"]["worker-1"], 3, "{fresh}");
    assert_eq!(fresh["success_rate"], 1.0, "{fresh}");
    assert!(fresh["average_processing_time_ms"].as_f64().is_some(), "{fresh}");
    assert!(fresh["age_seconds"].as_f64().is_some_and(|a| a < max_age + 2.0), "{fresh}");
    app.cleanup().await;
}
