//! A fault-injecting stand-in for Camunda's external-task REST API: enough of `complete`,
//! `bpmnError`, `failure`, `GET /external-task/{id}` and `/engine` to receive the gateway's
//! reports, with scripted faults (5xx, hanging after committing, connections reset
//! before the request is read, fixed 404/400). It counts, per task, every report call and every
//! committed final report, which is what "exactly one final report" is checked against. It can
//! SIGKILL the gateway right after committing a completion, before answering it.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
    serve::Listener,
};
use serde_json::{Value, json};

/// A fault, applied to the first `calls` report calls of every task.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    None,
    /// Answer this status without committing anything.
    Status(u16),
    /// Commit, then hold the answer this long (the caller times out first).
    HangAfterCommit(Duration),
}

/// What the stand-in knows of one external task.
#[derive(Debug, Default, Clone)]
pub struct TaskAtCamunda {
    /// complete / bpmnError / failure calls received.
    pub calls: u32,
    /// When each of those calls arrived, since the stand-in started.
    pub at: Vec<Duration>,
    /// Final reports committed: complete, bpmnError, or failure with retries 0.
    pub finals: u32,
    /// Kinds committed, in order (`complete`, `bpmnError`, `failure(0)`, `failure(2)`, …).
    pub committed: Vec<String>,
    /// Completed or bpmnError'ed: the task no longer exists.
    pub gone: bool,
    pub retries: Option<i64>,
}

#[derive(Default)]
struct Shared {
    tasks: Mutex<HashMap<String, TaskAtCamunda>>,
    fault: Mutex<Option<(Fault, u32)>>,
    /// Answer every report with this status, committing nothing (404 / 400 scenarios).
    fixed: AtomicU32,
    /// Reset every other new connection before reading it, while set.
    resetting: AtomicBool,
    connections: AtomicUsize,
    resets: AtomicUsize,
    /// SIGKILL this pid right after the next committed completion (0: disarmed).
    kill_on_complete: AtomicU32,
    expected_auth: String,
    bad_auth: AtomicUsize,
    started: Option<std::time::Instant>,
}

pub struct Camunda {
    /// The REST base the gateway gets as `CAMUNDA_URL`.
    pub url: String,
    shared: Arc<Shared>,
}

/// Resets alternate connections while the stand-in is told to.
struct ResettingListener {
    inner: tokio::net::TcpListener,
    shared: Arc<Shared>,
}

impl Listener for ResettingListener {
    type Io = tokio::net::TcpStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, addr)) = self.inner.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let n = self.shared.connections.fetch_add(1, Ordering::SeqCst);
            if self.shared.resetting.load(Ordering::SeqCst) && n.is_multiple_of(2) {
                // SO_LINGER 0: closing sends RST instead of FIN.
                let _ = stream.set_zero_linger();
                drop(stream);
                self.shared.resets.fetch_add(1, Ordering::SeqCst);
                continue;
            }
            return (stream, addr);
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

fn not_found(id: &str) -> Response {
    let body = json!({"type": "RestException", "message": format!("External task with id {id} does not exist")});
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}

