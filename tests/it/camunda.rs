//! Against the real Camunda 7.24 engine: the seed's worker flow with and without report mode,
//! typed result variables, bpmnError, failure → incident, lock extension, 404/400 recorded as
//! final, pull mode at volume, and hand-back of unstarted tasks at shutdown. Each test deploys
//! its own copy of a fixture under a unique topic, so tests never take each other's tasks.

use std::time::Duration;

use futures::future::join_all;
use serde_json::{Value, json};
use worker_api_gateway::{store::ReportState, topics::JsonVariables};

use crate::{
    engine::{Deployed, Engine},
    helpers::{AppOptions, TestApp, downstream_with, spawn_app_with, unique},
};

const WAIT: Duration = Duration::from_secs(30);

pub(crate) fn topic_name(prefix: &str) -> String {
    unique(prefix).to_ascii_lowercase()
}

/// A native topic running `native` under another name.
pub(crate) fn native_topic(native: &str, extra: &str) -> String {
    format!(
        "handler = \"native\"\nnative = \"{native}\"\ntimeout_seconds = 30\n{extra}\n[retry]\nmax_attempts = 3\ninitial_backoff_ms = 200\n"
    )
}

pub(crate) fn http_topic(url: &str, extra: &str, attempts: u32, backoff_ms: u64) -> String {
    format!(
        "handler = \"http\"\nurl = \"{url}\"\ntimeout_seconds = 30\n{extra}\n[retry]\nmax_attempts = {attempts}\ninitial_backoff_ms = {backoff_ms}\nmax_backoff_ms = {backoff_ms}\n"
    )
}

pub(crate) async fn gateway(engine: &Engine, topic: &str, topic_file: String, report: bool) -> TestApp {
    let vars = if report { vec![("CAMUNDA_URL".to_owned(), engine.base.clone())] } else { vec![] };
    spawn_app_with(AppOptions { topics: vec![(topic.to_owned(), topic_file)], vars, ..Default::default() }).await
}

/// The seed's worker: fetch and lock one task as `worker`, submit it to the gateway.
pub(crate) async fn seed_worker_submits(
    engine: &Engine,
    app: &TestApp,
    d: &Deployed,
    worker: &str,
    as_worker: &str,
) -> Value {
    let tasks = engine.fetch(worker, &d.topic, 1, 60_000).await;
    let task = tasks.first().cloned().expect("the started instance's task is fetched");
    let variables: serde_json::Map<String, Value> =
        task["variables"].as_object().map(worker_api_gateway::camunda::variables::from_typed_map).unwrap_or_default();
    let id = task["id"].as_str().expect("task id");
    let (status, v) =
        app.submit(&json!({"task_id": id, "worker_id": as_worker, "topic": d.topic, "variables": variables})).await;
    assert_eq!(status, 200, "{v}");
    task
}

