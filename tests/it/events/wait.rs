//! `GET /tasks/{id}/status?wait=`: answered as soon as the task is final, well before the wait,
//! even past the request timeout; on timeout the current state; 400 for a bad value. And who may
//! read `/events`: a `read` key (header or `?access_token=`), nobody else.

use std::time::{Duration, Instant};

use serde_json::json;

use super::sse::Sse;
use crate::helpers::{AppOptions, body, downstream_with, http_topic, key_file, spawn_app_with};

/// Submits to the slow topic; again on a 503 (a store slowed by the suite's other tests can take
/// longer than this app's short request timeout; a resubmit is idempotent).
async fn submit(app: &crate::helpers::TestApp, id: &str) {
    for _ in 0..10 {
        match app.submit(&body(id, "slow", json!({}))).await {
            (200, _) => return,
            (503, _) => tokio::time::sleep(Duration::from_millis(500)).await,
            (code, answer) => panic!("submit answered {code}: {answer}"),
        }
    }
    panic!("submit of {id} kept answering 503");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_wait_answers_when_the_task_is_final_and_the_current_state_on_timeout() {
    // A handler that takes 3 s, and a request timeout of 2 s the wait must not be cut by.
    let slow = downstream_with(vec![200], Duration::from_secs(3), None).await;
    let app = spawn_app_with(AppOptions {
        topics: vec![("slow".into(), http_topic(&slow.url, 1, 30))],
        vars: vec![("REQUEST_TIMEOUT_SECONDS".into(), "2".into())],
        ..Default::default()
    })
    .await;
    submit(&app, "wait-1").await;
    let started = Instant::now();
    let (code, v) = app.get_json("/tasks/wait-1/status?wait=30").await;
    let took = started.elapsed();
    assert_eq!((code, v["status"].as_str()), (200, Some("succeeded")), "{v}");
    assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(15), "answered after {took:?}");

    // Times out with the current state.
    submit(&app, "wait-2").await;
    let started = Instant::now();
    let (code, v) = app.get_json("/tasks/wait-2/status?wait=1").await;
    let took = started.elapsed();
    assert_eq!(code, 200, "{v}");
    assert!(["queued", "processing"].contains(&v["status"].as_str().unwrap_or_default()), "{v}");
    assert!(took >= Duration::from_secs(1) && took < Duration::from_secs(2), "answered after {took:?}");
    // An already final task answers at once.
    let started = Instant::now();
    let (_, v) = app.get_json("/tasks/wait-1/status?wait=30").await;
    assert_eq!(v["status"], "succeeded");
    assert!(started.elapsed() < Duration::from_secs(1));

    for bad in ["-1", "abc", "NaN"] {
        let (code, v) = app.get_json(&format!("/tasks/wait-1/status?wait={bad}")).await;
        assert_eq!(code, 400, "wait={bad}: {v}");
        assert_eq!(v["details"][0]["field"], "wait", "{v}");
    }
    let (code, _) = app.get_json("/tasks/nope/status?wait=5").await;
    assert_eq!(code, 404);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_need_the_read_scope_by_header_or_access_token() {
    let submit_only = "it-submit-only-9c1d2e3f4a5b6c7d8e9f";
    let keys = key_file(&format!(
        "[[keys]]\nid = \"submitter\"\nhash = \"sha256:{}\"\nscopes = [\"submit\"]\n",
        worker_api_gateway::auth::hash_secret(submit_only)
    ));
    let app = spawn_app_with(AppOptions {
        vars: vec![("API_KEYS_FILE".into(), keys.display().to_string())],
        ..Default::default()
    })
    .await;
    let anonymous = reqwest::Client::new();
    let none = Sse::open(&anonymous, &app.address, "", None).await;
    assert_eq!(none.status, 401);
    let wrong = Sse::open(&anonymous, &app.address, "?access_token=not-a-key", None).await;
    assert_eq!(wrong.status, 401);
    let submitter = anonymous.get(app.url("/events")).bearer_auth(submit_only).send().await.expect("answers");
    assert_eq!(submitter.status().as_u16(), 403);
    let by_query = Sse::open(&anonymous, &app.address, &format!("?access_token={submit_only}"), None).await;
    assert_eq!(by_query.status, 403);
    // The key in the query works for /events...
    let mut reader = Sse::open(
        &anonymous,
        &app.address,
        &format!("?task_id=scoped-1&access_token={}", crate::helpers::TEST_KEY),
        None,
    )
    .await;
    assert_eq!(reader.status, 200);
    app.submit(&body("scoped-1", "say_hello", json!({"name": "Ana"}))).await;
    let first = reader.next(Duration::from_secs(30)).await.expect("an event");
    assert_eq!(first.json()["task_id"], "scoped-1", "the filter next to access_token still applies");
    // ...and nowhere else.
    let elsewhere = anonymous
        .get(app.url(&format!("/tasks/scoped-1/status?access_token={}", crate::helpers::TEST_KEY)))
        .send()
        .await
        .expect("answers");
    assert_eq!(elsewhere.status().as_u16(), 401);
    app.cleanup().await;
}
