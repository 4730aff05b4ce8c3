//! One trace per task: a submit's `traceparent` reaches the stored task, the AMQP message's
//! headers, the `http` handler's downstream request, every Camunda call about the task, and every
//! log line of the real binary that names the task.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, extract::State, http::HeaderMap, routing::post};
use futures::StreamExt;
use serde_json::{Value, json};

use crate::{
    binary::RealGateway,
    helpers::{body, delete_topology, env, unique},
};

const WAIT: Duration = Duration::from_secs(60);
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// Calls a stand-in saw: (path, traceparent header).
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

fn record(seen: &Seen, path: String, headers: &HeaderMap) {
    let parent = headers.get("traceparent").and_then(|v| v.to_str().ok()).map(str::to_owned);
    seen.lock().expect("no panics while held").push((path, parent));
}

/// One server standing in for the downstream (`POST /downstream`) and for Camunda (anything
/// under `/engine-rest`, accepted), recording every call's `traceparent`.
async fn stand_in() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let app = Router::new()
        .route(
            "/downstream",
            post(|State(seen): State<Seen>, headers: HeaderMap| async move {
                record(&seen, "/downstream".into(), &headers);
                axum::Json(json!({"handled": true}))
            }),
        )
        .route(
            "/v1/traces",
            post(|body: axum::body::Bytes| async move {
                if let Ok(value) = serde_json::from_slice::<Value>(&body) {
                    EXPORTS.lock().expect("no panics while held").push(value);
                }
                axum::Json(json!({}))
            }),
        )
        .fallback(|State(seen): State<Seen>, uri: axum::http::Uri, headers: HeaderMap| async move {
            record(&seen, uri.path().to_owned(), &headers);
            (axum::http::StatusCode::NO_CONTENT, "")
        })
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://127.0.0.1:{port}"), seen)
}

