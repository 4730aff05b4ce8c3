//! The broker is a cache of the store: what it loses is published again from the store. A queue
//! purged under waiting tasks gets them back and they complete; a healthy backlog (every task's
//! message still in the queue, nobody consuming) is left alone; an idempotent resubmit of a task
//! whose message is gone publishes it.

use std::time::Duration;

use bson::{Document, doc};
use chrono::Utc;
use serde_json::json;
use worker_api_gateway::{
    domain::{Limits, Submission},
    store::{CamundaLink, InsertOutcome, MongoStore, NewTask, TaskSource, TaskStore},
};

use crate::helpers::{AppOptions, TestApp, body, env, eventually, queue_depth_is, spawn_app_with};

const TASKS: u32 = 20;
const WAIT: Duration = Duration::from_secs(60);

fn vars(mode: &str, republish_after_seconds: u32) -> Vec<(String, String)> {
    vec![("GATEWAY_MODE".into(), mode.into()), ("REPUBLISH_AFTER_SECONDS".into(), republish_after_seconds.to_string())]
}

fn queue(app: &TestApp) -> String {
    format!("{}.task.submit.say_hello", app.exchange)
}

/// Empties a queue, as `rabbitmqctl purge_queue` does; how many messages it dropped.
async fn purge(queue: &str) -> u32 {
    let conn = lapin::Connection::connect(&env("RABBITMQ_URL"), lapin::ConnectionProperties::default())
        .await
        .expect("RabbitMQ answers");
    let channel = conn.create_channel().await.expect("a channel");
    let purged =
        channel.queue_purge(queue.into(), lapin::options::QueuePurgeOptions::default()).await.expect("queue purged");
    let _ = conn.close(200, "purged".into()).await;
    purged
}

/// How many times the store re-sent each task (`republish_count`, 0 when never).
async fn resends(app: &TestApp, ids: &[String]) -> Vec<i64> {
    let tasks = app.mongo.collection::<Document>("tasks");
    let mut counts = Vec::with_capacity(ids.len());
    for id in ids {
        let task = tasks.find_one(doc! {"_id": id}).await.expect("read task").expect("task stored");
        counts.push(match task.get("republish_count") {
            Some(bson::Bson::Int32(n)) => i64::from(*n),
            Some(bson::Bson::Int64(n)) => *n,
            _ => 0,
        });
    }
    counts
}

async fn submit_all(app: &TestApp, prefix: &str) -> Vec<String> {
    let ids: Vec<String> = (0..TASKS).map(|i| format!("{prefix}-{i}")).collect();
    for id in &ids {
        assert_eq!(app.submit(&body(id, "say_hello", json!({"name": id}))).await.0, 200);
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_whose_queue_was_purged_are_published_again_and_complete() {
    // Submitted to an API-only gateway (nobody consumes), every message confirmed in the queue,
    // then the queue loses them all.
    let api = spawn_app_with(AppOptions { vars: vars("api", 2), ..Default::default() }).await;
    let ids = submit_all(&api, "purged").await;
    let queue = queue(&api);
    eventually("every task published", Duration::from_secs(10), || queue_depth_is(&queue, TASKS)).await;
    assert_eq!(purge(&queue).await, TASKS);

    // Consumers arrive: only the store can bring the tasks back.
    let reuse = Some((api.database.clone(), api.exchange.clone()));
    let worker = spawn_app_with(AppOptions { vars: vars("worker", 2), reuse, ..Default::default() }).await;
    for id in &ids {
        let task = api.wait_status(id, "succeeded", WAIT).await;
        assert_eq!(task["attempts"], 1, "{task}");
    }
    let counts = resends(&api, &ids).await;
    assert!(counts.iter().all(|n| *n >= 1), "every task was re-sent by the store: {counts:?}");
    worker.cleanup().await;
    let mut api = api;
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_backlog_is_not_published_again() {
    // Every task's message waits in the queue; nobody consumes. Past the 1 s bound every task is
    // stale by the store's count, yet the queue explains each of them.
    let app = spawn_app_with(AppOptions { vars: vars("api", 1), ..Default::default() }).await;
    let ids = submit_all(&app, "backlog").await;
    let queue = queue(&app);
    eventually("every task published", Duration::from_secs(10), || queue_depth_is(&queue, TASKS)).await;
    // Several looks go by (one a second once the bound has passed): nothing may be re-sent.
    let watched = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < watched {
        assert!(queue_depth_is(&queue, TASKS).await, "the backlog was published again");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(resends(&app, &ids).await, vec![0; ids.len()], "a task of a healthy backlog was re-sent");

    // The same gateway does re-send once the queue loses them (so the looks above were real),
    // each task once, and not again while the new messages wait.
    assert_eq!(purge(&queue).await, TASKS);
    eventually("the lost tasks re-sent", WAIT, || queue_depth_is(&queue, TASKS)).await;
    let watched = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < watched {
        assert!(queue_depth_is(&queue, TASKS).await, "re-sent more than what was lost");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(resends(&app, &ids).await, vec![1; ids.len()]);
    let metrics = app.get("/metrics").await.text().await.unwrap_or_default();
    let counted = metrics.lines().find_map(|l| l.strip_prefix("gateway_republished_total{topic=\"say_hello\"} "));
    assert_eq!(counted.and_then(|n| n.trim().parse::<u32>().ok()), Some(TASKS), "the re-sends counted:\n{metrics}");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubmitting_a_task_whose_message_is_gone_publishes_it() {
    // What a lost insert answer leaves behind: the task stored (a minute ago) with no message and
    // no publish debt. The stale sweep's bound is far off, so only the resubmit can publish it.
    let app = spawn_app_with(AppOptions { vars: vars("all", 3600), ..Default::default() }).await;
    let store = MongoStore::new(app.mongo.clone());
    let submitted = body("landed-unseen", "say_hello", json!({"name": "Ada"}));
    let task = NewTask {
        submission: Submission::parse(&submitted, &Limits::default()).expect("valid submission"),
        max_attempts: 3,
        source: TaskSource::Http,
        camunda: CamundaLink::not_applicable(),
        publish_after: None,
        trace_id: None,
    };
    let landed = store.insert_batch(vec![task], Utc::now() - chrono::Duration::seconds(60)).await;
    assert!(matches!(landed.as_slice(), [Ok(InsertOutcome::Created(_))]), "{landed:?}");

    let (status, answer) = app.submit(&submitted).await;
    assert_eq!((status, &answer["created"]), (200, &json!(false)), "{answer}");
    let done = app.wait_status("landed-unseen", "succeeded", WAIT).await;
    assert_eq!(done["result"]["greeting"], "Hello, Ada!");
    assert_eq!(resends(&app, &["landed-unseen".to_owned()]).await, vec![1]);

    // A resubmit of a task already done publishes nothing.
    assert_eq!(app.submit(&submitted).await.0, 200);
    assert_eq!(resends(&app, &["landed-unseen".to_owned()]).await, vec![1]);
    app.cleanup().await;
}
