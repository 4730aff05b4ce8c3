//! Reports never give up silently: against the real engine behind a stand-in that answers
//! `complete` with 500 while told to (a real engine does not fail on demand), a report is sent
//! again well past the old twelve-send limit and becomes `report_failed` only at its maximum age
//! (`CAMUNDA_REPORT_MAX_AGE_HOURS`, a few seconds here); a re-send by hand then delivers it; the
//! gauges show what is owed and how old. In pull mode the lock is kept while the report is owed,
//! lapses once it is given up, and when the engine offers the task again the report is owed again
//! and lands, without the handler running twice.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::Duration,
};

use serde_json::{Value, json};

use crate::{
    camunda::{native_topic, seed_worker_submits, topic_name, wait_report},
    engine::Engine,
    helpers::{AppOptions, TestApp, spawn_app_with},
};

const WAIT: Duration = Duration::from_secs(40);
/// `CAMUNDA_REPORT_MAX_AGE_HOURS` in these tests: 7.2 s.
const MAX_AGE_HOURS: &str = "0.002";
const MAX_AGE: Duration = Duration::from_millis(7_200);

/// The engine behind a stand-in that forwards every call, except that while `failing` holds it
/// answers `complete` with 500 itself; `completes` counts the `complete` calls it saw.
struct FailingCompletes {
    url: String,
    failing: Arc<AtomicBool>,
    completes: Arc<AtomicU32>,
}

