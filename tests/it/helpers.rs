//! `spawn_app()`: a gateway on port 0 with its own MongoDB database and its own exchange (so
//! tests run in parallel against one RabbitMQ and one MongoDB-wire server), plus typed request
//! helpers and bounded polling. The services must be up (`scripts/services.sh up`): a missing
//! service fails the test, it never skips it.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use worker_api_gateway::{config::Settings, startup::Application};

pub use crate::common::{delete_topology, env, unique};

/// The repository's own topic files, which every test app loads.
fn repo_topics() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("topics")
}

/// Options for [`spawn_app_with`].
#[derive(Default, Clone)]
pub struct AppOptions {
    /// Extra topic files: (file stem, TOML text), added to the repository's topics.
    pub topics: Vec<(String, String)>,
    /// Extra environment-style settings (e.g. `GATEWAY_MODE=api`).
    pub vars: Vec<(String, String)>,
    /// Reuse this database and exchange (to restart "the same" gateway).
    pub reuse: Option<(String, String)>,
    /// Point the gateway at a port where no broker listens (RabbitMQ "down").
    pub no_broker: bool,
}

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub database: String,
    pub exchange: String,
    pub mongo: mongodb::Database,
    pub topics_dir: PathBuf,
    pub stop: CancellationToken,
    pub task: Option<JoinHandle<anyhow::Result<()>>>,
}

/// The test key: every scope. [`TestApp::client`] presents it on every request; a test about
/// access makes its own client.
pub const TEST_KEY: &str = "it-key-7f3a9c0e5b2d4e6f8a1b3c5d7e9f0a2b";

/// A key file holding [`TEST_KEY`] (id `it-admin`, every scope) and `extra` keys, in a file of
/// its own.
pub fn key_file(extra: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("{}.toml", unique("keys")));
    let admin = format!(
        "[[keys]]\nid = \"it-admin\"\nhash = \"sha256:{}\"\nscopes = [\"submit\", \"read\", \"operate\", \"admin\"]\n",
        worker_api_gateway::auth::hash_secret(TEST_KEY)
    );
    std::fs::write(&path, format!("{admin}{extra}")).expect("temp dir is writable");
    path
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(AppOptions::default()).await
}

pub async fn spawn_app_with(options: AppOptions) -> TestApp {
    let (database, exchange) = options.reuse.clone().unwrap_or_else(|| (unique("it"), unique("it")));
    let topics_dir = std::env::temp_dir().join(unique("topics"));
    std::fs::create_dir_all(&topics_dir).expect("temp dir is writable");
    for entry in std::fs::read_dir(repo_topics()).expect("repo has topics/") {
        let path = entry.expect("readable topics/").path();
        if path.extension().is_some_and(|x| x == "toml") {
            std::fs::copy(&path, topics_dir.join(path.file_name().expect("file"))).expect("copy topic");
        }
    }
    for (stem, text) in &options.topics {
        std::fs::write(topics_dir.join(format!("{stem}.toml")), text).expect("write topic");
    }
    let mut vars: HashMap<String, String> = HashMap::from([
        ("PORT".into(), "0".into()),
        ("HOST".into(), "127.0.0.1".into()),
        ("MONGODB_URI".into(), env("MONGODB_URI")),
        ("MONGODB_DATABASE".into(), database.clone()),
        ("MONGODB_MAX_POOL_SIZE".into(), "4".into()),
        ("RABBITMQ_URL".into(), env("RABBITMQ_URL")),
        ("RABBITMQ_EXCHANGE".into(), exchange.clone()),
        ("TOPICS_DIR".into(), topics_dir.display().to_string()),
        ("RELAY_INTERVAL_MS".into(), "200".into()),
        ("SHUTDOWN_GRACE_SECONDS".into(), "5".into()),
        ("API_KEYS_FILE".into(), key_file("").display().to_string()),
        // Statistics counted for every request, so a test reads what it just did (see retention.rs).
        ("STATISTICS_MAX_AGE_SECONDS".into(), "0".into()),
    ]);
    if options.no_broker {
        vars.insert("RABBITMQ_URL".into(), "amqp://guest:guest@127.0.0.1:1/%2f".into());
    }
    vars.extend(options.vars.iter().cloned());
    let settings = Settings::from_vars(&vars).expect("test settings are valid");
    let app = Application::build(settings).await.expect("the gateway builds against the test services");
    let port = app.port();
    let stop = app.stop_token();
    let task = tokio::spawn(app.run_until_stopped());
    let mongo = mongodb::Client::with_uri_str(env("MONGODB_URI")).await.expect("mongo client").database(&database);
    let test_app = TestApp {
        address: format!("http://127.0.0.1:{port}"),
        client: keyed_client(),
        database,
        exchange,
        mongo,
        topics_dir,
        stop,
        task: Some(task),
    };
    // Ready means the broker is connected, the topology declared and every topic consumed.
    if options.no_broker {
        return test_app;
    }
    let ready = |h: Value| {
        let consuming = h["topics"].as_object().is_none_or(|t| t.values().all(|s| s["consuming"] == true));
        let dead_letters = h["dead_letters"].is_null() || h["dead_letters"]["consuming"] == true;
        h["rabbitmq"] == "healthy" && consuming && dead_letters
    };
    test_app.wait_for("rabbitmq connected", Duration::from_secs(20), ready, "/health").await;
    test_app
}

