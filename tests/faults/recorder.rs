//! The recording handler: a stand-in downstream for the gateway's `http` handler kind. Every
//! POST `/run/{topic}` is one handler execution; it is recorded as (task id, attempt) the moment
//! it arrives, so an execution counts even if its answer never gets back. Per topic it answers
//! after a delay (optionally a different one for first attempts) with a fixed status, and it
//! tracks how many executions of each topic run at once.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    routing::post,
};
use serde_json::{Value, json};

/// How the handler behaves for one topic.
#[derive(Debug, Clone)]
pub struct Behavior {
    pub delay: Duration,
    /// Overrides `delay` for attempt 1 (e.g. longer than the topic's timeout).
    pub first_attempt_delay: Option<Duration>,
    /// Answer status: 2xx succeeds, 5xx is retryable, 400/404/422 a business error.
    pub status: u16,
}

impl Behavior {
    pub fn ok(delay: Duration) -> Self {
        Self { delay, first_attempt_delay: None, status: 200 }
    }
}

#[derive(Default)]
struct Shared {
    behaviors: Mutex<HashMap<String, Behavior>>,
    /// topic → the status every first attempt gets instead of the behaviour's.
    first_attempt_status: Mutex<HashMap<String, u16>>,
    /// task id → attempts executed, in arrival order.
    runs: Mutex<HashMap<String, Vec<u32>>>,
    /// task id → variables of its first execution.
    variables: Mutex<HashMap<String, Value>>,
    total: AtomicUsize,
    in_flight: Mutex<HashMap<String, (usize, usize)>>,
    /// Executions that did not carry the expected API key.
    bad_auth: AtomicUsize,
    expected_auth: String,
}

pub struct Recorder {
    pub base: String,
    shared: Arc<Shared>,
}

/// `Basic base64(user:password)`, as reqwest sends a URL's user info.
pub fn basic_auth(user: &str, password: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let input = format!("{user}:{password}").into_bytes();
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    format!("Basic {out}")
}

/// Counts one execution as running until dropped, also when the gateway hangs up mid-request
/// (a handler timeout) and the request's future is dropped.
struct Running {
    shared: Arc<Shared>,
    topic: String,
}

impl Running {
    fn enter(shared: Arc<Shared>, topic: String) -> Self {
        if let Ok(mut f) = shared.in_flight.lock() {
            let e = f.entry(topic.clone()).or_default();
            e.0 += 1;
            e.1 = e.1.max(e.0);
        }
        Self { shared, topic }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(mut f) = self.shared.in_flight.lock() {
            f.entry(self.topic.clone()).or_default().0 -= 1;
        }
    }
}

async fn run(
    State(shared): State<Arc<Shared>>,
    Path(topic): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let task_id = body["task_id"].as_str().unwrap_or_default().to_owned();
    let attempt = body["attempt"].as_u64().and_then(|a| u32::try_from(a).ok()).unwrap_or(0);
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(shared.expected_auth.as_str()) {
        shared.bad_auth.fetch_add(1, Ordering::SeqCst);
    }
    shared.total.fetch_add(1, Ordering::SeqCst);
    if let Ok(mut runs) = shared.runs.lock() {
        runs.entry(task_id.clone()).or_default().push(attempt);
    }
    if let Ok(mut vars) = shared.variables.lock() {
        vars.entry(task_id).or_insert_with(|| body["variables"].clone());
    }
    let behavior = shared
        .behaviors
        .lock()
        .ok()
        .and_then(|b| b.get(&topic).cloned())
        .unwrap_or_else(|| Behavior::ok(Duration::ZERO));
    let first_status =
        if attempt == 1 { shared.first_attempt_status.lock().ok().and_then(|f| f.get(&topic).copied()) } else { None };
    let _running = Running::enter(shared.clone(), topic);
    let delay = match (attempt, behavior.first_attempt_delay) {
        (1, Some(d)) => d,
        _ => behavior.delay,
    };
    tokio::time::sleep(delay).await;
    let status = StatusCode::from_u16(first_status.unwrap_or(behavior.status)).unwrap_or(StatusCode::OK);
    let reply =
        if status.is_success() { json!({"done": true, "attempt": attempt}) } else { json!({"message": "scripted"}) };
    (status, Json(reply))
}

impl Recorder {
    /// Starts on a free port; the gateway must send `api_key` as the URL's password.
    pub async fn start(api_key: &str) -> Self {
        let shared = Arc::new(Shared { expected_auth: basic_auth("gateway", api_key), ..Default::default() });
        let app = Router::new().route("/run/{topic}", post(run)).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the recorder");
        let port = listener.local_addr().expect("recorder address").port();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { base: format!("127.0.0.1:{port}"), shared }
    }

    pub fn behave(&self, topic: &str, behavior: Behavior) {
        if let Ok(mut b) = self.shared.behaviors.lock() {
            b.insert(topic.to_owned(), behavior);
        }
    }

    /// Answers every first attempt on `topic` with `status` (e.g. 503: each task goes through
    /// `retrying` once), later attempts as the behaviour says.
    pub fn fail_first_attempt(&self, topic: &str, status: u16) {
        if let Ok(mut f) = self.shared.first_attempt_status.lock() {
            f.insert(topic.to_owned(), status);
        }
    }

    /// A topic file for the `http` handler pointing here, with the API key in the URL.
    pub fn topic(&self, topic: &str, api_key: &str, timeout_s: u64, concurrency: u16, max_attempts: u32) -> String {
        format!(
            "handler = \"http\"\nurl = \"http://gateway:{api_key}@{}/run/{topic}\"\ntimeout_seconds = {timeout_s}\n\
             concurrency = {concurrency}\n\n[retry]\nmax_attempts = {max_attempts}\ninitial_backoff_ms = 200\n\
             max_backoff_ms = 1000\n",
            self.base
        )
    }

    /// Every execution so far: task id → attempts.
    pub fn runs(&self) -> HashMap<String, Vec<u32>> {
        self.shared.runs.lock().map(|r| r.clone()).unwrap_or_default()
    }

    pub fn variables(&self, task_id: &str) -> Option<Value> {
        self.shared.variables.lock().ok().and_then(|v| v.get(task_id).cloned())
    }

    pub fn total(&self) -> usize {
        self.shared.total.load(Ordering::SeqCst)
    }

    /// (running now, most ever at once) for a topic.
    pub fn concurrency(&self, topic: &str) -> (usize, usize) {
        self.shared.in_flight.lock().ok().and_then(|f| f.get(topic).copied()).unwrap_or_default()
    }

    pub fn bad_auth(&self) -> usize {
        self.shared.bad_auth.load(Ordering::SeqCst)
    }
}
