//! The seed gateway's real Python workers (hello-world, publicacao), run unmodified against a test
//! gateway and the real Camunda 7.24 engine: seed style (the worker completes the task itself),
//! report mode (the gateway completes it) and direct AMQP submission. [`worker`] runs a worker
//! process, [`harness`] holds the rest; these tests run one at a time (the workers' topics are
//! fixed) and each looks only at its own process instances.

mod edges;
mod harness;
mod worker;

use std::time::Duration;

use serde_json::json;

use crate::{
    engine::Engine,
    helpers::{AppOptions, TestApp},
};
use harness::{Completes, deploy, external_task_id, gateway, one_at_a_time, publicacao, task_log, variable_instance};
use worker::{Kind, SeedWorker, Submit};

const WAIT: Duration = Duration::from_secs(30);
/// Seed style: the worker completes a task only when it fetches it again, after its lock ran out.
const SHORT_LOCK_MS: u64 = 2_000;
/// Report mode: longer than any test waits, so only the gateway can have ended the task.
const LONG_LOCK_MS: u64 = 120_000;

async fn wait_report(app: &TestApp, task_id: &str, state: &str) -> serde_json::Value {
    let path = format!("/tasks/{task_id}/status");
    app.wait_for(&format!("report {state}"), WAIT, |v| v["camunda"]["report_state"] == state, &path).await
}

/// Whether a historic variable was set in `activity`'s own execution, not in the process scope.
fn in_task_scope(variable: &serde_json::Value, activity: &str) -> bool {
    variable["activityInstanceId"].as_str().is_some_and(|a| a.starts_with(&format!("{activity}:")))
}

