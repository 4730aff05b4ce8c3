//! The task lifecycle under the dispatcher and the relay: retries with backoff up to the attempt
//! limit, business errors, timeouts, cancel and manual retry, lease expiry, and a gateway
//! restarted mid-run finishing what it had accepted.

use std::{sync::atomic::Ordering, time::Duration};

use serde_json::json;
use worker_api_gateway::store::{MongoStore, TaskStore};

use crate::helpers::{AppOptions, body, downstream, http_topic, silent_downstream, spawn_app_with};

const WAIT: Duration = Duration::from_secs(30);

fn with_topic(name: &str, toml: String) -> AppOptions {
    AppOptions { topics: vec![(name.into(), toml)], ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retryable_failures_back_off_then_succeed() {
    let down = downstream(vec![503, 429, 200]).await;
    let app = spawn_app_with(with_topic("flaky", http_topic(&down.url, 5, 10))).await;
    app.submit(&body("flaky-1", "flaky", json!({"n": 1}))).await;
    let task = app.wait_status("flaky-1", "succeeded", WAIT).await;
    assert_eq!(task["attempts"], 3, "{task}");
    assert_eq!(task["metadata"]["retries"], 2);
    assert_eq!(task["result"]["echo"], json!({"n": 1}));
    assert_eq!(task["result"]["attempt"], 3);
    assert_eq!(down.calls.load(Ordering::SeqCst), 3);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_keeps_failing_stops_at_its_attempt_limit() {
    let down = downstream(vec![500]).await;
    let app = spawn_app_with(with_topic("broken", http_topic(&down.url, 3, 10))).await;
    app.submit(&body("broken-1", "broken", json!({}))).await;
    let task = app.wait_status("broken-1", "failed", WAIT).await;
    assert_eq!(task["attempts"], 3);
    assert_eq!(task["metadata"]["error_code"], "ATTEMPTS_EXHAUSTED");
    assert!(task["error_message"].as_str().unwrap_or("").contains("500"), "{task}");
    // The poison message is parked in the dead-letter queue, whose consumer records it.
    app.wait_for("one dead letter", WAIT, |v| v["count"] == 1, "/dead-letters").await;
    // No hot loop: nothing runs after the last attempt.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(down.calls.load(Ordering::SeqCst), 3);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_topic_calls_its_downstream_over_http2() {
    let downstream = downstream(vec![200]).await;
    let topic = http_topic(&downstream.url, 1, 5).replace("concurrency = 4\n", "concurrency = 4\nhttp2 = true\n");
    let app = spawn_app_with(with_topic("h2", topic)).await;
    for i in 0..3 {
        assert_eq!(app.submit(&body(&format!("h2-{i}"), "h2", json!({"n": i}))).await.0, 200);
    }
    for i in 0..3 {
        let task = app.wait_status(&format!("h2-{i}"), "succeeded", WAIT).await;
        assert_eq!(task["result"]["echo"]["n"], json!(i));
    }
    assert_eq!(downstream.http2_calls.load(Ordering::SeqCst), 3, "every call went over HTTP/2");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_business_error_fails_at_once() {
    let down = downstream(vec![422]).await;
    let app = spawn_app_with(with_topic("strict", http_topic(&down.url, 5, 10))).await;
    app.submit(&body("strict-1", "strict", json!({}))).await;
    let task = app.wait_status("strict-1", "failed", WAIT).await;
    assert_eq!(task["attempts"], 1);
    assert_eq!(task["metadata"]["error_code"], "validation", "a 422 is a validation error");
    assert_eq!(task["error_message"], "scripted 422");
    assert_eq!(down.calls.load(Ordering::SeqCst), 1);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_past_its_timeout_is_retried() {
    // A socket that accepts the connection and never answers.
    let (silent, url) = silent_downstream().await;
    let app = spawn_app_with(with_topic("slow", http_topic(&url, 2, 1))).await;
    app.submit(&body("slow-1", "slow", json!({}))).await;
    let task = app.wait_status("slow-1", "failed", WAIT).await;
    assert_eq!(task["attempts"], 2, "{task}");
    assert!(task["error_message"].as_str().unwrap_or("").contains("timed out"), "{task}");
    drop(silent);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_tasks_can_be_cancelled_and_retried() {
    // API-only mode: nothing consumes, so the task stays queued.
    let mut api =
        spawn_app_with(AppOptions { vars: vec![("GATEWAY_MODE".into(), "api".into())], ..Default::default() }).await;
    api.submit(&body("cancel-1", "say_hello", json!({"name": "Cy"}))).await;
    assert_eq!(api.status("cancel-1").await.1["status"], "queued");

    let r = api.client.delete(api.url("/tasks/cancel-1")).send().await.expect("answers");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(api.status("cancel-1").await.1["status"], "cancelled");
    let r = api.client.delete(api.url("/tasks/cancel-1")).send().await.expect("answers");
    assert_eq!(r.status().as_u16(), 409, "a cancelled task cannot be cancelled again");
    let r = api.client.delete(api.url("/tasks/nope")).send().await.expect("answers");
    assert_eq!(r.status().as_u16(), 404);

    let r = api.client.post(api.url("/tasks/cancel-1/retry")).send().await.expect("answers");
    assert_eq!(r.status().as_u16(), 200);
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["status"], "retrying");
    assert_eq!(api.status("cancel-1").await.1["status"], "queued");
    let r = api.client.post(api.url("/tasks/cancel-1/retry")).send().await.expect("answers");
    assert_eq!(r.status().as_u16(), 409, "only failed or cancelled tasks can be retried");

    // A full gateway on the same database and exchange picks the task up.
    api.stop().await;
    let reuse = Some((api.database.clone(), api.exchange.clone()));
    let full = spawn_app_with(AppOptions { reuse, ..Default::default() }).await;
    let task = full.wait_status("cancel-1", "succeeded", WAIT).await;
    assert_eq!(task["result"]["greeting"], "Hello, Cy!");
    full.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_gateway_finishes_every_task_it_accepted() {
    // The first gateway has no broker: it accepts (MongoDB is the outbox), health says degraded.
    let mut first = spawn_app_with(AppOptions { no_broker: true, ..Default::default() }).await;
    for i in 0..30 {
        let (status, _) = first.submit(&body(&format!("restart-{i}"), "say_hello", json!({"name": i}))).await;
        assert_eq!(status, 200);
    }
    let (status, health) = first.get_json("/health").await;
    assert_eq!(
        (status, health["status"].as_str(), health["rabbitmq"].as_str()),
        (200, Some("degraded"), Some("unhealthy"))
    );
    assert_eq!(first.status("restart-0").await.1["status"], "queued");
    first.stop().await;
    let reuse = Some((first.database.clone(), first.exchange.clone()));
    let second = spawn_app_with(AppOptions { reuse, ..Default::default() }).await;
    second
        .wait_for(
            "all 30 succeeded",
            Duration::from_secs(60),
            |s| s["by_status"]["succeeded"] == 30,
            "/tasks/statistics",
        )
        .await;
    second.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_sends_the_task_back_or_fails_it_when_no_attempts_remain() {
    let app =
        spawn_app_with(AppOptions { vars: vec![("GATEWAY_MODE".into(), "api".into())], ..Default::default() }).await;
    let store = MongoStore::new(app.mongo.clone());
    app.submit(&body("lease-1", "say_hello", json!({}))).await;
    // A consumer claims and "crashes": its lease is already over.
    let claimed = store.claim("lease-1", Duration::ZERO).await.expect("claim");
    assert_eq!(claimed.map(|t| t.attempts), Some(1));
    assert_eq!(store.expire_leases().await.expect("sweep"), 1);
    let task = app.status("lease-1").await.1;
    assert_eq!((task["status"].as_str(), task["attempts"].as_u64()), (Some("retrying"), Some(1)), "{task}");

    // Burn the remaining attempts the same way; the last expiry fails the task.
    for _ in 0..2 {
        store.claim("lease-1", Duration::ZERO).await.expect("claim");
        store.expire_leases().await.expect("sweep");
    }
    let task = app.status("lease-1").await.1;
    assert_eq!((task["status"].as_str(), task["attempts"].as_u64()), (Some("failed"), Some(3)), "{task}");
    // A stale attempt finishing late changes nothing.
    let late = worker_api_gateway::store::AttemptOutcome::Succeeded { result: Default::default() };
    assert!(store.finish("lease-1", 2, 5, Vec::new(), late).await.expect("finish").is_none());
    app.cleanup().await;
}

#[test]
fn a_bad_setting_stops_start_up_naming_the_variable() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_worker-api-gateway"))
        .env("TASK_RETRY_LIMIT", "many")
        .env("MONGODB_URI", "mongodb://admin:s3cret@127.0.0.1:1")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("TASK_RETRY_LIMIT"), "{stderr}");
    assert!(!stderr.contains("s3cret"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_gives_back_the_attempts_that_outlive_the_grace_period() {
    let down = crate::helpers::downstream_with(vec![200], Duration::from_secs(10), None).await;
    // One attempt only: an attempt a deploy interrupts must not use it up.
    let mut app = spawn_app_with(AppOptions {
        topics: vec![("lingering".into(), http_topic(&down.url, 1, 60))],
        vars: vec![("SHUTDOWN_GRACE_SECONDS".into(), "1".into())],
        ..Default::default()
    })
    .await;
    // Three at once (the topic's concurrency is 4): shutdown gives each back.
    let ids = ["linger-1", "linger-2", "linger-3"];
    for id in ids {
        app.submit(&body(id, "lingering", json!({}))).await;
    }
    // A slow handler's progress shows while it runs.
    for id in ids {
        let path = format!("/tasks/{id}/status");
        let running =
            app.wait_for("progress while running", WAIT, |v| v["substatus"] == "calling_downstream", &path).await;
        assert_eq!(running["status"], "processing");
        assert_eq!(running["metadata"]["processing_steps"][0]["status"], "started", "{running}");
    }
    app.stop().await;
    // Not stuck in processing until their 90 s lease runs out, and not failed for want of
    // attempts: back to retrying, due now, with the interrupted attempt given back.
    for id in ids {
        let task = app.status_from_store(id).await;
        assert_eq!((task.status.as_str(), task.attempts, task.max_attempts), ("retrying", 1, 2), "{task:?}");
        assert!(task.error_message.unwrap_or_default().contains("shut down"));
    }
    let reuse = Some((app.database.clone(), app.exchange.clone()));
    let fast = downstream(vec![200]).await;
    let next = spawn_app_with(AppOptions {
        topics: vec![("lingering".into(), http_topic(&fast.url, 1, 60))],
        reuse,
        ..Default::default()
    })
    .await;
    for id in ids {
        let done = next.wait_status(id, "succeeded", WAIT).await;
        assert_eq!(done["attempts"], 2);
    }
    next.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_gateway_and_a_worker_only_gateway_split_the_work() {
    let api =
        spawn_app_with(AppOptions { vars: vec![("GATEWAY_MODE".into(), "api".into())], ..Default::default() }).await;
    let reuse = Some((api.database.clone(), api.exchange.clone()));
    let worker = spawn_app_with(AppOptions {
        vars: vec![("GATEWAY_MODE".into(), "worker".into())],
        reuse,
        ..Default::default()
    })
    .await;
    // The worker serves only health, liveness and metrics.
    assert_eq!(worker.submit(&body("split-0", "say_hello", json!({}))).await.0, 404);
    assert_eq!(worker.get("/health").await.status().as_u16(), 200);
    assert_eq!(worker.get("/metrics").await.status().as_u16(), 200);

    api.submit(&body("split-1", "say_hello", json!({"name": "Split"}))).await;
    let task = api.wait_status("split-1", "succeeded", WAIT).await;
    assert_eq!(task["result"]["greeting"], "Hello, Split!");
    // The worker counts the outcome once its finish is written, so the API may show the task
    // succeeded a moment before the worker's counter does.
    let counted = r#"gateway_task_outcomes_total{topic="say_hello",outcome="succeeded"} 1"#;
    crate::helpers::eventually("the worker counting the outcome", Duration::from_secs(10), || async {
        worker.get("/metrics").await.text().await.unwrap_or_default().contains(counted)
    })
    .await;
    worker.cleanup().await;
    let mut api = api;
    api.stop().await;
}
