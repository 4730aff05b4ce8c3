//! No outcome vanishes at Camunda: against the real 7.24 engine, a BPMN error no boundary event
//! catches, or one with no code configured, becomes an incident instead of a silent completion;
//! a cancel becomes one incident; a task the worker completed itself is recorded as
//! `completed_elsewhere`. Against a stand-in Camunda (for the lost-answer case a real engine
//! cannot produce on demand): a 404 on a re-send counts as delivered only when Camunda's history
//! names the gateway's worker.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use serde_json::{Value, json};

use crate::{
    camunda::{gateway, http_topic, native_topic, seed_worker_submits, topic_name, wait_report},
    engine::Engine,
    helpers::{AppOptions, body, downstream_with, spawn_app_with},
};

const WAIT: Duration = Duration::from_secs(30);

fn invalid_publication() -> Value {
    json!({"numero_processo": "1", "data_publicacao": "31/02/2024", "texto_publicacao": "x", "fonte": "jornal"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bpmn_error_no_boundary_event_catches_becomes_an_incident() {
    let engine = Engine::new();
    let topic = topic_name("uncaught");
    let d = engine.deploy("nova_publicacao", &topic).await;
    // The fixture's boundary event catches INVALID_INPUT only.
    let errors = "[errors]\nvalidation = \"SOMETHING_ELSE\"";
    let app = gateway(&engine, &topic, native_topic("nova_publicacao", errors), true).await;
    let pid = engine.start(&d.key, invalid_publication()).await;
    let task = seed_worker_submits(&engine, &app, &d, "uncaught-worker", "uncaught-worker").await;

    let status = wait_report(&app, task["id"].as_str().unwrap_or_default(), "reported").await;
    assert_eq!(status["camunda"]["reported_as"], "incident", "{status}");
    let incidents = engine.incidents(&pid).await;
    assert_eq!(incidents.len(), 1, "{incidents:?}");
    let message = incidents[0]["incidentMessage"].as_str().unwrap_or_default();
    assert!(message.starts_with("SOMETHING_ELSE: ") && message.contains("data_publicacao"), "{message}");
    assert_eq!(engine.instance_state(&pid).await, "ACTIVE", "the instance did not end as if it had succeeded");
    assert!(!engine.activity_reached(&pid, "done_end").await);
    assert!(!engine.activity_reached(&pid, "invalid_input_end").await);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_business_error_with_no_code_configured_becomes_an_incident() {
    let engine = Engine::new();
    let topic = topic_name("nocode");
    let d = engine.deploy("nova_publicacao", &topic).await;
    let app = gateway(&engine, &topic, native_topic("nova_publicacao", ""), true).await;
    let pid = engine.start(&d.key, invalid_publication()).await;
    let task = seed_worker_submits(&engine, &app, &d, "nocode-worker", "nocode-worker").await;
    let id = task["id"].as_str().unwrap_or_default().to_owned();

    let status = wait_report(&app, &id, "reported").await;
    assert_eq!(status["camunda"]["reported_as"], "incident", "{status}");
    assert_eq!(engine.incidents(&pid).await.len(), 1);
    let url = format!("{}/external-task/{id}/errorDetails", engine.base);
    let details = reqwest::get(url).await.expect("Camunda answers").text().await.unwrap_or_default();
    assert!(details.contains("maps no BPMN error code"), "{details}");
    assert_eq!(engine.instance_state(&pid).await, "ACTIVE");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_camunda_linked_task_raises_one_incident() {
    let engine = Engine::new();
    let topic = topic_name("cancel");
    let d = engine.deploy("say_hello", &topic).await;
    // The first attempt fails and the next one is far off: the task waits, retrying.
    let down = downstream_with(vec![503], Duration::ZERO, None).await;
    let app = gateway(&engine, &topic, http_topic(&down.url, "", 3, 60_000), true).await;
    let pid = engine.start(&d.key, json!({})).await;
    let task = seed_worker_submits(&engine, &app, &d, "cancel-worker", "cancel-worker").await;
    let id = task["id"].as_str().unwrap_or_default().to_owned();
    app.wait_status(&id, "retrying", WAIT).await;

    let r = app.client.delete(app.url(&format!("/tasks/{id}"))).send().await.expect("gateway answers");
    assert_eq!(r.status().as_u16(), 200);
    let status = wait_report(&app, &id, "reported").await;
    assert_eq!(
        (status["status"].as_str(), status["error_message"].as_str()),
        (Some("cancelled"), Some("cancelled via the gateway"))
    );
    assert_eq!(status["camunda"]["reported_as"], "incident");
    let incidents = engine.incidents(&pid).await;
    assert_eq!(incidents.len(), 1, "{incidents:?}");
    assert_eq!(incidents[0]["incidentMessage"], "cancelled via the gateway");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_the_worker_completed_itself_is_recorded_as_completed_elsewhere() {
    let engine = Engine::new();
    let topic = topic_name("elsewhere");
    let d = engine.deploy("say_hello", &topic).await;
    let down = downstream_with(vec![200], Duration::from_secs(2), Some(json!({"from": "gateway"}))).await;
    let app = gateway(&engine, &topic, http_topic(&down.url, "", 3, 200), true).await;
    let pid = engine.start(&d.key, json!({})).await;
    let task = seed_worker_submits(&engine, &app, &d, "eager-worker", "eager-worker").await;
    let id = task["id"].as_str().unwrap_or_default().to_owned();
    // The worker does not wait for the gateway and completes the task with its own variables.
    let mine = json!({"from": {"value": "worker", "type": "String"}});
    let (code, v) = engine
        .post(&format!("/external-task/{id}/complete"), json!({"workerId": "eager-worker", "variables": mine}))
        .await;
    assert_eq!(code, 204, "{v}");

    let status = wait_report(&app, &id, "completed_elsewhere").await;
    assert_eq!(status["camunda"]["completed_by"], "eager-worker", "{status}");
    assert_eq!(engine.variables(&pid).await["from"].1, json!("worker"), "the gateway's variables never arrived");
    let metrics = app.get("/metrics").await.text().await.unwrap_or_default();
    assert!(metrics.contains("outcome=\"completed_elsewhere\""), "{metrics}");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_the_worker_ended_with_its_own_bpmn_error_is_recorded_as_completed_elsewhere() {
    let engine = Engine::new();
    let topic = topic_name("selfthrown");
    let d = engine.deploy("nova_publicacao", &topic).await;
    let down = downstream_with(vec![200], Duration::from_secs(2), None).await;
    let app = gateway(&engine, &topic, http_topic(&down.url, "", 3, 200), true).await;
    let pid = engine.start(&d.key, json!({})).await;
    let task = seed_worker_submits(&engine, &app, &d, "thrower", "thrower").await;
    let id = task["id"].as_str().unwrap_or_default().to_owned();
    let thrown = json!({"workerId": "thrower", "errorCode": "INVALID_INPUT", "errorMessage": "mine"});
    assert_eq!(engine.post(&format!("/external-task/{id}/bpmnError"), thrown).await.0, 204);

    // A bpmnError leaves a deletion entry in the log, as a deleted instance does; the instance
    // went on (to the boundary event), so it was the worker's hand, not a deletion.
    let status = wait_report(&app, &id, "completed_elsewhere").await;
    assert_eq!(status["camunda"]["completed_by"], "thrower", "{status}");
    engine.wait_instance(&pid, "COMPLETED", WAIT).await;
    app.cleanup().await;
}

/// A stand-in Camunda whose `complete` answers 500 once (the answer to a send that may have
/// landed is lost) and 404 after; its external task log names, per task, who completed it.
async fn forgetful_camunda(completed_by: HashMap<String, String>) -> (String, Arc<AtomicU32>) {
    use axum::{
        Json, Router,
        extract::{Path, Query, State},
        http::StatusCode,
        routing::{get, post},
    };
    type Shared = (Arc<AtomicU32>, Arc<Mutex<HashMap<String, u32>>>, Arc<HashMap<String, String>>);
    let calls = Arc::new(AtomicU32::new(0));
    let state: Shared = (calls.clone(), Arc::default(), Arc::new(completed_by));
    let app = Router::new()
        .route(
            "/engine-rest/external-task/{id}/complete",
            post(|State((calls, seen, _)): State<Shared>, Path(id): Path<String>| async move {
                calls.fetch_add(1, Ordering::SeqCst);
                let mut seen = seen.lock().expect("stand-in mutex");
                let n = seen.entry(id).or_default();
                *n += 1;
                if *n == 1 {
                    (StatusCode::INTERNAL_SERVER_ERROR, r#"{"type":"ProcessEngineException","message":"lost"}"#)
                } else {
                    (StatusCode::NOT_FOUND, r#"{"type":"RestException","message":"External task not found"}"#)
                }
            }),
        )
        .route(
            "/engine-rest/history/external-task-log",
            get(|State((_, _, by)): State<Shared>, Query(q): Query<HashMap<String, String>>| async move {
                let worker = q.get("externalTaskId").and_then(|id| by.get(id)).cloned();
                Json(json!([{"workerId": worker, "successLog": true, "deletionLog": false}]))
            }),
        )
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://127.0.0.1:{port}/engine-rest"), calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_404_on_a_resend_counts_as_delivered_only_when_the_history_names_the_gateways_worker() {
    let by = HashMap::from([
        ("resend-mine".to_owned(), "worker-1".to_owned()),
        ("resend-theirs".to_owned(), "someone-else".to_owned()),
    ]);
    let (url, calls) = forgetful_camunda(by).await;
    let app = spawn_app_with(AppOptions { vars: vec![("CAMUNDA_URL".into(), url)], ..Default::default() }).await;
    for id in ["resend-mine", "resend-theirs"] {
        assert_eq!(app.submit(&body(id, "say_hello", json!({"name": "R"}))).await.0, 200);
    }
    let mine = wait_report(&app, "resend-mine", "reported").await;
    assert_eq!(mine["camunda"]["report_attempts"], 2, "{mine}");
    let theirs = wait_report(&app, "resend-theirs", "completed_elsewhere").await;
    assert_eq!(theirs["camunda"]["completed_by"], "someone-else", "{theirs}");
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_pulled_task_that_never_started_hands_it_back_to_camunda_instead_of_an_incident() {
    let engine = Engine::new();
    let topic = topic_name("pullcancel");
    let d = engine.deploy("say_hello", &topic).await;
    let down = downstream_with(vec![200], Duration::from_secs(2), None).await;
    let file = http_topic(&down.url, "source = \"camunda\"\nconcurrency = 1", 1, 100);
    let app = gateway(&engine, &topic, file, true).await;
    let pids = [engine.start(&d.key, json!({})).await, engine.start(&d.key, json!({})).await];
    // Concurrency 1: one task runs, the other waits in the gateway, locked but never started.
    let waiting = app
        .wait_for(
            "a pulled task waiting",
            WAIT,
            |v| v["tasks"].as_array().is_some_and(|t| t.len() == 2 && t.iter().any(|t| t["status"] == "queued")),
            "/tasks",
        )
        .await;
    let queued = waiting["tasks"].as_array().into_iter().flatten().find(|t| t["status"] == "queued");
    let id = queued.and_then(|t| t["task_id"].as_str()).unwrap_or_default().to_owned();
    let r = app.client.delete(app.url(&format!("/tasks/{id}"))).send().await.expect("gateway answers");
    assert_eq!(r.status().as_u16(), 200);

    // Unlocked, Camunda offers it again, and this gateway (still pulling) takes it up anew.
    for pid in &pids {
        engine.wait_instance(pid, "COMPLETED", WAIT).await;
        assert!(engine.incidents(pid).await.is_empty(), "a handed-back task raises no incident");
    }
    assert_eq!(app.status(&id).await.1["status"], "succeeded");
    assert_eq!(down.calls.load(Ordering::SeqCst), 2, "each task ran once");
    app.cleanup().await;
}
