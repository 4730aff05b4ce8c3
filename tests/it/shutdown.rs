//! The real binary, stopped the way an operator stops it (SIGTERM): a clean shutdown exits 0
//! and logs no error, its own or a library's (lapin's channel and connection teardown).

use std::{path::PathBuf, time::Duration};

use serde_json::{Value, json};

use crate::{
    binary::RealGateway,
    helpers::{body, delete_topology, env, unique},
};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_stopped_by_sigterm_after_work_exits_cleanly_without_an_error_line() {
    let (database, exchange) = (unique("it"), unique("it"));
    let topics = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("topics");
    let mut gateway = RealGateway::launch()
        .within(WAIT)
        .services(&database, &exchange, &topics)
        .env("ANONYMOUS_SCOPES", "submit,read")
        .env("LOG_LEVEL", "info")
        .env_remove("CAMUNDA_URL")
        .start()
        .await;

    // Arrange: the gateway has published, consumed and acked a task, so every channel was used.
    gateway.logged("rabbitmq publisher connected, topology declared").await;
    let client = reqwest::Client::new();
    let submitted = client
        .post(gateway.url("/tasks/submit"))
        .json(&body("sigterm-1", "say_hello", json!({"name": "Ana"})))
        .send()
        .await
        .expect("the gateway answers");
    assert_eq!(submitted.status().as_u16(), 200);
    gateway.until(&client, "/tasks/sigterm-1/status", |s| s["status"] == "succeeded").await;

    // Act: SIGTERM, as `docker stop` or systemd sends it; the log is read to its end.
    let status = gateway.stop().await;
    gateway.logged("stopped").await;
    let (seen, stderr) = (gateway.events(), gateway.stderr());

    // Assert: exit 0, and not one ERROR event (nor a line that is not a log event).
    assert!(status.success(), "exit status {status}; stderr: {stderr}");
    let errors: Vec<&Value> = seen.iter().filter(|e| e["level"] == "ERROR" || e.get("raw").is_some()).collect();
    assert!(errors.is_empty(), "a clean shutdown logged errors: {errors:#?}");
    assert!(stderr.trim().is_empty(), "stderr: {stderr}");

    let names: Vec<String> = std::fs::read_dir(&topics)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.path().file_stem()?.to_str().map(str::to_owned))
        .collect();
    delete_topology(&exchange, &names).await;
    if let Ok(client) = mongodb::Client::with_uri_str(env("MONGODB_URI")).await {
        let _ = client.database(&database).drop().await;
    }
}
