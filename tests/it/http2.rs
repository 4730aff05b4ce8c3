//! `http` topics with `http2 = true` on an `http://` URL go through the gateway's own HTTP/2
//! cleartext client, not reqwest: the same answer table must hold (2xx result, 422 business
//! error with the downstream's message, 503 and an unreachable downstream retryable).

use std::{sync::atomic::Ordering, time::Duration};

use serde_json::json;

use crate::helpers::{AppOptions, body, downstream, http_topic, silent_downstream, spawn_app_with};

const WAIT: Duration = Duration::from_secs(30);

fn h2_topic(url: &str, max_attempts: u32) -> String {
    http_topic(url, max_attempts, 5).replace("concurrency = 4\n", "concurrency = 4\nhttp2 = true\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_topic_maps_answers_like_any_http_topic() {
    let ok = downstream(vec![200]).await;
    let strict = downstream(vec![422]).await;
    let busy = downstream(vec![503]).await;
    let (closed, refused) = silent_downstream().await;
    drop(closed);
    let topics = vec![
        ("h2ok".into(), h2_topic(&ok.url, 1)),
        ("h2strict".into(), h2_topic(&strict.url, 3)),
        ("h2busy".into(), h2_topic(&busy.url, 2)),
        ("h2down".into(), h2_topic(&refused, 2)),
    ];
    let app = spawn_app_with(AppOptions { topics, ..Default::default() }).await;
    for topic in ["h2ok", "h2strict", "h2busy", "h2down"] {
        assert_eq!(app.submit(&body(&format!("{topic}-1"), topic, json!({"n": 7}))).await.0, 200);
    }

    let done = app.wait_status("h2ok-1", "succeeded", WAIT).await;
    assert_eq!(done["result"]["echo"], json!({"n": 7}), "{done}");
    assert_eq!(done["result"]["attempt"], 1);
    assert_eq!(ok.http2_calls.load(Ordering::SeqCst), 1, "the call went over HTTP/2");

    let business = app.wait_status("h2strict-1", "failed", WAIT).await;
    assert_eq!(
        (business["attempts"].clone(), business["metadata"]["error_code"].clone()),
        (json!(1), json!("validation"))
    );
    assert_eq!(business["error_message"], "scripted 422");
    assert_eq!(strict.http2_calls.load(Ordering::SeqCst), 1);

    let exhausted = app.wait_status("h2busy-1", "failed", WAIT).await;
    assert_eq!(exhausted["attempts"], 2, "a 503 is retried: {exhausted}");
    assert_eq!(exhausted["metadata"]["error_code"], "ATTEMPTS_EXHAUSTED");
    assert!(exhausted["error_message"].as_str().unwrap_or("").contains("503"), "{exhausted}");
    assert_eq!(busy.http2_calls.load(Ordering::SeqCst), 2);

    let unreachable = app.wait_status("h2down-1", "failed", WAIT).await;
    assert_eq!(unreachable["attempts"], 2, "a refused connection is retried: {unreachable}");
    assert!(unreachable["error_message"].as_str().unwrap_or("").contains("unreachable"), "{unreachable}");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_downstream_that_never_answers_times_out_and_is_retried() {
    // Accepts the connection and never speaks: the HTTP/2 handshake itself hangs.
    let (silent, url) = silent_downstream().await;
    let topic = http_topic(&url, 2, 1).replace("concurrency = 4\n", "concurrency = 4\nhttp2 = true\n");
    let app = spawn_app_with(AppOptions { topics: vec![("h2slow".into(), topic)], ..Default::default() }).await;
    app.submit(&body("h2slow-1", "h2slow", json!({}))).await;
    let task = app.wait_status("h2slow-1", "failed", WAIT).await;
    assert_eq!(task["attempts"], 2, "{task}");
    assert!(task["error_message"].as_str().unwrap_or("").contains("timed out"), "{task}");
    drop(silent);
    app.cleanup().await;
}
