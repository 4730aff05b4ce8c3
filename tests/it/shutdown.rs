//! The real binary, stopped the way an operator stops it (SIGTERM): a clean shutdown exits 0
//! and logs no error, its own or a library's (lapin's channel and connection teardown).

use std::{path::PathBuf, process::Stdio, time::Duration};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};

use crate::helpers::{body, delete_topology, env, unique};

const WAIT: Duration = Duration::from_secs(30);

/// Reads JSON log lines into `seen` until one has the message `message`; returns that line.
async fn until_logged<R: tokio::io::AsyncBufRead + Unpin>(
    lines: &mut Lines<R>,
    seen: &mut Vec<Value>,
    message: &str,
) -> Value {
    let read = async {
        while let Ok(Some(line)) = lines.next_line().await {
            let event: Value = serde_json::from_str(&line).unwrap_or_else(|_| json!({"raw": line}));
            seen.push(event.clone());
            if event["fields"]["message"] == message {
                return Some(event);
            }
        }
        None
    };
    let found = tokio::time::timeout(WAIT, read).await.ok().flatten();
    found.unwrap_or_else(|| panic!("the gateway never logged {message:?}; it logged: {seen:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_stopped_by_sigterm_after_work_exits_cleanly_without_an_error_line() {
    let (database, exchange) = (unique("it"), unique("it"));
    let topics = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("topics");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_worker-api-gateway"))
        .env("PORT", "0")
        .env("HOST", "127.0.0.1")
        .env("MONGODB_URI", env("MONGODB_URI"))
        .env("MONGODB_DATABASE", &database)
        .env("RABBITMQ_URL", env("RABBITMQ_URL"))
        .env("RABBITMQ_EXCHANGE", &exchange)
        .env("TOPICS_DIR", &topics)
        .env("ANONYMOUS_SCOPES", "submit,read")
        .env("LOG_FORMAT", "json")
        .env("LOG_LEVEL", "info")
        .env_remove("CAMUNDA_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the gateway binary starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
    let mut seen = Vec::new();

    // Arrange: the gateway has published, consumed and acked a task, so every channel was used.
    let listening = until_logged(&mut lines, &mut seen, "listening").await;
    let port = listening["fields"]["port"].as_u64().expect("the port is logged");
    until_logged(&mut lines, &mut seen, "rabbitmq publisher connected, topology declared").await;
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}");
    let submitted = client
        .post(format!("{url}/tasks/submit"))
        .json(&body("sigterm-1", "say_hello", json!({"name": "Ana"})))
        .send()
        .await
        .expect("the gateway answers");
    assert_eq!(submitted.status().as_u16(), 200);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let status: Value = client
            .get(format!("{url}/tasks/sigterm-1/status"))
            .send()
            .await
            .expect("answers")
            .json()
            .await
            .unwrap_or_default();
        if status["status"] == "succeeded" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the task never succeeded: {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Act: SIGTERM, as `docker stop` or systemd sends it.
    let pid = child.id().expect("the gateway is running").to_string();
    let signalled = std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill runs");
    assert!(signalled.success());
    until_logged(&mut lines, &mut seen, "stopped").await;
    while let Ok(Ok(Some(line))) = tokio::time::timeout(WAIT, lines.next_line()).await {
        seen.push(serde_json::from_str(&line).unwrap_or_else(|_| json!({"raw": line})));
    }
    let status = tokio::time::timeout(WAIT, child.wait()).await.expect("the gateway exits").expect("wait works");
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = tokio::io::AsyncReadExt::read_to_string(&mut pipe, &mut stderr).await;
    }

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
