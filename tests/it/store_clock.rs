//! The store's clock decides: claims and lease expiry are judged by the server's `$$NOW`, the
//! times the gateway writes are the server's, a delivery that comes before its task is due never
//! strands the task, and a replica's shutdown hands back only its own pulled tasks. (Replicas
//! run minutes apart under `faketime` in the fault suite: tests/faults/replica_faults.rs.)

use std::time::Duration;

use bson::doc;
use serde_json::json;
use worker_api_gateway::{
    domain::{Limits, Submission},
    store::{CamundaLink, InsertOutcome, MongoStore, NewTask, TaskSource, TaskStore},
};

use crate::{
    common::env,
    helpers::{AppOptions, body, downstream, spawn_app_with},
};

const WAIT: Duration = Duration::from_secs(60);

/// The server's own time, as `hello` tells it.
async fn server_time(db: &mongodb::Database) -> chrono::DateTime<chrono::Utc> {
    let hello = db.run_command(doc! {"hello": 1}).await.expect("hello");
    hello.get_datetime("localTime").expect("localTime").to_chrono()
}

fn api_only() -> AppOptions {
    AppOptions { vars: vec![("GATEWAY_MODE".into(), "api".into())], ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_is_judged_and_leased_by_the_servers_clock() {
    let app = spawn_app_with(api_only()).await;
    let store = MongoStore::new(app.mongo.clone());
    let tasks = app.mongo.collection::<bson::Document>("tasks");
    app.submit(&body("clock-1", "say_hello", json!({}))).await;

    // A retry due an hour from the server's now is not claimable, whatever this process thinks.
    let later = bson::DateTime::from_chrono(server_time(&app.mongo).await + chrono::Duration::hours(1));
    tasks
        .update_one(doc! {"_id": "clock-1"}, doc! {"$set": {"status": "retrying", "next_attempt_at": later}})
        .await
        .expect("set a future retry");
    assert!(store.claim("clock-1", Duration::from_secs(60)).await.expect("claim").is_none());
    let untouched = app.status_from_store("clock-1").await;
    assert_eq!((untouched.status.as_str(), untouched.attempts), ("retrying", 0), "{untouched:?}");

    // Due a second ago by the server: claimed, and leased from the server's now.
    let earlier = bson::DateTime::from_chrono(server_time(&app.mongo).await - chrono::Duration::seconds(1));
    tasks.update_one(doc! {"_id": "clock-1"}, doc! {"$set": {"next_attempt_at": earlier}}).await.expect("set due");
    let before = server_time(&app.mongo).await;
    let claimed = store.claim("clock-1", Duration::from_secs(60)).await.expect("claim").expect("claimed");
    let lease = claimed.lease_until.expect("a lease").to_chrono();
    let expected = before + chrono::Duration::seconds(60);
    assert!((lease - expected).num_milliseconds().abs() < 2_000, "lease {lease} vs {expected}");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_before_the_retry_is_due_leaves_the_retry_owed() {
    // First attempt 503, then 200; the retry waits 3 s.
    let down = downstream(vec![503, 200]).await;
    let topic = format!(
        "handler = \"http\"\nurl = \"{}\"\ntimeout_seconds = 10\nconcurrency = 4\n\n[retry]\nmax_attempts = 3\ninitial_backoff_ms = 3000\nmax_backoff_ms = 3000\n",
        down.url
    );
    let app = spawn_app_with(AppOptions { topics: vec![("patient".into(), topic)], ..Default::default() }).await;
    app.submit(&body("early-1", "patient", json!({}))).await;
    app.wait_status("early-1", "retrying", WAIT).await;

    // What a replica whose clock runs ahead leaves behind: the retry's publish taken and
    // confirmed before the store says it is due, and the message delivered early.
    let tasks = app.mongo.collection::<bson::Document>("tasks");
    tasks.update_one(doc! {"_id": "early-1"}, doc! {"$unset": {"publish_due_at": ""}}).await.expect("unset");
    let conn =
        lapin::Connection::connect(&env("RABBITMQ_URL"), lapin::ConnectionProperties::default()).await.expect("amqp");
    let channel = conn.create_channel().await.expect("channel");
    let payload = body("early-1", "patient", json!({})).to_string();
    channel
        .basic_publish(
            app.exchange.as_str().into(),
            "task.submit.patient".into(),
            lapin::options::BasicPublishOptions::default(),
            payload.as_bytes(),
            lapin::BasicProperties::default(),
        )
        .await
        .expect("publish");

    // The early message is dropped, but the retry still runs when it is due.
    let done = app.wait_status("early-1", "succeeded", WAIT).await;
    assert_eq!(done["attempts"], 2, "{done}");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_hands_back_only_the_pulled_tasks_it_locked() {
    let app = spawn_app_with(api_only()).await;
    let store = MongoStore::new(app.mongo.clone());
    for (id, replica) in [("pulled-a", "replica-a"), ("pulled-b", "replica-b")] {
        let submission = Submission::parse(&body(id, "say_hello", json!({})), &Limits::default()).expect("valid");
        let mut camunda = CamundaLink::pending();
        camunda.pulled_by = Some(replica.into());
        let new = NewTask {
            submission,
            max_attempts: 3,
            source: TaskSource::Camunda,
            camunda,
            publish_after: None,
            trace_id: None,
        };
        assert!(matches!(store.insert(new).await.expect("insert"), InsertOutcome::Created(_)));
    }
    let mine: Vec<String> =
        store.unstarted("replica-a", 100).await.expect("unstarted").into_iter().map(|t| t.task_id).collect();
    assert_eq!(mine, vec!["pulled-a".to_owned()]);
    app.cleanup().await;
}