async fn report(
    State(shared): State<Arc<Shared>>,
    Path((id, action)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) != Some(shared.expected_auth.as_str()) {
        shared.bad_auth.fetch_add(1, Ordering::SeqCst);
    }
    let calls = {
        let mut tasks = shared.tasks.lock().expect("stand-in state");
        let task = tasks.entry(id.clone()).or_default();
        task.calls += 1;
        task.at.push(shared.started.map(|s| s.elapsed()).unwrap_or_default());
        task.calls
    };
    let fixed = shared.fixed.load(Ordering::SeqCst);
    if fixed != 0 {
        let status = StatusCode::from_u16(u16::try_from(fixed).unwrap_or(500)).unwrap_or(StatusCode::BAD_REQUEST);
        return (status, Json(json!({"type": "RestException", "message": "scripted"}))).into_response();
    }
    let fault = match *shared.fault.lock().expect("stand-in fault") {
        Some((fault, first)) if calls <= first => fault,
        _ => Fault::None,
    };
    match fault {
        Fault::Status(code) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return (status, Json(json!({"type": "ProcessEngineException", "message": "scripted"}))).into_response();
        }
        Fault::None | Fault::HangAfterCommit(_) => {}
    }
    let kind = match action.as_str() {
        "failure" => format!("failure({})", body["retries"].as_i64().unwrap_or(-1)),
        other => other.to_owned(),
    };
    {
        let mut tasks = shared.tasks.lock().expect("stand-in state");
        let task = tasks.entry(id.clone()).or_default();
        if task.gone {
            return not_found(&id);
        }
        let is_final = match action.as_str() {
            "complete" | "bpmnError" => {
                task.gone = true;
                true
            }
            _ => {
                task.retries = body["retries"].as_i64();
                task.retries == Some(0)
            }
        };
        if is_final {
            task.finals += 1;
        }
        task.committed.push(kind);
    }
    if action == "complete" {
        let pid = shared.kill_on_complete.swap(0, Ordering::SeqCst);
        if pid != 0 {
            // Synchronous on purpose: the gateway is dead before this answer leaves.
            let _ = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
    }
    if let Fault::HangAfterCommit(d) = fault {
        tokio::time::sleep(d).await;
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn external_task(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let task = shared.tasks.lock().expect("stand-in state").get(&id).cloned().unwrap_or_default();
    if task.gone {
        return not_found(&id);
    }
    Json(json!({"id": id, "workerId": "worker-1", "retries": task.retries})).into_response()
}

impl Camunda {
    /// Starts on a free port; requests must carry basic auth `faults:<password>`.
    pub async fn start(password: &str) -> Self {
        let shared = Arc::new(Shared {
            expected_auth: crate::recorder::basic_auth("faults", password),
            started: Some(std::time::Instant::now()),
            ..Default::default()
        });
        let app = Router::new()
            .route("/engine-rest/engine", get(|| async { Json(json!([{"name": "default"}])) }))
            .route("/engine-rest/external-task/fetchAndLock", post(|| async { Json(json!([])) }))
            .route("/engine-rest/external-task/{id}", get(external_task))
            .route("/engine-rest/external-task/{id}/{action}", post(report))
            // One request per connection, so a reset can hit any report.
            .layer(axum::middleware::map_response(|mut r: Response| async move {
                r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
                r
            }))
            .with_state(shared.clone());
        let inner = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the Camunda stand-in");
        let port = inner.local_addr().expect("stand-in address").port();
        let listener = ResettingListener { inner, shared: shared.clone() };
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url: format!("http://127.0.0.1:{port}/engine-rest"), shared }
    }

    /// Gateway variables for report mode against this stand-in.
    pub fn vars(&self, password: &str) -> Vec<(String, String)> {
        vec![
            ("CAMUNDA_URL".into(), self.url.clone()),
            ("CAMUNDA_USERNAME".into(), "faults".into()),
            ("CAMUNDA_PASSWORD".into(), password.into()),
        ]
    }

    /// Applies `fault` to the first `calls` report calls of each task.
    pub fn fault(&self, fault: Fault, calls: u32) {
        *self.shared.fault.lock().expect("stand-in fault") = Some((fault, calls));
    }

    /// Answers every report call with `status` (0: back to normal).
    pub fn fixed(&self, status: u16) {
        self.shared.fixed.store(u32::from(status), Ordering::SeqCst);
    }

    pub fn resetting(&self, on: bool) {
        self.shared.resetting.store(on, Ordering::SeqCst);
    }

    pub fn resets(&self) -> usize {
        self.shared.resets.load(Ordering::SeqCst)
    }

    pub fn kill_on_complete(&self, pid: u32) {
        self.shared.kill_on_complete.store(pid, Ordering::SeqCst);
    }

    /// Whether the armed kill has fired.
    pub fn killed(&self) -> bool {
        self.shared.kill_on_complete.load(Ordering::SeqCst) == 0
    }

    pub fn tasks(&self) -> HashMap<String, TaskAtCamunda> {
        self.shared.tasks.lock().map(|t| t.clone()).unwrap_or_default()
    }

    pub fn bad_auth(&self) -> usize {
        self.shared.bad_auth.load(Ordering::SeqCst)
    }
}