/// The worker that completed (or failed) the external task, from Camunda's history.
async fn ended_by(engine: &Engine, task_id: &str) -> Option<String> {
    let logs = task_log(engine, task_id).await;
    let ended = logs.iter().find(|l| l["successLog"] == true || l["failureLog"] == true)?;
    ended["workerId"].as_str().map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_style_the_hello_world_worker_completes_say_hello_itself_once_its_lock_runs_out() {
    let engine = Engine::new();
    let _serial = one_at_a_time(&engine).await;
    let app = gateway(&engine, Completes::Worker, AppOptions::default()).await;
    let d = deploy(&engine, Kind::Hello.fixture()).await;
    let worker = SeedWorker::start(Kind::Hello, &app, Submit::Http, SHORT_LOCK_MS).await;

    let pid = engine.start(&d.key, json!({"name": "Ana"})).await;
    let task_id = external_task_id(&engine, &pid).await;
    engine.wait_instance(&pid, "COMPLETED", WAIT).await;

    let (_, status) = app.status(&task_id).await;
    assert_eq!(status["status"], "sucesso", "{status}");
    assert_eq!(status["worker_id"], Kind::Hello.worker_id(), "{status}");
    assert_eq!(status["camunda"]["report_state"], "not_applicable", "{status}");
    assert_eq!(ended_by(&engine, &task_id).await.as_deref(), Some(Kind::Hello.worker_id()));
    // The worker completes with `localVariables`: they stay in the external task's own
    // execution, so the rest of the process never sees them (as in the seed's own hello-world
    // process, which has the same shape).
    let greeting = variable_instance(&engine, &pid, "greeting").await;
    assert_eq!((&greeting["type"], &greeting["value"]), (&json!("String"), &json!("Hello, Ana!")), "{greeting}");
    assert!(in_task_scope(&greeting, "say_hello_task"), "{greeting}");
    assert!(engine.activity_reached(&pid, "no_greeting_end").await, "the process could not read `greeting`");
    worker.stop().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_style_the_publicacao_worker_completes_a_valid_publication_itself() {
    let engine = Engine::new();
    let _serial = one_at_a_time(&engine).await;
    let app = gateway(&engine, Completes::Worker, AppOptions::default()).await;
    let d = deploy(&engine, Kind::Publicacao.fixture()).await;
    let worker = SeedWorker::start(Kind::Publicacao, &app, Submit::Http, SHORT_LOCK_MS).await;

    let pid = engine.start(&d.key, publicacao("0001234-56.2024.8.13.0024")).await;
    let task_id = external_task_id(&engine, &pid).await;
    engine.wait_instance(&pid, "COMPLETED", WAIT).await;

    let (_, status) = app.status(&task_id).await;
    assert_eq!(status["status"], "sucesso", "{status}");
    assert_eq!(status["result"]["step_1_status"], "completed", "{status}");
    assert_eq!(ended_by(&engine, &task_id).await.as_deref(), Some(Kind::Publicacao.worker_id()));
    // The worker's local variables end with the task: the process never sees the result.
    let step = variable_instance(&engine, &pid, "step_1_status").await;
    assert_eq!(step["value"], "completed", "{step}");
    assert!(in_task_scope(&step, "nova_publicacao_task"), "{step}");
    assert!(engine.activity_reached(&pid, "no_result_end").await, "the process could not read the result");
    worker.stop().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_mode_the_gateway_completes_the_hello_world_workers_task_with_process_variables() {
    let engine = Engine::new();
    let _serial = one_at_a_time(&engine).await;
    let app = gateway(&engine, Completes::Gateway, AppOptions::default()).await;
    let d = deploy(&engine, Kind::Hello.fixture()).await;
    let worker = SeedWorker::start(Kind::Hello, &app, Submit::Http, LONG_LOCK_MS).await;

    let pid = engine.start(&d.key, json!({"name": "Bia"})).await;
    let task_id = external_task_id(&engine, &pid).await;
    engine.wait_instance(&pid, "COMPLETED", WAIT).await;

    // Camunda answers the report before the gateway writes it down: wait for that too.
    let status = wait_report(&app, &task_id, "reported").await;
    assert_eq!(status["status"], "em_andamento", "what a worker fetching it again would see: {status}");
    // Reported in the locking worker's name, long before that worker's lock ran out.
    assert_eq!(ended_by(&engine, &task_id).await.as_deref(), Some(Kind::Hello.worker_id()));
    let greeting = variable_instance(&engine, &pid, "greeting").await;
    assert_eq!(greeting["value"], "Hello, Bia!", "{greeting}");
    assert_eq!(greeting["activityInstanceId"], pid.as_str(), "a process variable: {greeting}");
    assert!(engine.activity_reached(&pid, "greeted_end").await);
    worker.stop().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_mode_the_gateway_completes_the_publicacao_workers_task_with_process_variables() {
    let engine = Engine::new();
    let _serial = one_at_a_time(&engine).await;
    let app = gateway(&engine, Completes::Gateway, AppOptions::default()).await;
    let d = deploy(&engine, Kind::Publicacao.fixture()).await;
    let worker = SeedWorker::start(Kind::Publicacao, &app, Submit::Http, LONG_LOCK_MS).await;

    let pid = engine.start(&d.key, publicacao("0007654-32.2024.8.13.0024")).await;
    let task_id = external_task_id(&engine, &pid).await;
    engine.wait_instance(&pid, "COMPLETED", WAIT).await;

    // Camunda answers the report before the gateway writes it down: wait for that too.
    let status = wait_report(&app, &task_id, "reported").await;
    assert_eq!(status["status"], "em_andamento", "what a worker fetching it again would see: {status}");
    assert_eq!(ended_by(&engine, &task_id).await.as_deref(), Some(Kind::Publicacao.worker_id()));
    // Process variables: the next activity sees the result.
    let step = variable_instance(&engine, &pid, "step_1_status").await;
    assert_eq!(step["value"], "completed", "{step}");
    assert_eq!(step["activityInstanceId"], pid.as_str(), "a process variable: {step}");
    assert!(engine.activity_reached(&pid, "done_end").await, "the process read the result");
    let movimentacao = variable_instance(&engine, &pid, "movimentacao").await;
    assert_eq!(movimentacao["valueInfo"]["serializationDataFormat"], "application/json", "{movimentacao}");
    worker.stop().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_world_worker_submitting_over_amqp_gets_its_task_completed_in_report_mode() {
    let engine = Engine::new();
    let _serial = one_at_a_time(&engine).await;
    let app = gateway(&engine, Completes::Gateway, AppOptions::default()).await;
    let d = deploy(&engine, Kind::Hello.fixture()).await;
    let worker = SeedWorker::start(Kind::Hello, &app, Submit::Rabbitmq, LONG_LOCK_MS).await;

    let pid = engine.start(&d.key, json!({"name": "Caio"})).await;
    let task_id = external_task_id(&engine, &pid).await;
    engine.wait_instance(&pid, "COMPLETED", WAIT).await;

    // Camunda answers the report before the gateway writes it down: wait for that too.
    let status = wait_report(&app, &task_id, "reported").await;
    assert_eq!(status["status"], "em_andamento", "what a worker fetching it again would see: {status}");
    assert_eq!(status["worker_id"], Kind::Hello.worker_id(), "{status}");
    assert!(worker.output().contains(&format!("Successfully submitted task {task_id} via RabbitMQ")));
    assert_eq!(variable_instance(&engine, &pid, "greeting").await["value"], "Hello, Caio!");
    worker.stop().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publicacao_worker_submitting_over_amqp_gets_its_task_completed_in_report_mode() {
    let engine = Engine::new();
    let _serial = one_at_a_time(&engine).await;
    let app = gateway(&engine, Completes::Gateway, AppOptions::default()).await;
    let d = deploy(&engine, Kind::Publicacao.fixture()).await;
    let worker = SeedWorker::start(Kind::Publicacao, &app, Submit::Rabbitmq, LONG_LOCK_MS).await;

    let pid = engine.start(&d.key, publicacao("0005555-55.2024.8.13.0024")).await;
    let task_id = external_task_id(&engine, &pid).await;
    engine.wait_instance(&pid, "COMPLETED", WAIT).await;

    let status = wait_report(&app, &task_id, "reported").await;
    assert_eq!(status["worker_id"], Kind::Publicacao.worker_id(), "{status}");
    assert!(worker.output().contains(&format!("Successfully submitted task {task_id} via RabbitMQ")));
    let step = variable_instance(&engine, &pid, "step_1_status").await;
    assert_eq!(
        (&step["value"], step["activityInstanceId"].as_str()),
        (&json!("completed"), Some(pid.as_str())),
        "{step}"
    );
    let hash = variable_instance(&engine, &pid, "hash_unica").await;
    assert_eq!(hash["value"].as_str().map(str::len), Some(64), "{hash}");
    assert!(engine.activity_reached(&pid, "done_end").await);
    worker.stop().await;
    app.cleanup().await;
}
