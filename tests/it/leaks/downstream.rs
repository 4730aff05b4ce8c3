//! The `http` handler against downstreams that try something: a redirect to another origin is
//! not followed and fails the task for good (reqwest and h2c paths); a redirect within the
//! origin still works, a redirect loop stops; an answer over the bound fails the task instead of
//! being held in memory.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::{any, post},
};
use serde_json::{Value, json};

use crate::helpers::{AppOptions, body, http_topic, spawn_app_with};

const WAIT: Duration = Duration::from_secs(30);

/// Serves `app` on a local port (HTTP/1.1 and h2c); returns `http://127.0.0.1:port`.
async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://127.0.0.1:{port}")
}

fn redirect(status: StatusCode, location: &str) -> Response {
    (status, [(header::LOCATION, location.to_owned())]).into_response()
}

/// A downstream that counts every request it gets, whatever its path or method.
async fn counting() -> (String, Arc<AtomicU32>) {
    let calls = Arc::new(AtomicU32::new(0));
    let app = Router::new()
        .fallback(any(|State(calls): State<Arc<AtomicU32>>| async move {
            calls.fetch_add(1, Ordering::SeqCst);
            Json(json!({"stolen": true}))
        }))
        .with_state(calls.clone());
    (serve(app).await, calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_to_another_origin_fails_the_task_for_good_and_is_not_followed() {
    // Arrange: two downstreams answer 302 / 307 to a third one on another port; a third topic
    // reaches the 302 one over h2c, which follows no redirect at all.
    let (elsewhere, stolen) = counting().await;
    let target = format!("{elsewhere}/collect?api_key=from-location");
    let (found, temporary) = (target.clone(), target);
    let found = serve(Router::new().route("/", post(move || async move { redirect(StatusCode::FOUND, &found) }))).await;
    let temporary = serve(
        Router::new().route("/", post(move || async move { redirect(StatusCode::TEMPORARY_REDIRECT, &temporary) })),
    )
    .await;
    let h2c = http_topic(&format!("{found}/"), 3, 5).replace("concurrency = 4\n", "concurrency = 4\nhttp2 = true\n");
    let topics = vec![
        ("moved".to_owned(), http_topic(&format!("{found}/"), 3, 5)),
        ("moved_temp".to_owned(), http_topic(&format!("{temporary}/"), 3, 5)),
        ("moved_h2c".to_owned(), h2c),
    ];
    let app = spawn_app_with(AppOptions { topics, ..Default::default() }).await;

    // Act
    for topic in ["moved", "moved_temp", "moved_h2c"] {
        assert_eq!(app.submit(&body(&format!("{topic}-1"), topic, json!({"secret": "s"}))).await.0, 200);
    }

    // Assert: failed on the first attempt (not retried), saying why, and nothing reached the
    // other origin.
    for topic in ["moved", "moved_temp"] {
        let task = app.wait_status(&format!("{topic}-1"), "failed", WAIT).await;
        assert_eq!((task["attempts"].clone(), task["metadata"]["error_code"].clone()), (json!(1), json!("processing")));
        let error = task["error_message"].as_str().unwrap_or_default();
        assert!(error.contains("redirected to another origin"), "{task}");
        assert!(!error.contains("127.0.0.1") && !error.contains("api_key"), "no URL in the error: {error}");
    }
    // Over h2c the 302 itself is final: one 302, the last step, never retried. (Once, under a
    // loaded CI run, the first h2c attempt ended on a transport error before any answer and was
    // retried as such; the 302 of the second attempt was final.)
    let h2c = app.wait_status("moved_h2c-1", "failed", WAIT).await;
    let steps: Vec<&str> = h2c["metadata"]["processing_steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["status"].as_str())
        .filter(|s| *s != "started")
        .collect();
    assert_eq!(steps, ["302"], "one answer, the 302, and no attempt after it: {h2c}");
    assert!(h2c["error_message"].as_str().unwrap_or_default().contains("302"), "{h2c}");
    assert_eq!(stolen.load(Ordering::SeqCst), 0, "the other origin was never called");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_within_the_origin_is_followed_and_a_loop_is_cut_short() {
    let hops = Arc::new(AtomicU32::new(0));
    let downstream = serve(
        Router::new()
            .route("/old", post(|| async { redirect(StatusCode::PERMANENT_REDIRECT, "/new") }))
            .route("/new", post(|Json(call): Json<Value>| async move { Json(json!({"echo": call["variables"]})) }))
            .route(
                "/loop",
                post(|State(hops): State<Arc<AtomicU32>>| async move {
                    hops.fetch_add(1, Ordering::SeqCst);
                    redirect(StatusCode::TEMPORARY_REDIRECT, "/loop")
                }),
            )
            .with_state(hops.clone()),
    )
    .await;
    let topics = vec![
        ("moved_here".to_owned(), http_topic(&format!("{downstream}/old"), 1, 5)),
        ("moved_loop".to_owned(), http_topic(&format!("{downstream}/loop"), 3, 5)),
    ];
    let app = spawn_app_with(AppOptions { topics, ..Default::default() }).await;

    app.submit(&body("here-1", "moved_here", json!({"n": 1}))).await;
    app.submit(&body("loop-1", "moved_loop", json!({}))).await;

    let here = app.wait_status("here-1", "succeeded", WAIT).await;
    assert_eq!(here["result"]["echo"], json!({"n": 1}), "the 308 re-POSTed the task: {here}");
    let looped = app.wait_status("loop-1", "failed", WAIT).await;
    assert_eq!(looped["attempts"], 1, "{looped}");
    assert!(looped["error_message"].as_str().unwrap_or_default().contains("more than 5 times"), "{looped}");
    assert_eq!(hops.load(Ordering::SeqCst), 6, "the first call and five redirects");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_over_the_bound_fails_the_task_on_either_transport() {
    // 5 MiB, over the 4 MiB bound: once with its length declared, once streamed without one.
    let big = || "x".repeat(5 * 1024 * 1024);
    let declared = serve(Router::new().route("/", post(move || async move { Json(json!({"blob": big()})) }))).await;
    let streamed = serve(Router::new().route(
        "/",
        post(|| async {
            let chunks = (0..80).map(|_| Ok::<_, std::io::Error>(vec![b' '; 64 * 1024]));
            axum::body::Body::from_stream(futures::stream::iter(chunks))
        }),
    ))
    .await;
    let h2c = http_topic(&format!("{streamed}/"), 3, 5).replace("concurrency = 4\n", "concurrency = 4\nhttp2 = true\n");
    let topics = vec![
        ("huge".to_owned(), http_topic(&format!("{declared}/"), 3, 5)),
        ("huge_streamed".to_owned(), http_topic(&format!("{streamed}/"), 3, 5)),
        ("huge_h2c".to_owned(), h2c),
    ];
    let app = spawn_app_with(AppOptions { topics, ..Default::default() }).await;

    for topic in ["huge", "huge_streamed", "huge_h2c"] {
        app.submit(&body(&format!("{topic}-1"), topic, json!({}))).await;
    }

    for topic in ["huge", "huge_streamed", "huge_h2c"] {
        let task = app.wait_status(&format!("{topic}-1"), "failed", WAIT).await;
        assert_eq!((task["attempts"].clone(), task["metadata"]["error_code"].clone()), (json!(1), json!("processing")));
        assert_eq!(task["error_message"], "downstream answer is larger than 4194304 bytes", "{task}");
    }
    app.cleanup().await;
}
