//! The seed's workers at the edges, in report mode: an invalid publication reaches the process's
//! boundary event when it has one and becomes an incident when it has none; a cancelled task
//! becomes one incident the worker leaves alone; and with a lock far shorter than the report
//! takes, the worker (fetching the task again and again) completes nothing itself.

use std::time::Duration;

use serde_json::{Value, json};

use super::{
    LONG_LOCK_MS, WAIT,
    harness::{Completes, deploy, external_task_id, gateway, one_at_a_time, publicacao, task_log, variable_instance},
    wait_report,
    worker::{Kind, SeedWorker, Submit},
};
use crate::{
    engine::Engine,
    helpers::{AppOptions, downstream_with},
};

/// Valid but for its date and source: the gateway's handler refuses it (kind `validation`).
fn invalid_publicacao() -> Value {
    let mut p = publicacao("0003333-33.2024.8.13.0024");
    p["data_publicacao"] = json!("31/02/2024");
    p["fonte"] = json!("jornal");
    p
}

/// `say_hello` served by an `http` handler at `url` instead of the native one.
fn say_hello_over_http(url: &str, backoff_ms: u64) -> AppOptions {
    let file = format!(
        "handler = \"http\"\nurl = \"{url}\"\ntimeout_seconds = 30\n[retry]\nmax_attempts = 3\n\
         initial_backoff_ms = {backoff_ms}\nmax_backoff_ms = {backoff_ms}\n"
    );
    AppOptions { topics: vec![("say_hello".to_owned(), file)], ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_mode_an_invalid_publication_reaches_the_seeds_validation_boundary_event() {
    let engine = Engine::new();
    let _serial = one_at_a_time(&engine).await;
    let app = gateway(&engine, Completes::Gateway, AppOptions::default()).await;
    let d = deploy(&engine, Kind::Publicacao.fixture()).await;
    let worker = SeedWorker::start(Kind::Publicacao, &app, Submit::Http, LONG_LOCK_MS).await;

    let pid = engine.start(&d.key, invalid_publicacao()).await;
    let task_id = external_task_id(&engine, &pid).await;
    engine.wait_instance(&pid, "COMPLETED", WAIT).await;

    assert!(engine.activity_reached(&pid, "validation_error_end").await, "the seed's boundary event caught it");
    assert!(!engine.activity_reached(&pid, "done_end").await && !engine.activity_reached(&pid, "no_result_end").await);
    let message = variable_instance(&engine, &pid, "errorMessage").await;
    assert!(message["value"].as_str().unwrap_or_default().contains("data_publicacao"), "{message}");
    let status = wait_report(&app, &task_id, "reported").await;
    assert_eq!(status["camunda"]["reported_as"], "bpmn_error ERRO_VALIDACAO_NOVA_PUBLICACAO", "{status}");
    worker.stop().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_mode_an_invalid_publication_no_boundary_event_catches_becomes_an_incident() {
    let engine = Engine::new();
    let _serial = one_at_a_time(&engine).await;
    let app = gateway(&engine, Completes::Gateway, AppOptions::default()).await;
    let d = deploy(&engine, "seed_nova_publicacao_uncaught").await;
    let worker = SeedWorker::start(Kind::Publicacao, &app, Submit::Http, LONG_LOCK_MS).await;

    let pid = engine.start(&d.key, invalid_publicacao()).await;
    let task_id = external_task_id(&engine, &pid).await;
    let status = wait_report(&app, &task_id, "reported").await;
    assert_eq!(status["camunda"]["reported_as"], "incident", "{status}");

    let incidents = engine.incidents(&pid).await;
    assert_eq!(incidents.len(), 1, "{incidents:?}");
    let message = incidents[0]["incidentMessage"].as_str().unwrap_or_default();
    assert!(message.starts_with("ERRO_VALIDACAO_NOVA_PUBLICACAO: "), "{message}");
    assert_eq!(engine.instance_state(&pid).await, "ACTIVE", "not completed as if it had succeeded");
    assert!(!engine.activity_reached(&pid, "review_task").await, "the next activity was never reached");
    worker.stop().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_mode_a_cancelled_task_becomes_one_incident_the_worker_leaves_alone() {
    let engine = Engine::new();
    let _serial = one_at_a_time(&engine).await;
    // Every attempt fails and the next one is a minute away: the task waits, retrying.
    let down = downstream_with(vec![503], Duration::ZERO, None).await;
    let app = gateway(&engine, Completes::Gateway, say_hello_over_http(&down.url, 60_000)).await;
    let d = deploy(&engine, Kind::Hello.fixture()).await;
    let worker = SeedWorker::start(Kind::Hello, &app, Submit::Http, LONG_LOCK_MS).await;

    let pid = engine.start(&d.key, json!({"name": "Davi"})).await;
    let task_id = external_task_id(&engine, &pid).await;
    let path = format!("/tasks/{task_id}/status");
    app.wait_for("a failed first attempt", WAIT, |v| v["attempts"] == 1 && v["status"] == "aguardando", &path).await;
    let r = app.client.delete(app.url(&format!("/tasks/{task_id}"))).send().await.expect("gateway answers");
    assert_eq!(r.status().as_u16(), 200);

    let status = wait_report(&app, &task_id, "reported").await;
    assert_eq!(status["camunda"]["reported_as"], "incident", "{status}");
    let incidents = engine.incidents(&pid).await;
    assert_eq!(incidents.len(), 1, "{incidents:?}");
    assert_eq!(incidents[0]["incidentMessage"], "cancelled via the gateway");
    let (_, at_camunda) = engine.get(&format!("/external-task/{task_id}")).await;
    assert_eq!(at_camunda["retries"], 0, "no one reset the retries: {at_camunda}");
    assert!(!worker.output().contains(&format!("Failing task {task_id}")), "the worker failed it too");
    worker.stop().await;
    app.cleanup().await;
}

/// A stand-in in front of the real engine that forwards every call but holds each `complete`
/// for `delay` first: a report slower than the worker's lock, which a real engine does not
/// produce on demand. Answers with the engine's own status and body.
async fn slow_completes(engine: &Engine, delay: Duration) -> String {
    use axum::{body::Bytes, extract::State, http::Method, http::Uri, response::IntoResponse};
    let target = engine.base.trim_end_matches("/engine-rest").to_owned();
    let forward = move |State(client): State<reqwest::Client>, method: Method, uri: Uri, body: Bytes| {
        let url = format!("{target}{uri}");
        async move {
            if uri.path().ends_with("/complete") {
                tokio::time::sleep(delay).await;
            }
            let request = client.request(method, url).header("content-type", "application/json").body(body);
            match request.send().await {
                Ok(r) => {
                    let status = axum::http::StatusCode::from_u16(r.status().as_u16()).unwrap_or_default();
                    (status, r.bytes().await.unwrap_or_default()).into_response()
                }
                Err(_) => axum::http::StatusCode::BAD_GATEWAY.into_response(),
            }
        }
    };
    let app = axum::Router::new().fallback(forward).with_state(reqwest::Client::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://127.0.0.1:{port}/engine-rest")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_mode_with_a_lock_far_shorter_than_the_report_the_worker_completes_nothing_itself() {
    let engine = Engine::new();
    let _serial = one_at_a_time(&engine).await;
    // The handler is done at once, but each report takes 6 s to reach Camunda; the worker's lock
    // lasts 1 s, so it fetches the task again and again, and reads the status each time.
    let camunda = slow_completes(&engine, Duration::from_secs(6)).await;
    let reply = json!({"greeting": "from the gateway", "details": {"steps": 2}});
    let down = downstream_with(vec![200], Duration::ZERO, Some(reply)).await;
    let mut options = say_hello_over_http(&down.url, 1_000);
    options.vars.push(("CAMUNDA_URL".to_owned(), camunda));
    // Report mode through the stand-in (`Completes::Gateway` would point it at the engine).
    let app = gateway(&engine, Completes::Worker, options).await;
    let d = deploy(&engine, Kind::Hello.fixture()).await;
    let worker = SeedWorker::start(Kind::Hello, &app, Submit::Http, 1_000).await;

    let pid = engine.start(&d.key, json!({"name": "Eva"})).await;
    let task_id = external_task_id(&engine, &pid).await;
    let path = format!("/tasks/{task_id}/status");
    let done = app.wait_for("the handler's result", WAIT, |v| v["result"]["greeting"].is_string(), &path).await;
    assert_eq!(done["status"], "em_andamento", "not yet reported, so not yet final for the worker: {done}");
    engine.wait_instance(&pid, "COMPLETED", WAIT).await;
    let status = wait_report(&app, &task_id, "reported").await;
    assert_eq!(status["camunda"]["reported_as"], "complete", "{status}");
    let ends: Vec<Value> = task_log(&engine, &task_id).await.into_iter().filter(|l| l["successLog"] == true).collect();
    assert_eq!(ends.len(), 1, "one completion: {ends:?}");
    assert_eq!(ends[0]["workerId"], Kind::Hello.worker_id(), "reported in the locking worker's name");
    let output = worker.output();
    assert!(!output.contains(&format!("Completing task {task_id}")), "the worker completed it itself:\n{output}");
    let fetched = output.matches(&format!("[TASK_ID:{task_id}] Executing external task")).count();
    assert!(fetched >= 2, "the worker fetched the task {fetched} time(s); the test proves nothing:\n{output}");
    // The gateway's variables, all in process scope.
    for (name, kind) in [("greeting", "String"), ("details", "Object")] {
        let var = variable_instance(&engine, &pid, name).await;
        assert_eq!(
            (var["type"].as_str(), var["activityInstanceId"].as_str()),
            (Some(kind), Some(pid.as_str())),
            "{var}"
        );
    }
    assert!(engine.activity_reached(&pid, "greeted_end").await);
    worker.stop().await;
    app.cleanup().await;
}
