//! The gateway under test: the real binary as a child process, configured only through its
//! environment (cleared first; the working directory holds no `.env`), with its own database,
//! exchange and topics folder, its output appended to one log file that the secret check reads.
//! It can be killed, stopped and started again on the same database and exchange, and more
//! processes (replicas, each with its own port, log file, `GATEWAY_MODE` and optionally a clock
//! skewed by libfaketime) can join the same database, exchange and topics.

use std::{
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use serde_json::Value;
use tokio::process::{Child, Command};

use crate::{
    common::delete_topology,
    services::{Lab, env, unique},
};

/// What a scenario changes in the gateway's configuration.
#[derive(Default, Clone)]
pub struct Setup {
    /// Topic files: (topic name, TOML text).
    pub topics: Vec<(String, String)>,
    /// Extra variables, e.g. `CAMUNDA_URL`.
    pub vars: Vec<(String, String)>,
    /// AMQP heartbeat in seconds, appended to the URL as `?heartbeat=N`.
    pub heartbeat: Option<u16>,
}

/// A cheap handle for talking to the API from spawned tasks.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
}

impl Api {
    /// POSTs a submission; `None` when the gateway did not answer at all.
    pub async fn submit(&self, body: &Value) -> Option<(u16, Value)> {
        let r = self
            .http
            .post(format!("{}/tasks/submit", self.base))
            .json(body)
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .ok()?;
        let status = r.status().as_u16();
        Some((status, r.json().await.unwrap_or(Value::Null)))
    }

    pub async fn get(&self, path: &str) -> Option<(u16, Value)> {
        let r = self.http.get(format!("{}{path}", self.base)).timeout(Duration::from_secs(10)).send().await.ok()?;
        let status = r.status().as_u16();
        Some((status, r.json().await.unwrap_or(Value::Null)))
    }
}

pub struct Gateway {
    child: Option<Child>,
    pub pid: u32,
    pub api: Api,
    pub exchange: String,
    pub topics: Vec<String>,
    pub log: PathBuf,
    dir: PathBuf,
    vars: Vec<(String, String)>,
    /// The test's own view of the gateway's database (no credentials needed).
    pub mongo: mongodb::Database,
    secrets: Vec<String>,
    /// False for a replica: the database and exchange belong to the first gateway, whose
    /// [`Gateway::cleanup`] drops them.
    owns_store: bool,
}

/// The binary under test: `FAULTS_GATEWAY_BIN` (another build, e.g. an older commit's, to see a
/// scenario fail without a fix) or this crate's.
fn binary() -> String {
    std::env::var("FAULTS_GATEWAY_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_worker-api-gateway").to_owned())
}

/// libfaketime, preloaded straight into the gateway (Debian's `faketime` wrapper forks and waits,
/// so its pid would not be the gateway's: signals would miss it).
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// Variables that run a process with its wall clock moved by `offset` (libfaketime's relative
/// form, e.g. `-5m`, `+300s`). `FAKETIME_DONT_FAKE_MONOTONIC` keeps the monotonic clock real, so
/// tokio's timers and `Instant`s are untouched while `SystemTime`/chrono see the skew.
pub fn skewed_clock(offset: &str) -> Vec<(String, String)> {
    assert!(
        std::path::Path::new(LIBFAKETIME).exists(),
        "{LIBFAKETIME} is missing: scripts/services.sh up installs Debian's faketime"
    );
    vec![
        ("LD_PRELOAD".into(), LIBFAKETIME.into()),
        ("FAKETIME".into(), offset.into()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
    ]
}

/// A port that was free a moment ago; the gateway binds it right after.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free local port").port()
}

impl Gateway {
    /// Writes the topic files and starts the gateway; returns once `/health` shows RabbitMQ up.
    pub async fn start(lab: &Lab, scenario: &str, setup: Setup) -> Self {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("faults").join(unique(scenario));
        let topics_dir = dir.join("topics");
        std::fs::create_dir_all(&topics_dir).expect("the target tmp dir is writable");
        for (name, text) in &setup.topics {
            std::fs::write(topics_dir.join(format!("{name}.toml")), text).expect("write a topic file");
        }
        let database = unique("faults");
        let exchange = database.clone();
        let rabbit = match setup.heartbeat {
            Some(h) => format!("{}?heartbeat={h}", lab.creds.rabbit_url),
            None => lab.creds.rabbit_url.clone(),
        };
        let mut vars: Vec<(String, String)> = vec![
            ("HOST".into(), "127.0.0.1".into()),
            ("MONGODB_URI".into(), lab.creds.mongo_uri.clone()),
            ("MONGODB_DATABASE".into(), database.clone()),
            ("MONGODB_TIMEOUT_MS".into(), "2000".into()),
            ("MONGODB_MAX_POOL_SIZE".into(), "4".into()),
            ("RABBITMQ_URL".into(), rabbit),
            ("RABBITMQ_EXCHANGE".into(), exchange.clone()),
            ("TOPICS_DIR".into(), topics_dir.display().to_string()),
            ("RELAY_INTERVAL_MS".into(), "200".into()),
            ("SHUTDOWN_GRACE_SECONDS".into(), "5".into()),
            // The fault suite is about durability, not access; a setup may say otherwise.
            ("AUTH_MODE".into(), "open".into()),
            ("LOG_FORMAT".into(), "json".into()),
            ("LOG_LEVEL".into(), std::env::var("FAULTS_LOG_LEVEL").unwrap_or_else(|_| "info".into())),
        ];
        vars.extend(setup.vars);
        let mongo =
            mongodb::Client::with_uri_str(&lab.creds.mongo_plain).await.expect("MongoDB client").database(&database);
        let mut gateway = Self {
            child: None,
            pid: 0,
            api: Api { base: String::new(), http: reqwest::Client::new() },
            exchange,
            topics: setup.topics.iter().map(|(name, _)| name.clone()).collect(),
            log: dir.join("gateway.log"),
            dir,
            vars,
            mongo,
            secrets: lab.creds.secrets.clone(),
            owns_store: true,
        };
        gateway.spawn().await;
        gateway.wait_ready(Duration::from_secs(60)).await;
        gateway
    }

