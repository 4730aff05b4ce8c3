//! How the intake's publishes are owed and paid: a publish window's debt is settled once the
//! broker confirms every publish in it, a claim clears a task's own debt, and a debt left
//! unsettled (the gateway stopped between storing and publishing) is passed on and paid by the
//! relay.

use std::time::{Duration, Instant};

use bson::doc;
use chrono::Utc;
use serde_json::json;
use worker_api_gateway::{
    domain::{Limits, Submission},
    relay::PUBLISH_HOLD,
    store::{CamundaLink, InsertOutcome, MongoStore, NewTask, TaskSource, TaskStore},
};

use crate::helpers::{AppOptions, body, eventually, queue_depth_is, spawn_app, spawn_app_with};

const TASKS: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_publishes_leave_no_debt_behind() {
    // No consumers: every task stays queued, so only the intake can settle what it owes.
    let app =
        spawn_app_with(AppOptions { vars: vec![("GATEWAY_MODE".into(), "api".into())], ..Default::default() }).await;
    let submitted = Instant::now();
    let ids: Vec<String> = (0..TASKS).map(|i| format!("held-{i}")).collect();
    for id in &ids {
        assert_eq!(app.submit(&body(id, "say_hello", json!({}))).await.0, 200);
    }
    let debts = app.mongo.collection::<bson::Document>("publish_debts");
    loop {
        let left = debts.count_documents(doc! {}).await.expect("count debts");
        if left == 0 {
            break;
        }
        assert!(submitted.elapsed() < PUBLISH_HOLD, "{left} debts still unsettled when their hold ran out");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Nothing is owed task by task either, so the relay has nothing to publish again: exactly
    // one message per task.
    for id in &ids {
        assert_eq!(app.status_from_store(id).await.publish_due_at, None, "{id} owes a publish");
    }
    let queue = format!("{}.task.submit.say_hello", app.exchange);
    assert!(queue_depth_is(&queue, TASKS as u32).await, "the queue holds one message per task");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_leaves_no_debt_behind() {
    // Stopped at once after the submits, while the publish window they were stored in (and the
    // one written ahead) would still be open for seconds: the stop closes and settles them.
    let mut app =
        spawn_app_with(AppOptions { vars: vec![("GATEWAY_MODE".into(), "api".into())], ..Default::default() }).await;
    for i in 0..TASKS {
        assert_eq!(app.submit(&body(&format!("stopping-{i}"), "say_hello", json!({}))).await.0, 200);
    }
    let debts = app.mongo.collection::<bson::Document>("publish_debts");
    assert!(debts.count_documents(doc! {}).await.expect("count debts") > 0, "the open window owes its publishes");
    app.stop().await;
    assert_eq!(debts.count_documents(doc! {}).await.expect("count debts"), 0, "a debt outlived the stop");
    let queue = format!("{}.task.submit.say_hello", app.exchange);
    assert!(queue_depth_is(&queue, TASKS as u32).await, "the queue holds one message per task");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsettled_debt_gets_its_stored_tasks_published() {
    // What a gateway killed between storing a batch and publishing it leaves behind: the debt
    // and the tasks, and no message.
    let app = spawn_app().await;
    let store = MongoStore::new(app.mongo.clone());
    let ids: Vec<String> = (0..3).map(|i| format!("orphan-{i}")).collect();
    let now = Utc::now();
    let window = now - chrono::Duration::seconds(1)..now + chrono::Duration::seconds(60);
    // Due a second from now: the tasks below are stored by then, as a crashed intake's would be.
    let due = now + chrono::Duration::seconds(1);
    store.owe_publishes("crashed-window", window, due).await.expect("debt");
    for id in &ids {
        let submission = Submission::parse(&body(id, "say_hello", json!({"name": id})), &Limits::default())
            .expect("valid submission");
        let task = NewTask {
            submission,
            max_attempts: 3,
            source: TaskSource::Http,
            camunda: CamundaLink::not_applicable(),
            publish_after: None,
            trace_id: None,
        };
        assert!(matches!(store.insert(task).await.expect("insert"), InsertOutcome::Created(_)));
    }
    for id in &ids {
        let task = app.wait_status(id, "succeeded", Duration::from_secs(30)).await;
        assert_eq!(task["attempts"], 1, "{task}");
    }
    let debts = app.mongo.collection::<bson::Document>("publish_debts");
    eventually("the debt is gone", Duration::from_secs(10), || async {
        debts.count_documents(doc! {}).await.expect("count debts") == 0
    })
    .await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claimed_task_owes_no_publish() {
    let app = spawn_app().await;
    assert_eq!(app.submit(&body("claimed-1", "say_hello", json!({"name": "Lea"}))).await.0, 200);
    app.wait_status("claimed-1", "succeeded", Duration::from_secs(30)).await;
    // Long before the hold ends: the claim itself cleared the debt.
    assert_eq!(app.status_from_store("claimed-1").await.publish_due_at, None);
    app.cleanup().await;
}