/// A client presenting [`TEST_KEY`].
pub fn keyed_client() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let bearer = reqwest::header::HeaderValue::from_str(&format!("Bearer {TEST_KEY}")).expect("a valid header");
    headers.insert(reqwest::header::AUTHORIZATION, bearer);
    reqwest::Client::builder().default_headers(headers).build().expect("a client")
}

/// A submission body for `topic`.
pub fn body(task_id: &str, topic: &str, variables: Value) -> Value {
    json!({"task_id": task_id, "worker_id": "worker-1", "topic": topic, "variables": variables})
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.expect("gateway answers")
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let r = self.get(path).await;
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn submit(&self, body: &Value) -> (u16, Value) {
        let r = self.client.post(self.url("/tasks/submit")).json(body).send().await.expect("gateway answers");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn status(&self, task_id: &str) -> (u16, Value) {
        self.get_json(&format!("/tasks/{task_id}/status")).await
    }

    /// Polls `path` until `done(json)` holds, at most `limit`; panics with the last answer.
    pub async fn wait_for(&self, what: &str, limit: Duration, done: impl Fn(Value) -> bool, path: &str) -> Value {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let (_, v) = self.get_json(path).await;
            if done(v.clone()) {
                return v;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("timed out after {limit:?} waiting for {what}; last answer from {path}: {v}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the task reaches `status` (English label).
    pub async fn wait_status(&self, task_id: &str, status: &str, limit: Duration) -> Value {
        let path = format!("/tasks/{task_id}/status");
        self.wait_for(&format!("task {task_id} to be {status}"), limit, |v| v["status"] == status, &path).await
    }

    /// Reads a task straight from the store (for when no gateway is running).
    pub async fn status_from_store(&self, task_id: &str) -> worker_api_gateway::store::TaskRecord {
        self.mongo
            .collection::<worker_api_gateway::store::TaskRecord>("tasks")
            .find_one(bson::doc! {"_id": task_id})
            .await
            .expect("store answers")
            .expect("task exists")
    }

    /// Stops the gateway gracefully and waits for it.
    pub async fn stop(&mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let result = tokio::time::timeout(Duration::from_secs(30), task).await;
            let result = result.expect("gateway stops within 30 s").expect("gateway task did not panic");
            result.expect("gateway stopped cleanly");
        }
    }

    /// Stops the gateway and removes what it created: queues, exchanges, database.
    pub async fn cleanup(mut self) {
        self.stop().await;
        let names = self.topic_names();
        delete_topology(&self.exchange, &names).await;
        let _ = self.mongo.drop().await;
        let _ = std::fs::remove_dir_all(&self.topics_dir);
    }

    pub fn topic_names(&self) -> Vec<String> {
        std::fs::read_dir(&self.topics_dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter_map(|e| e.path().file_stem().and_then(|s| s.to_str()).map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Whether `queue` holds exactly `n` messages (ready ones).
pub async fn queue_depth_is(queue: &str, n: u32) -> bool {
    let Ok(conn) = lapin::Connection::connect(&env("RABBITMQ_URL"), lapin::ConnectionProperties::default()).await
    else {
        return false;
    };
    let passive = lapin::options::QueueDeclareOptions { passive: true, ..Default::default() };
    let depth = match conn.create_channel().await {
        Ok(ch) => ch.queue_declare(queue.into(), passive, Default::default()).await.map(|q| q.message_count()).ok(),
        Err(_) => None,
    };
    let _ = conn.close(200, "bye".into()).await;
    depth == Some(n)
}

/// Polls an async condition until true or the limit passes.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A stand-in downstream for the `http` handler kind: answers each POST with the next status
/// from `script` (the last one repeats), echoing the variables on 2xx, and counts calls.
pub struct Downstream {
    pub url: String,
    pub calls: std::sync::Arc<AtomicU32>,
    /// Calls that came over HTTP/2.
    pub http2_calls: std::sync::Arc<AtomicU32>,
}

/// A local socket that accepts connections and never answers, and its URL. Drop the listener to
/// make the URL refuse connections instead.
pub async fn silent_downstream() -> (tokio::net::TcpListener, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://127.0.0.1:{}/", listener.local_addr().expect("addr").port());
    (listener, url)
}

pub async fn downstream(script: Vec<u16>) -> Downstream {
    downstream_with(script, Duration::ZERO, None).await
}

/// What a stand-in downstream does: statuses in turn, a delay before each answer, and an
/// optional fixed 2xx body (otherwise it echoes the variables and attempt).
type Plan = (Vec<u16>, Duration, Option<Value>);

/// Like [`downstream`], answering after `delay`, with `reply` as the 2xx body when given.
pub async fn downstream_with(script: Vec<u16>, delay: Duration, reply: Option<Value>) -> Downstream {
    use axum::{Json, Router, extract::State, http::StatusCode, routing::post};
    let calls = std::sync::Arc::new(AtomicU32::new(0));
    let http2_calls = std::sync::Arc::new(AtomicU32::new(0));
    let state = (calls.clone(), http2_calls.clone(), std::sync::Arc::new((script, delay, reply)));
    type Shared = (std::sync::Arc<AtomicU32>, std::sync::Arc<AtomicU32>, std::sync::Arc<Plan>);
    let app = Router::new()
        .route(
            "/",
            post(
                |State((calls, http2_calls, plan)): State<Shared>,
                 version: axum::http::Version,
                 Json(body): Json<Value>| async move {
                    if version == axum::http::Version::HTTP_2 {
                        http2_calls.fetch_add(1, Ordering::SeqCst);
                    }
                    let (script, delay, fixed) = &*plan;
                    tokio::time::sleep(*delay).await;
                    let n = calls.fetch_add(1, Ordering::SeqCst) as usize;
                    let code = script.get(n).or(script.last()).copied().unwrap_or(200);
                    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
                    let reply = match (status.is_success(), fixed) {
                        (true, Some(fixed)) => fixed.clone(),
                        (true, None) => json!({"echo": body["variables"], "attempt": body["attempt"]}),
                        (false, _) => json!({"message": format!("scripted {code}")}),
                    };
                    (status, Json(reply))
                },
            ),
        )
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind downstream");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Downstream { url: format!("http://127.0.0.1:{port}/"), calls, http2_calls }
}

/// A topic file for the `http` handler kind.
pub fn http_topic(url: &str, max_attempts: u32, timeout_seconds: u64) -> String {
    format!(
        "handler = \"http\"\nurl = \"{url}\"\ntimeout_seconds = {timeout_seconds}\nconcurrency = 4\n\n[retry]\nmax_attempts = {max_attempts}\ninitial_backoff_ms = 100\nmax_backoff_ms = 400\n"
    )
}
