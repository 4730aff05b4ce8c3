//! Bulkheads and dead letters against the real RabbitMQ: a topic whose queue is deleted (and held
//! down by an inequivalent queue of the same name) degrades alone while another topic's tasks
//! keep completing, shows in `/health` and the metrics, and comes back by itself; a dead-lettered
//! message is recorded (`GET /dead-letters`, `gateway_dead_letters_total`), and a queued task
//! whose message was dead-lettered is published again and completes.

use std::time::Duration;

use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::{
        BasicGetOptions, BasicPublishOptions, BasicRejectOptions, ConfirmSelectOptions, QueueDeclareOptions,
        QueueDeleteOptions,
    },
    types::FieldTable,
};
use serde_json::{Value, json};

use crate::helpers::{AppOptions, TestApp, body, env, eventually, queue_depth_is, spawn_app_with, unique};

/// A topic on the native `say_hello` handler.
fn hello_topic() -> String {
    "handler = \"native\"\nnative = \"say_hello\"\ntimeout_seconds = 30\nconcurrency = 8\n".to_owned()
}

async fn rabbit() -> Connection {
    Connection::connect(&env("RABBITMQ_URL"), ConnectionProperties::default()).await.expect("RabbitMQ answers")
}

/// `rabbitmqctl delete_queue`, as an operator would (the Debian wrapper lives in sbin).
async fn rabbitmqctl_delete_queue(queue: &str) {
    let path = format!("{}:/usr/local/sbin:/usr/sbin:/sbin", std::env::var("PATH").unwrap_or_default());
    let out = tokio::process::Command::new("rabbitmqctl")
        .env("PATH", path)
        .args(["delete_queue", queue])
        .output()
        .await
        .expect("run rabbitmqctl");
    assert!(out.status.success(), "rabbitmqctl delete_queue {queue}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The value of one metric line (`name{labels}`), if present.
async fn metric(app: &TestApp, series: &str) -> Option<f64> {
    let text = app.get("/metrics").await.text().await.unwrap_or_default();
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
}

/// Submits `n` tasks of `topic`; their ids.
async fn submit_many(app: &TestApp, topic: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let id = unique(topic);
        let (status, answer) = app.submit(&body(&id, topic, json!({"name": "bulkhead"}))).await;
        assert_eq!(status, 200, "{answer}");
        ids.push(id);
    }
    ids
}

async fn all_succeed(app: &TestApp, ids: &[String], limit: Duration) {
    for id in ids {
        app.wait_status(id, "succeeded", limit).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deleted_queue_degrades_only_its_topic_until_it_is_declared_again() {
    // Retries 1.5 to 3 s apart: time for the test to hold the queue down in between.
    let vars = [("RABBITMQ_CONSUMER_RETRY_MIN_MS", "3000"), ("RABBITMQ_CONSUMER_RETRY_MAX_MS", "3000")];
    let app = spawn_app_with(AppOptions {
        topics: vec![("flows".into(), hello_topic()), ("sick".into(), hello_topic())],
        vars: vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        ..Default::default()
    })
    .await;
    all_succeed(&app, &[submit_many(&app, "flows", 3).await, submit_many(&app, "sick", 3).await].concat(), secs(20))
        .await;

    // Delete the queue, and hold its name with a classic queue the gateway cannot redeclare as
    // its quorum queue (406 PRECONDITION_FAILED on its channel): the topic stays unconsumable.
    let queue = format!("{}.task.submit.sick", app.exchange);
    rabbitmqctl_delete_queue(&queue).await;
    let conn = rabbit().await;
    let channel = conn.create_channel().await.expect("channel");
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    channel
        .queue_declare(queue.as_str().into(), durable, FieldTable::default())
        .await
        .expect("declare a classic queue");

    let health = app
        .wait_for("the sick topic degraded", secs(20), |h| h["topics"]["sick"]["consuming"] == false, "/health")
        .await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["topics"]["flows"]["consuming"], true, "{health}");
    assert!(health["topics"]["sick"]["error"].as_str().is_some_and(|e| !e.is_empty()), "{health}");
    // It stays down while the name is held (a retry hits the 406 again), and the others flow.
    let sick_meanwhile = submit_many(&app, "sick", 3).await;
    all_succeed(&app, &submit_many(&app, "flows", 10).await, secs(20)).await;
    let (_, health) = app.get_json("/health").await;
    assert_eq!(health["topics"]["sick"]["consuming"], false, "{health}");
    for id in &sick_meanwhile {
        assert_ne!(app.status(id).await.1["status"], "succeeded", "{id} ran while its queue was down");
    }
    assert_eq!(metric(&app, "gateway_topic_consuming{topic=\"sick\"}").await, Some(0.0));
    assert_eq!(metric(&app, "gateway_topic_consuming{topic=\"flows\"}").await, Some(1.0));
    // Retried (and refused again) while the name is held.
    let restarts = || async { metric(&app, "gateway_consumer_restarts_total{topic=\"sick\"}").await >= Some(2.0) };
    eventually("a second failed start of the sick topic", secs(10), restarts).await;
    assert_eq!(app.get_json("/health").await.1["topics"]["sick"]["consuming"], false);

    // Let the name go: the next retry declares the quorum queue and its binding again.
    channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await.expect("delete the classic queue");
    let _ = conn.close(200, "bye".into()).await;
    let health = app
        .wait_for("the sick topic consumed again", secs(20), |h| h["topics"]["sick"]["consuming"] == true, "/health")
        .await;
    assert_eq!(health["status"], "healthy", "{health}");
    // What was submitted meanwhile was never confirmed as published; the relay sends it now.
    all_succeed(&app, &sick_meanwhile, secs(30)).await;
    all_succeed(&app, &submit_many(&app, "sick", 3).await, secs(20)).await;
    app.cleanup().await;
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Publishes `body` straight to the exchange, as a worker in the seed's `rabbitmq` mode would.
async fn publish_raw(exchange: &str, routing_key: &str, body: &[u8]) {
    let conn = rabbit().await;
    let channel = conn.create_channel().await.expect("channel");
    channel.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
    let confirm = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default(),
        )
        .await
        .expect("publish");
    confirm.await.expect("confirmed");
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unusable_message_is_recorded_as_a_dead_letter_and_listed_newest_first() {
    let app = spawn_app_with(AppOptions::default()).await;
    for n in 0..3 {
        publish_raw(&app.exchange, "task.submit.say_hello", format!("not json {n}").as_bytes()).await;
    }

    let page = app.wait_for("three dead letters", secs(20), |p| p["count"] == 3, "/dead-letters?topic=say_hello").await;
    let newest = &page["dead_letters"][0];
    assert_eq!(newest["body"], "not json 2", "{page}");
    assert_eq!(newest["topic"], "say_hello", "{page}");
    assert_eq!(newest["routing_key"], "task.submit.say_hello", "{page}");
    assert_eq!(newest["reason"], "rejected", "{page}");
    assert_eq!(newest["queue"], format!("{}.task.submit.say_hello", app.exchange), "{page}");
    assert_eq!((&newest["task_id"], &newest["republished"]), (&Value::Null, &json!(false)), "{page}");
    assert_eq!(metric(&app, "gateway_dead_letters_total{topic=\"say_hello\"}").await, Some(3.0));
    // Each was acked: the dead-letter queue is empty again.
    let dead = format!("{}.dead", app.exchange);
    eventually("the dead-letter queue drained", secs(10), || queue_depth_is(&dead, 0)).await;

    // Pages: two, then the last one, newest first throughout.
    let (status, first) = app.get_json("/dead-letters?limit=2").await;
    assert_eq!((status, &first["count"]), (200, &json!(2)), "{first}");
    let cursor = first["next_cursor"].as_str().expect("a next cursor").to_owned();
    let (_, rest) = app.get_json(&format!("/dead-letters?limit=2&cursor={cursor}")).await;
    assert_eq!(rest["dead_letters"][0]["body"], "not json 0", "{rest}");
    assert!(rest.get("next_cursor").is_none(), "{rest}");
    let (status, _) = app.get_json("/dead-letters?limit=501").await;
    assert_eq!(status, 400);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_queued_task_whose_message_was_dead_lettered_is_published_again_and_completes() {
    // An API-only gateway stores and publishes the task; nothing consumes it yet.
    let api =
        spawn_app_with(AppOptions { vars: vec![("GATEWAY_MODE".into(), "api".into())], ..Default::default() }).await;
    let id = unique("dead");
    let (status, answer) = api.submit(&body(&id, "say_hello", json!({"name": "again"}))).await;
    assert_eq!(status, 200, "{answer}");
    let queue = format!("{}.task.submit.say_hello", api.exchange);
    eventually("the task's message queued", secs(10), || queue_depth_is(&queue, 1)).await;

    // The broker loses it: rejected without requeue, it is dead-lettered (at most once).
    let conn = rabbit().await;
    let channel = conn.create_channel().await.expect("channel");
    let got = channel.basic_get(queue.as_str().into(), BasicGetOptions::default()).await.expect("basic.get");
    let message = got.expect("the task's message");
    message.acker.reject(BasicRejectOptions { requeue: false }).await.expect("reject");
    let _ = conn.close(200, "bye".into()).await;
    let dead = format!("{}.dead", api.exchange);
    eventually("the message dead-lettered", secs(10), || queue_depth_is(&dead, 1)).await;
    assert_eq!(api.status(&id).await.1["status"], "queued");

    // A consuming gateway on the same store and exchange reads the dead letter and hands the
    // still-queued task back to its relay.
    let worker =
        spawn_app_with(AppOptions { reuse: Some((api.database.clone(), api.exchange.clone())), ..Default::default() })
            .await;
    worker.wait_status(&id, "succeeded", secs(30)).await;
    let (_, page) = worker.get_json(&format!("/dead-letters?task_id={id}")).await;
    let letter = &page["dead_letters"][0];
    assert_eq!((&letter["reason"], &letter["republished"]), (&json!("rejected"), &json!(true)), "{page}");
    assert_eq!(metric(&worker, "gateway_dead_letters_total{topic=\"say_hello\"}").await, Some(1.0));
    let mut api = api;
    api.stop().await;
    worker.cleanup().await;
}