pub(crate) async fn wait_report(app: &TestApp, task_id: &str, state: &str) -> Value {
    let path = format!("/tasks/{task_id}/status");
    app.wait_for(&format!("report {state}"), WAIT, |v| v["camunda"]["report_state"] == state, &path).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_mode_completes_the_seed_workers_task_while_it_still_holds_the_lock() {
    let engine = Engine::new();
    let topic = topic_name("hello");
    let d = engine.deploy("say_hello", &topic).await;
    let app = gateway(&engine, &topic, native_topic("say_hello", ""), true).await;
    let pid = engine.start(&d.key, json!({"name": "Ana"})).await;

    let task = seed_worker_submits(&engine, &app, &d, "seed-worker-x", "seed-worker-x").await;
    let id = task["id"].as_str().unwrap_or_default();
    let status = wait_report(&app, id, "reported").await;
    assert_eq!(status["status"], "succeeded");

    let instance = engine.wait_instance(&pid, "COMPLETED", WAIT).await;
    // The worker's lock (60 s) had not run out: the gateway's report ended the task.
    let lock_until =
        chrono::DateTime::parse_from_str(task["lockExpirationTime"].as_str().unwrap_or(""), "%Y-%m-%dT%H:%M:%S%.3f%z");
    let ended = chrono::DateTime::parse_from_str(instance["endTime"].as_str().unwrap_or(""), "%Y-%m-%dT%H:%M:%S%.3f%z");
    assert!(ended.expect("endTime") < lock_until.expect("lock time"), "completed before the lock expired");
    let vars = engine.variables(&pid).await;
    assert_eq!(vars["greeting"], ("String".to_owned(), json!("Hello, Ana!")));
    assert_eq!(vars["worker_id"], ("String".to_owned(), json!("seed-worker-x")));
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_report_mode_the_seed_worker_completes_the_task_itself() {
    let engine = Engine::new();
    let topic = topic_name("hello");
    let d = engine.deploy("say_hello", &topic).await;
    let app = gateway(&engine, &topic, native_topic("say_hello", ""), false).await;
    let pid = engine.start(&d.key, json!({"name": "Bia"})).await;

    let task = seed_worker_submits(&engine, &app, &d, "seed-worker-y", "seed-worker-y").await;
    let id = task["id"].as_str().unwrap_or_default();
    let status = app.wait_status(id, "succeeded", WAIT).await;
    assert_eq!(status["camunda"]["report_state"], "not_applicable");
    assert_eq!(engine.instance_state(&pid).await, "ACTIVE", "nothing completed it behind the worker's back");

    // The worker polls the status and completes with the result, as the seed's workers do.
    let result = status["result"].as_object().cloned().unwrap_or_default();
    let variables = worker_api_gateway::camunda::variables::to_typed_map(&result, JsonVariables::Object);
    let (code, v) = engine
        .post(&format!("/external-task/{id}/complete"), json!({"workerId": "seed-worker-y", "variables": variables}))
        .await;
    assert_eq!(code, 204, "{v}");
    engine.wait_instance(&pid, "COMPLETED", WAIT).await;
    assert_eq!(engine.variables(&pid).await["greeting"].1, json!("Hello, Bia!"));
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn result_variables_reach_camunda_with_their_types() {
    let engine = Engine::new();
    let topic = topic_name("typed");
    let d = engine.deploy("say_hello", &topic).await;
    let reply = json!({"s": "text", "b": true, "i": 42, "l": 3_000_000_000_i64, "d": 0.5,
        "obj": {"a": [1, 2]}, "arr": ["x"], "n": null, "when": "2024-01-02T03:04:05.000+0000"});
    let down = downstream_with(vec![200], Duration::ZERO, Some(reply)).await;
    let app = gateway(&engine, &topic, http_topic(&down.url, "", 3, 200), true).await;
    let pid = engine.start(&d.key, json!({"name": "x"})).await;
    let task = seed_worker_submits(&engine, &app, &d, "typed-worker", "typed-worker").await;
    wait_report(&app, task["id"].as_str().unwrap_or_default(), "reported").await;
    engine.wait_instance(&pid, "COMPLETED", WAIT).await;

    let vars = engine.variables(&pid).await;
    let kind = |name: &str| vars.get(name).map(|(t, _)| t.as_str()).unwrap_or("missing");
    assert_eq!(
        ["s", "b", "i", "l", "d", "obj", "arr", "n", "when"].map(kind),
        ["String", "Boolean", "Integer", "Long", "Double", "Object", "Object", "Null", "Date"]
    );
    assert_eq!(vars["l"].1, json!(3_000_000_000_i64));
    let obj: Value = serde_json::from_str(vars["obj"].1.as_str().unwrap_or("null")).unwrap_or(Value::Null);
    assert_eq!(obj, json!({"a": [1, 2]}));
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_business_error_is_a_bpmn_error_caught_by_the_boundary_event() {
    let engine = Engine::new();
    let topic = topic_name("nova");
    let d = engine.deploy("nova_publicacao", &topic).await;
    let errors = "[errors]\nvalidation = \"INVALID_INPUT\"";
    let app = gateway(&engine, &topic, native_topic("nova_publicacao", errors), true).await;
    let pid = engine
        .start(
            &d.key,
            json!({"numero_processo": "1", "data_publicacao": "31/02/2024",
        "texto_publicacao": "x", "fonte": "jornal"}),
        )
        .await;
    let task = seed_worker_submits(&engine, &app, &d, "nova-worker", "nova-worker").await;
    let status = wait_report(&app, task["id"].as_str().unwrap_or_default(), "reported").await;
    assert_eq!((status["status"].as_str(), status["attempts"].as_u64()), (Some("failed"), Some(1)));

    engine.wait_instance(&pid, "COMPLETED", WAIT).await;
    assert!(engine.activity_reached(&pid, "invalid_input_end").await, "the boundary event's path was taken");
    assert!(!engine.activity_reached(&pid, "done_end").await);
    let vars = engine.variables(&pid).await;
    assert_eq!(vars["errorCode"].1, json!("INVALID_INPUT"));
    let message = vars["errorMessage"].1.as_str().unwrap_or_default().to_owned();
    assert!(message.contains("data_publicacao"), "errorMessage carries the handler's message: {message}");
    assert_eq!(status["camunda"]["reported_as"], "bpmn_error INVALID_INPUT");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retryable_failures_are_reported_with_retries_left_then_as_an_incident() {
    let engine = Engine::new();
    let topic = topic_name("flaky");
    let d = engine.deploy("say_hello", &topic).await;
    let down = downstream_with(vec![503], Duration::ZERO, None).await;
    let app = gateway(&engine, &topic, http_topic(&down.url, "", 2, 3000), true).await;
    let pid = engine.start(&d.key, json!({})).await;
    let task = seed_worker_submits(&engine, &app, &d, "flaky-worker", "flaky-worker").await;
    let id = task["id"].as_str().unwrap_or_default().to_owned();

    // After the first attempt: Camunda shows one retry left and the error, no incident yet.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, t) = engine.get(&format!("/external-task/{id}")).await;
        if t["retries"] == 1 {
            assert!(t["errorMessage"].as_str().unwrap_or("").contains("503"), "{t}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no failure report with retries: {t}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(engine.incidents(&pid).await.is_empty());

    // The last attempt fails too: retries 0, an incident, one final report.
    let status = wait_report(&app, &id, "reported").await;
    assert_eq!((status["status"].as_str(), status["attempts"].as_u64()), (Some("failed"), Some(2)));
    let incidents = engine.incidents(&pid).await;
    assert_eq!(incidents.len(), 1, "{incidents:?}");
    assert_eq!(incidents[0]["incidentType"], "failedExternalTask");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_mode_extends_the_lock_of_a_handler_running_three_times_longer() {
    let engine = Engine::new();
    let topic = topic_name("slow");
    let d = engine.deploy("say_hello", &topic).await;
    // A 4 s lock is looked at every 500 ms and extended with 2 s left: room for a loaded runner's
    // slow store or engine (with 2 s it lapsed once in a full CI run). The handler takes 12 s.
    let down = downstream_with(vec![200], Duration::from_secs(12), None).await;
    let file = http_topic(&down.url, "source = \"camunda\"\nlock_duration_seconds = 4\nconcurrency = 2", 1, 100);
    let app = gateway(&engine, &topic, file, true).await;
    let pid = engine.start(&d.key, json!({"n": 1})).await;

    // While the handler runs, another worker keeps asking for the task: the lock never lapses.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(24);
    while engine.instance_state(&pid).await == "ACTIVE" {
        assert!(engine.fetch_now("thief", &d.topic).await.is_empty(), "the lock lapsed while the handler ran");
        assert!(tokio::time::Instant::now() < deadline, "the instance did not complete");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(engine.instance_state(&pid).await, "COMPLETED");
    assert!(engine.incidents(&pid).await.is_empty());
    assert_eq!(down.calls.load(std::sync::atomic::Ordering::SeqCst), 1, "the handler ran once");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_deleted_at_camunda_is_recorded_as_report_failed_without_retrying() {
    let engine = Engine::new();
    let topic = topic_name("gone");
    let d = engine.deploy("say_hello", &topic).await;
    let down = downstream_with(vec![200], Duration::from_secs(2), None).await;
    let app = gateway(&engine, &topic, http_topic(&down.url, "", 3, 200), true).await;
    let pid = engine.start(&d.key, json!({})).await;
    let task = seed_worker_submits(&engine, &app, &d, "gone-worker", "gone-worker").await;
    assert_eq!(engine.delete(&format!("/process-instance/{pid}")).await, 204);

    let id = task["id"].as_str().unwrap_or_default();
    let status = wait_report(&app, id, "report_failed").await;
    assert_eq!(status["status"], "succeeded");
    assert!(status["camunda"]["last_report_error"].as_str().unwrap_or("").contains("not found"), "{status}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(app.status(id).await.1["camunda"]["report_attempts"], 1, "no retry loop");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_locked_by_another_worker_is_recorded_as_report_failed() {
    let engine = Engine::new();
    let topic = topic_name("stolen");
    let d = engine.deploy("say_hello", &topic).await;
    let app = gateway(&engine, &topic, native_topic("say_hello", ""), true).await;
    engine.start(&d.key, json!({})).await;
    // Locked by worker X, submitted as worker Y: Camunda refuses Y's completion (400).
    let task = seed_worker_submits(&engine, &app, &d, "worker-x", "worker-y").await;
    let id = task["id"].as_str().unwrap_or_default();
    let status = wait_report(&app, id, "report_failed").await;
    assert!(status["camunda"]["last_report_error"].as_str().unwrap_or("").contains("worker-x"), "{status}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(app.status(id).await.1["camunda"]["report_attempts"], 1, "no retry loop");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_instances_complete_in_pull_mode_with_no_incidents() {
    let engine = Engine::new();
    let topic = topic_name("pull");
    let d = engine.deploy("say_hello", &topic).await;
    let app = gateway(&engine, &topic, native_topic("say_hello", "source = \"camunda\"\nconcurrency = 16"), true).await;
    let mut pids = Vec::new();
    for chunk in (0..100).collect::<Vec<_>>().chunks(10) {
        pids.extend(join_all(chunk.iter().map(|i| engine.start(&d.key, json!({"name": format!("p{i}")})))).await);
    }
    let path = format!("/history/process-instance/count?processDefinitionKey={}&finished=true", d.key);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let (_, v) = engine.get(&path).await;
        if v["count"] == 100 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "only {} of 100 completed", v["count"]);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (_, incidents) = engine.get(&format!("/history/incident?processDefinitionKey={}", d.key)).await;
    assert_eq!(incidents.as_array().map(Vec::len), Some(0), "{incidents}");
    let vars = engine.variables(&pids[7]).await;
    assert_eq!(vars["greeting"].1, json!("Hello, p7!"));
    let (_, stats) = app.get_json("/tasks/statistics").await;
    assert_eq!(stats["by_status"]["succeeded"], 100, "{stats}");
    assert_eq!(stats["by_worker"]["worker-api-gateway"], 100, "{stats}");
    // Nobody sent these tasks with a trace: each pulled task begins one of its own.
    let (_, listed) = app.get_json(&format!("/tasks?topic={topic}&limit=100")).await;
    let traces: std::collections::HashSet<&str> = listed["tasks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["trace_id"].as_str())
        .filter(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) && id.bytes().any(|b| b != b'0'))
        .collect();
    assert_eq!(traces.len(), 100, "one valid trace id per pulled task: {listed}");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_hands_back_pulled_tasks_that_never_started() {
    let engine = Engine::new();
    let topic = topic_name("handback");
    let d = engine.deploy("say_hello", &topic).await;
    let down = downstream_with(vec![200], Duration::from_secs(2), None).await;
    let file = http_topic(&down.url, "source = \"camunda\"\nconcurrency = 1", 1, 100);
    let mut app = gateway(&engine, &topic, file, true).await;
    for _ in 0..3 {
        engine.start(&d.key, json!({})).await;
    }
    // Concurrency 1 → the gateway locks at most 2: one running, one waiting.
    app.wait_for("two pulled tasks", WAIT, |s| s["total_tasks"] == 2, "/tasks/statistics").await;
    app.stop().await;

    let tasks: Vec<worker_api_gateway::store::TaskRecord> = {
        use futures::TryStreamExt;
        let cursor = app.mongo.collection("tasks").find(bson::doc! {}).await.expect("find");
        cursor.try_collect().await.expect("tasks")
    };
    let handed_back: Vec<_> = tasks.iter().filter(|t| t.status.as_str() == "cancelled").collect();
    assert_eq!(handed_back.len(), 1, "{tasks:?}");
    // The cancel owed Camunda its unlock, and the unlock is recorded as that report.
    let link = &handed_back[0].camunda;
    assert_eq!((link.report_state, link.reported_as.as_deref()), (ReportState::Reported, Some("unlock")), "{link:?}");
    let (_, at_camunda) = engine.get(&format!("/external-task/{}", handed_back[0].task_id)).await;
    assert!(at_camunda["workerId"].is_null() && at_camunda["lockExpirationTime"].is_null(), "unlocked: {at_camunda}");
    // So another worker can take it (and the third, never locked) right away.
    assert_eq!(engine.fetch_now("next-worker", &d.topic).await.len(), 2);
    crate::helpers::delete_topology(&app.exchange, &app.topic_names()).await;
    let _ = app.mongo.drop().await;
}

/// A stand-in Camunda that fails `complete` with 500 `failures` times, then accepts it.
async fn flaky_camunda(failures: u32) -> (String, std::sync::Arc<std::sync::atomic::AtomicU32>) {
    use axum::{Router, extract::State, http::StatusCode, routing::post};
    use std::sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    };
    let calls = Arc::new(AtomicU32::new(0));
    let app = Router::new()
        .route(
            "/engine-rest/external-task/{id}/complete",
            post(move |State(calls): State<Arc<AtomicU32>>| async move {
                if calls.fetch_add(1, Ordering::SeqCst) < failures {
                    (StatusCode::INTERNAL_SERVER_ERROR, r#"{"type":"ProcessEngineException","message":"boom"}"#)
                } else {
                    (StatusCode::NO_CONTENT, "")
                }
            }),
        )
        .with_state(calls.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://127.0.0.1:{port}/engine-rest"), calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_camunda_answering_500_gets_the_report_again_with_backoff_without_rerunning_the_handler() {
    let (url, calls) = flaky_camunda(2).await;
    let app = spawn_app_with(AppOptions { vars: vec![("CAMUNDA_URL".into(), url)], ..Default::default() }).await;
    app.submit(&crate::helpers::body("flaky-report-1", "say_hello", json!({"name": "R"}))).await;
    let status = wait_report(&app, "flaky-report-1", "reported").await;
    assert_eq!(status["camunda"]["report_attempts"], 3, "{status}");
    assert_eq!(status["attempts"], 1, "the handler ran once");
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 3);
    app.cleanup().await;
}