    /// Starts one more process on this gateway's database, exchange and topics, with its own
    /// port and log file (`gateway-<name>.log`), `GATEWAY_MODE=mode` (`api`, `worker`, `all`)
    /// and `extra` variables on top (e.g. [`skewed_clock`]); returns once it is ready.
    pub async fn start_replica(&self, name: &str, mode: &str, extra: Vec<(String, String)>) -> Self {
        let mut vars: Vec<(String, String)> = self.vars.clone();
        let mut set = |key: &str, value: String| {
            vars.retain(|(k, _)| k != key);
            vars.push((key.to_owned(), value));
        };
        set("GATEWAY_MODE", mode.to_owned());
        for (key, value) in extra {
            set(&key, value);
        }
        let mut replica = Self {
            child: None,
            pid: 0,
            api: Api { base: String::new(), http: reqwest::Client::new() },
            exchange: self.exchange.clone(),
            topics: self.topics.clone(),
            log: self.dir.join(format!("gateway-{name}.log")),
            dir: self.dir.clone(),
            vars,
            mongo: self.mongo.clone(),
            secrets: self.secrets.clone(),
            owns_store: false,
        };
        replica.spawn().await;
        replica.wait_ready(Duration::from_secs(60)).await;
        replica
    }

    /// Starts the process (again) on a fresh port, without waiting for it.
    pub async fn spawn(&mut self) {
        assert!(self.child.is_none(), "the gateway is already running");
        let port = free_port();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("open the gateway log");
        let child = Command::new(binary())
            .env_clear()
            .envs(self.vars.iter().cloned())
            .env("PORT", port.to_string())
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup the log fd"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start the gateway binary");
        self.pid = child.id().expect("the gateway has a pid");
        self.child = Some(child);
        self.api.base = format!("http://127.0.0.1:{port}");
    }

    /// Waits until `/health` answers with RabbitMQ connected.
    pub async fn wait_ready(&mut self, limit: Duration) {
        self.wait_health("RabbitMQ connected", limit, |h| h["rabbitmq"] == "healthy").await;
    }

    /// Polls `/health` until `done` holds; panics with the log's tail otherwise.
    pub async fn wait_health(&mut self, what: &str, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("the gateway exited ({status}) while waiting for {what}; log:\n{}", self.log_tail(40));
            }
            if let Some((_, health)) = self.api.get("/health").await
                && done(&health)
            {
                return health;
            }
            assert!(Instant::now() < deadline, "no {what} within {limit:?}; log:\n{}", self.log_tail(40));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL, then reap.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Waits for a process someone else killed (e.g. a stand-in) and reaps it.
    pub async fn wait_killed(&mut self, limit: Duration) {
        let mut child = self.child.take().expect("the gateway was running");
        let status = tokio::time::timeout(limit, child.wait()).await.expect("the gateway died in time");
        eprintln!("[faults] gateway {} ended: {status:?}", self.pid);
    }

    /// SIGTERM, and wait (at most `limit`) for a clean exit.
    pub async fn terminate(&mut self, limit: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("the gateway was running");
        crate::services::signal(self.pid, "TERM").await;
        match tokio::time::timeout(limit, child.wait()).await {
            Ok(status) => status.expect("wait for the gateway"),
            Err(_) => {
                let _ = child.kill().await;
                panic!("the gateway did not stop within {limit:?} of SIGTERM; log:\n{}", self.log_tail(40));
            }
        }
    }

    /// Starts a killed or stopped gateway again on the same database and exchange.
    pub async fn restart(&mut self) {
        self.spawn().await;
        self.wait_ready(Duration::from_secs(60)).await;
    }

    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// How many log lines contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        std::fs::read_to_string(&self.log).unwrap_or_default().lines().filter(|l| l.contains(needle)).count()
    }

    /// The last check: no password or API key in anything the gateway wrote.
    pub fn assert_no_secrets(&self) {
        let text = std::fs::read_to_string(&self.log).expect("the gateway log exists");
        assert!(!text.is_empty(), "the gateway wrote no log at all");
        for secret in &self.secrets {
            if let Some(line) = text.lines().find(|l| l.contains(secret.as_str())) {
                panic!("the gateway log {} holds a secret ({}…): {line}", self.log.display(), &secret[..5]);
            }
        }
    }

    /// Resident memory in MiB (`VmRSS`).
    pub fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kib| kib.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    }

    /// Stops the gateway and drops what it created: database, queues, exchanges (a replica
    /// only stops).
    pub async fn cleanup(mut self) {
        self.kill().await;
        if !self.owns_store {
            return;
        }
        let _ = self.mongo.drop().await;
        delete_topology(&self.exchange, &self.topics).await;
    }
}

/// Messages ready in a queue of this gateway (passive declare), e.g. `dead` or `task.submit.x`.
pub async fn queue_depth(queue: &str) -> Option<u32> {
    use lapin::options::QueueDeclareOptions;
    let conn = lapin::Connection::connect(&env("RABBITMQ_URL"), lapin::ConnectionProperties::default()).await.ok()?;
    let ch = conn.create_channel().await.ok()?;
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    let q = ch.queue_declare(queue.into(), passive, lapin::types::FieldTable::default()).await.ok();
    let _ = conn.close(200, "bye".into()).await;
    q.map(|q| q.message_count())
}
