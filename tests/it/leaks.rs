//! Leaks and tricks (issue 13, point 7). Secrets configured in `CAMUNDA_URL` and in an `http`
//! topic's URL (user info and query) appear nowhere a caller or an operator reads: `/topics`,
//! `/health`, a task's stored error, error bodies, the real binary's log. Then, in submodules:
//! redirects and answer bounds of the `http` handler (`downstream`), and ids in Camunda paths
//! and answer bounds of the Camunda client (`camunda_calls`).

mod camunda_calls;
mod downstream;

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Json, Router,
    extract::{Request, State},
    http::{Method, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

use crate::{
    binary::RealGateway,
    helpers::{body, delete_topology, env, http_topic, key_file, unique},
};

const WAIT: Duration = Duration::from_secs(30);

/// One request as a stand-in received it: the raw request target (path and query, undecoded).
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    pub target: String,
    pub authorization: Option<String>,
}

/// How a stand-in answers a request (method, path).
pub type Answer = fn(&Method, &str) -> Response;

/// A stand-in for Camunda's REST API on a local port, recording every request.
pub struct StandIn {
    /// `http://127.0.0.1:port`
    pub origin: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl StandIn {
    pub async fn start(answer: Answer) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new()
            .fallback(|State((seen, answer)): State<(Arc<Mutex<Vec<Seen>>>, Answer)>, request: Request| async move {
                let target = request.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
                let authorization =
                    request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
                let method = request.method().clone();
                seen.lock().expect("no panic while held").push(Seen { method: method.clone(), target, authorization });
                answer(&method, request.uri().path())
            })
            .with_state((seen.clone(), answer));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the stand-in");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { origin: format!("http://127.0.0.1:{port}"), seen }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("no panic while held").clone()
    }
}

/// An engine that is up and accepts every report: `/engine` lists one engine, a POST gets 204,
/// any other GET 404 in Camunda's error shape.
pub fn accepting_engine(method: &Method, path: &str) -> Response {
    if path.ends_with("/engine") {
        Json(json!([{"name": "default"}])).into_response()
    } else if method == Method::POST {
        StatusCode::NO_CONTENT.into_response()
    } else {
        (StatusCode::NOT_FOUND, Json(json!({"type": "RestException", "message": "not found"}))).into_response()
    }
}

const SECRETS: [&str; 5] = ["CamPass-9f2e", "CamTok-4b7d", "TopicPass-1c3a", "TopicKey-8d5e", "TopicTok-2a6f"];