async fn failing_completes(engine: &Engine) -> FailingCompletes {
    use axum::{body::Bytes, extract::State, http::Method, http::StatusCode, http::Uri, response::IntoResponse};
    let failing = Arc::new(AtomicBool::new(true));
    let completes = Arc::new(AtomicU32::new(0));
    let target = engine.base.trim_end_matches("/engine-rest").to_owned();
    let (fail, count) = (failing.clone(), completes.clone());
    let forward = move |State(client): State<reqwest::Client>, method: Method, uri: Uri, body: Bytes| {
        let url = format!("{target}{uri}");
        let (fail, count) = (fail.clone(), count.clone());
        async move {
            if uri.path().ends_with("/complete") {
                count.fetch_add(1, Ordering::SeqCst);
                if fail.load(Ordering::SeqCst) {
                    let body = r#"{"type":"ProcessEngineException","message":"stand-in: engine failing"}"#;
                    return (StatusCode::INTERNAL_SERVER_ERROR, body).into_response();
                }
            }
            let request = client.request(method, url).header("content-type", "application/json").body(body);
            match request.send().await {
                Ok(r) => {
                    let status = StatusCode::from_u16(r.status().as_u16()).unwrap_or_default();
                    (status, r.bytes().await.unwrap_or_default()).into_response()
                }
                Err(_) => StatusCode::BAD_GATEWAY.into_response(),
            }
        }
    };
    let app = axum::Router::new().fallback(forward).with_state(reqwest::Client::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    FailingCompletes { url: format!("http://127.0.0.1:{port}/engine-rest"), failing, completes }
}

/// A gateway reporting through `camunda`, with small report backoffs and the given maximum age.
async fn gateway(camunda: &FailingCompletes, topic: &str, topic_file: String, max_age_hours: &str) -> TestApp {
    let vars = [
        ("CAMUNDA_URL", camunda.url.as_str()),
        ("CAMUNDA_REPORT_BACKOFF_INITIAL_MS", "50"),
        ("CAMUNDA_REPORT_BACKOFF_MAX_MS", "200"),
        ("CAMUNDA_REPORT_MAX_AGE_HOURS", max_age_hours),
    ];
    let vars = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    spawn_app_with(AppOptions { topics: vec![(topic.to_owned(), topic_file)], vars, ..Default::default() }).await
}

/// The value of an unlabelled (or exactly labelled) sample in the gateway's `/metrics`.
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

async fn metrics(app: &TestApp) -> String {
    app.get("/metrics").await.text().await.unwrap_or_default()
}

/// Polls `/metrics` until `done` holds for it.
async fn wait_metrics(app: &TestApp, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let text = metrics(app).await;
        if done(&text) {
            return text;
        }
        assert!(tokio::time::Instant::now() < deadline, "metrics never showed {what}:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const PENDING: &str = "gateway_camunda_reports_by_state{state=\"pending\"}";
const FAILED: &str = "gateway_camunda_reports_by_state{state=\"report_failed\"}";
const OLDEST: &str = "gateway_camunda_oldest_pending_report_seconds";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_is_re_sent_past_twelve_sends_given_up_only_at_its_maximum_age_and_re_sent_by_hand() {
    let engine = Engine::new();
    let camunda = failing_completes(&engine).await;
    let topic = topic_name("age");
    let d = engine.deploy("say_hello", &topic).await;
    let app = gateway(&camunda, &topic, native_topic("say_hello", ""), MAX_AGE_HOURS).await;
    let pid = engine.start(&d.key, json!({"name": "Ada"})).await;
    let task = seed_worker_submits(&engine, &app, &d, "age-worker", "age-worker").await;
    let id = task["id"].as_str().unwrap_or_default().to_owned();
    let path = format!("/tasks/{id}/status");

    // Past the old limit of twelve sends, the report is still owed, and the gauges say so.
    let owed = |v: Value| v["camunda"]["report_attempts"].as_u64().unwrap_or(0) > 12;
    let status = app.wait_for("a thirteenth send", WAIT, owed, &path).await;
    assert_eq!(status["camunda"]["report_state"], "pending", "{status}");
    let text = wait_metrics(&app, "one owed report with an age", |m| {
        sample(m, PENDING) == Some(1.0) && sample(m, OLDEST).is_some_and(|s| s > 0.0)
    })
    .await;
    assert_eq!(sample(&text, FAILED), Some(0.0), "{text}");

    // Given up at the maximum age, not before, saying why.
    let status = wait_report(&app, &id, "report_failed").await;
    let error = status["camunda"]["last_report_error"].as_str().unwrap_or_default();
    assert!(error.starts_with("gave up after ") && error.contains(" sends over 0.00"), "{error}");
    assert!(error.contains("stand-in: engine failing"), "{error}");
    let stored = app.status_from_store(&id).await;
    let completed = stored.completed_at.expect("a final task has a completion time").timestamp_millis();
    let given_up_after = stored.updated_at.timestamp_millis() - completed;
    assert!(given_up_after >= MAX_AGE.as_millis() as i64 - 100, "given up {given_up_after} ms after completion");
    let sends = camunda.completes.load(Ordering::SeqCst);
    assert!(sends > 12, "only {sends} sends");
    wait_metrics(&app, "the report given up", |m| sample(m, FAILED) == Some(1.0) && sample(m, PENDING) == Some(0.0))
        .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(camunda.completes.load(Ordering::SeqCst), sends, "a given-up report is not sent again on its own");

    // The engine recovers; an operator re-sends the report, and it lands.
    camunda.failing.store(false, Ordering::SeqCst);
    let r = app.client.post(app.url(&format!("/tasks/{id}/report"))).send().await.expect("gateway answers");
    assert_eq!(r.status().as_u16(), 200);
    let status = wait_report(&app, &id, "reported").await;
    assert_eq!(status["camunda"]["reported_as"], "complete", "{status}");
    assert!(status["audit"].as_array().is_some_and(|a| a.iter().any(|e| e["action"] == "resend_report")), "{status}");
    engine.wait_instance(&pid, "COMPLETED", WAIT).await;
    wait_metrics(&app, "nothing owed", |m| sample(m, FAILED) == Some(0.0) && sample(m, PENDING) == Some(0.0)).await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_pull_mode_an_owed_report_keeps_the_lock_and_a_given_up_one_is_owed_again_when_offered_again() {
    let engine = Engine::new();
    let camunda = failing_completes(&engine).await;
    let topic = topic_name("agepull");
    let d = engine.deploy("say_hello", &topic).await;
    // A 6 s lock is looked at every 750 ms and extended with 3 s left: room for a loaded
    // runner's slow store or engine. Given up after 21.6 s, 3.6 times the lock.
    let file = native_topic("say_hello", "source = \"camunda\"\nlock_duration_seconds = 6\nconcurrency = 1");
    let app = gateway(&camunda, &topic, file, "0.006").await;
    let pid = engine.start(&d.key, json!({"name": "Lin"})).await;
    let list = format!("/tasks?topic={topic}");
    let listed = app.wait_for("the pulled task", WAIT, |v| v["tasks"][0]["task_id"].is_string(), &list).await;
    let id = listed["tasks"][0]["task_id"].as_str().unwrap_or_default().to_owned();

    // While its report is owed — more than three times the lock — nobody else gets the task.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, v) = app.status(&id).await;
        if v["camunda"]["report_state"] == "report_failed" {
            break;
        }
        assert!(engine.fetch_now("thief", &d.topic).await.is_empty(), "the lock lapsed while the report was owed");
        assert!(tokio::time::Instant::now() < deadline, "never given up: {v}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(camunda.completes.load(Ordering::SeqCst) > 12);

    // Given up, the lock lapses; the engine offers the task again and the gateway, fetching it,
    // owes its report again under the fresh lock. Once the engine recovers, it lands.
    let path = format!("/tasks/{id}/status");
    let offered = |v: Value| {
        v["camunda"]["report_state"] == "pending"
            && v["audit"].as_array().is_some_and(|a| a.iter().any(|e| e["by"] == "camunda (offered again)"))
    };
    app.wait_for("the report owed again", Duration::from_secs(60), offered, &path).await;
    camunda.failing.store(false, Ordering::SeqCst);
    let status = wait_report(&app, &id, "reported").await;
    assert_eq!(status["camunda"]["reported_as"], "complete", "{status}");
    assert_eq!(status["attempts"], 1, "the handler ran once: {status}");
    engine.wait_instance(&pid, "COMPLETED", WAIT).await;
    assert!(engine.incidents(&pid).await.is_empty());
    app.cleanup().await;
}