/// A queue of the test's own, bound to the topic's routing key: a copy of every message.
async fn tap(exchange: &str, topic: &str) -> (lapin::Connection, lapin::Consumer) {
    use lapin::{options::*, types::FieldTable};
    let conn =
        lapin::Connection::connect(&env("RABBITMQ_URL"), lapin::ConnectionProperties::default()).await.expect("amqp");
    let channel = conn.create_channel().await.expect("channel");
    let queue = channel
        .queue_declare("".into(), QueueDeclareOptions { exclusive: true, ..Default::default() }, FieldTable::default())
        .await
        .expect("declare");
    let key = format!("task.submit.{topic}");
    channel
        .queue_bind(
            queue.name().as_str().into(),
            exchange.into(),
            key.as_str().into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
    let consumer = channel
        .basic_consume(
            queue.name().as_str().into(),
            "tap".into(),
            BasicConsumeOptions { no_ack: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .expect("consume");
    (conn, consumer)
}

/// The real binary with a `traced` http topic calling the stand-in, its JSON log kept.
struct Gateway {
    process: RealGateway,
    exchange: String,
    topics: PathBuf,
}

impl Gateway {
    async fn start(base: &str, vars: &[(&str, String)]) -> Self {
        let (database, exchange) = (unique("it"), unique("it"));
        let topics = tempdir();
        let topic = format!("handler = \"http\"\nurl = \"{base}/downstream\"\ntimeout_seconds = 10\n");
        std::fs::write(topics.join("traced.toml"), topic).expect("topic file");
        let mut launch = RealGateway::launch()
            .within(WAIT)
            .services(&database, &exchange, &topics)
            .env("AUTH_MODE", "open")
            .env("LOG_LEVEL", "info,worker_api_gateway=debug")
            .env_remove("CAMUNDA_URL")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
        for (name, value) in vars {
            launch = launch.env(name, value);
        }
        let mut process = launch.start().await;
        // Ready once the publisher has declared the exchange the test's tap binds to.
        process.logged("rabbitmq publisher connected, topology declared").await;
        Self { process, exchange, topics }
    }

    /// SIGTERM, and waits for a clean exit (spans still queued are exported by then); the log.
    async fn stop(mut self) -> Vec<Value> {
        let exited = self.process.stop().await;
        assert!(exited.success(), "{exited:?}");
        delete_topology(&self.exchange, &["traced".to_owned()]).await;
        let _ = std::fs::remove_dir_all(&self.topics);
        self.process.events()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submits_traceparent_follows_the_task_through_every_hop_and_log_line() {
    let (base, seen) = stand_in().await;
    let gateway = Gateway::start(&base, &[("CAMUNDA_URL", format!("{base}/engine-rest"))]).await;
    let (_conn, mut consumer) = tap(&gateway.exchange, "traced").await;

    // Act: one submit with the caller's trace and request id.
    let client = reqwest::Client::new();
    let answer = client
        .post(gateway.process.url("/tasks/submit"))
        .header("traceparent", format!("00-{TRACE_ID}-00f067aa0ba902b7-01"))
        .header("x-request-id", "req-trace-1")
        .json(&body("trace-1", "traced", json!({"n": 1})))
        .send()
        .await
        .expect("answers");
    assert_eq!(answer.status().as_u16(), 200);
    assert_eq!(answer.headers()["x-request-id"], "req-trace-1");
    let echoed = answer.headers()["traceparent"].to_str().expect("ascii");
    assert!(echoed.contains(TRACE_ID), "{echoed}");

    // The task, once reported to Camunda, names its trace.
    let reported = |s: &Value| s["camunda"]["report_state"] == "reported";
    let status = gateway.process.until(&client, "/tasks/trace-1/status", reported).await;
    assert_eq!(status["trace_id"], TRACE_ID, "{status}");

    // The message on the exchange carries it.
    let delivery = tokio::time::timeout(WAIT, consumer.next()).await.expect("a message").expect("stream").expect("ok");
    let headers = delivery.properties.headers().clone().expect("headers");
    let parent = match headers.inner().get("traceparent") {
        Some(lapin::types::AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        other => format!("{other:?}"),
    };
    assert!(parent.contains(TRACE_ID), "AMQP traceparent: {parent}");

    // The downstream call and every Camunda call about the task carry it.
    let calls = seen.lock().expect("held").clone();
    let about_task: Vec<_> =
        calls.iter().filter(|(path, _)| path.contains("trace-1") || path == "/downstream").collect();
    assert!(about_task.iter().any(|(p, _)| p == "/downstream"), "{calls:?}");
    assert!(about_task.iter().any(|(p, _)| p.ends_with("/complete")), "{calls:?}");
    for (path, parent) in &about_task {
        assert!(parent.as_deref().is_some_and(|p| p.contains(TRACE_ID)), "{path} without the trace: {parent:?}");
    }

    // Every log line that names the task names its trace too.
    let log = gateway.stop().await;
    let naming: Vec<&Value> = log.iter().filter(|e| e.to_string().contains("trace-1")).collect();
    assert!(!naming.is_empty(), "no log line names the task");
    for line in naming {
        assert!(line.to_string().contains(TRACE_ID), "a log line about the task without its trace id: {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_otlp_endpoint_the_tasks_spans_are_exported_in_its_trace() {
    let (base, _) = stand_in().await;
    // The same stand-in takes the OTLP/HTTP JSON export at /v1/traces.
    let gateway = Gateway::start(
        &base,
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", base.clone()), ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json".into())],
    )
    .await;
    let client = reqwest::Client::new();
    let answer = client
        .post(gateway.process.url("/tasks/submit"))
        .header("traceparent", format!("00-{TRACE_ID}-00f067aa0ba902b7-01"))
        .json(&body("otlp-1", "traced", json!({})))
        .send()
        .await
        .expect("answers");
    assert_eq!(answer.status().as_u16(), 200);
    gateway.process.until(&client, "/tasks/otlp-1/status", |s| s["status"] == "succeeded").await;
    gateway.stop().await;

    let exported = EXPORTS.lock().expect("held").clone();
    let spans: Vec<&Value> = exported
        .iter()
        .flat_map(|e| e["resourceSpans"].as_array().into_iter().flatten())
        .flat_map(|r| r["scopeSpans"].as_array().into_iter().flatten())
        .flat_map(|s| s["spans"].as_array().into_iter().flatten())
        .collect();
    let in_trace: Vec<&str> =
        spans.iter().filter(|s| s["traceId"].as_str() == Some(TRACE_ID)).filter_map(|s| s["name"].as_str()).collect();
    assert!(in_trace.contains(&"request"), "the submit's span: {in_trace:?} of {}", spans.len());
    assert!(in_trace.contains(&"attempt"), "the handler's run: {in_trace:?}");
}

/// OTLP bodies the stand-in received.
static EXPORTS: Mutex<Vec<Value>> = Mutex::new(Vec::new());

fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(unique("topics"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