fn assert_no_secret(place: &str, text: &str) {
    for secret in SECRETS {
        assert!(!text.contains(secret), "{secret} leaked in {place}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_in_configured_urls_never_reach_an_answer_or_a_log_line() {
    // Arrange: Camunda's URL and a topic's URL both carry a password and a query secret; the
    // topic's downstream refuses connections, so its task fails with a stored error.
    let engine = StandIn::start(accepting_engine).await;
    let camunda_url =
        format!("{}/engine-rest?token=CamTok-4b7d", engine.origin.replace("http://", "http://camuser:CamPass-9f2e@"));
    let refused = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let dead_port = refused.local_addr().expect("addr").port();
    drop(refused);
    let topic_url =
        format!("http://svc:TopicPass-1c3a@127.0.0.1:{dead_port}/hook?api_key=TopicKey-8d5e&token=TopicTok-2a6f");
    let (database, exchange) = (unique("it"), unique("it"));
    let topics = std::env::temp_dir().join(unique("topics"));
    std::fs::create_dir_all(&topics).expect("temp dir is writable");
    std::fs::write(topics.join("leaky.toml"), http_topic(&topic_url, 1, 5)).expect("write topic");
    let keys: PathBuf = key_file("");
    let mut gateway = RealGateway::launch()
        .within(WAIT)
        .services(&database, &exchange, &topics)
        .env("API_KEYS_FILE", &keys)
        .env("CAMUNDA_URL", &camunda_url)
        // Everything any crate logs, reqwest's and hyper's connection logs included.
        .env("LOG_LEVEL", "debug")
        .start()
        .await;
    let client = crate::helpers::keyed_client();
    let url = |path: &str| gateway.url(path);
    let get = |path: &'static str| {
        let (client, url) = (client.clone(), url(path));
        async move {
            let r = client.get(url).send().await.expect("the gateway answers");
            (r.status().as_u16(), r.text().await.unwrap_or_default())
        }
    };

    // Act: the task fails against its downstream and is reported to the stand-in; then every
    // place that shows configuration or errors is read.
    let submitted = client.post(url("/tasks/submit")).json(&body("leaky-1", "leaky", json!({}))).send().await;
    assert_eq!(submitted.expect("answers").status().as_u16(), 200);
    let deadline = tokio::time::Instant::now() + WAIT;
    let status = loop {
        let (_, text) = get("/tasks/leaky-1/status").await;
        let v: Value = serde_json::from_str(&text).unwrap_or_default();
        if v["status"] == "failed" && v["camunda"]["report_state"] == "reported" {
            break text;
        }
        assert!(tokio::time::Instant::now() < deadline, "the task never failed and got reported: {text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (topics_code, topics_body) = get("/topics").await;
    let (health_code, health_body) = get("/health").await;
    let (_, list_body) = get("/tasks?topic=leaky").await;
    let (missing_code, missing_body) = get("/tasks/nope/status").await;
    let anonymous = reqwest::Client::new().get(url("/topics")).send().await.expect("answers");
    let (anonymous_code, anonymous_body) = (anonymous.status().as_u16(), anonymous.text().await.unwrap_or_default());
    let exit = gateway.stop().await;
    let (log, stderr) = (gateway.lines(), gateway.stderr().to_owned());

    // Assert: the places were read for real (the topic and the error are there, the calls
    // reached the engine with its credentials and token), and no secret is in any of them.
    assert_eq!((topics_code, health_code, missing_code, anonymous_code), (200, 200, 404, 401));
    let error = serde_json::from_str::<Value>(&status).unwrap_or_default()["error_message"].clone();
    assert!(error.as_str().is_some_and(|e| e.contains("downstream unreachable")), "{status}");
    assert!(topics_body.contains("api_key=***") && topics_body.contains("svc:***@"), "{topics_body}");
    assert!(health_body.contains("\"camunda\":\"healthy\""), "{health_body}");
    for (place, text) in [
        ("GET /topics", &topics_body),
        ("GET /health", &health_body),
        ("the task's status", &status),
        ("the task list", &list_body),
        ("a 404 body", &missing_body),
        ("a 401 body", &anonymous_body),
        ("stderr", &stderr),
    ] {
        assert_no_secret(place, text);
    }
    let report_mode = log.iter().find(|l| l.contains("report mode")).expect("report mode is logged");
    assert!(report_mode.contains("camuser:***@") && report_mode.contains("token=***"), "{report_mode}");
    assert!(log.len() > 20, "the debug log was read: {log:#?}");
    for line in &log {
        assert_no_secret("the log", line);
    }
    let seen = engine.seen();
    let failure = seen.iter().find(|s| s.target.contains("/external-task/leaky-1/failure"));
    let failure = failure.unwrap_or_else(|| panic!("the failure was reported: {seen:#?}"));
    assert_eq!(
        (&failure.method, failure.target.as_str()),
        (&Method::POST, "/engine-rest/external-task/leaky-1/failure?token=CamTok-4b7d")
    );
    let basic = base64_of("camuser:CamPass-9f2e");
    assert_eq!(failure.authorization.as_deref(), Some(format!("Basic {basic}").as_str()));
    assert!(exit.success(), "exit status {exit}; stderr: {stderr}");

    delete_topology(&exchange, &["leaky".to_owned()]).await;
    if let Ok(client) = mongodb::Client::with_uri_str(env("MONGODB_URI")).await {
        let _ = client.database(&database).drop().await;
    }
    let _ = std::fs::remove_dir_all(&topics);
    let _ = std::fs::remove_file(&keys);
}

fn base64_of(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}
