//! Runs one of the seed gateway's own Python workers, unmodified and in place
//! (`SEED_REFERENCE_DIR`, with the venv python `SEED_WORKERS_PYTHON`; both written by
//! `scripts/services.sh up`), as a real client of a test gateway and of the real Camunda engine.
//! It never copies, patches or writes into the seed's files (hence `PYTHONDONTWRITEBYTECODE`).
//! A worker must never outlive its test: it would take the next test's tasks.

use std::{
    fs::File,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::helpers::{TestApp, env, unique};

/// Python start-up and imports take about a second; this bounds a stuck interpreter.
const READY_LIMIT: Duration = Duration::from_secs(30);
/// The workers' fetchAndLock long poll (`ASYNC_RESPONSE_TIMEOUT`).
const LONG_POLL: Duration = Duration::from_millis(1000);
/// After a worker is killed, its last long poll lives on at Camunda, which does not notice the
/// closed connection: a task created meanwhile on the topic is locked for the dead worker, for
/// its whole lock duration. So a stopped worker's test waits that poll out before it lets the
/// next test start (Camunda's own timeout, plus room for a loaded machine).
const GHOST_POLL: Duration = LONG_POLL.saturating_add(Duration::from_secs(1));
/// How much of a worker's output a failing test prints.
const TAIL_LINES: usize = 80;

/// Which of the seed's workers to run.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// `hello-world/main.py`: topic `say_hello`, worker id `hello-world-worker`.
    Hello,
    /// `publicacao/main.py`: topic `nova_publicacao`, worker id `publicacao-worker`.
    Publicacao,
}

impl Kind {
    fn dir(self) -> &'static str {
        match self {
            Kind::Hello => "hello-world",
            Kind::Publicacao => "publicacao",
        }
    }

    /// The fixture under `tests/fixtures/bpmn/` whose external task has this worker's topic.
    pub fn fixture(self) -> &'static str {
        match self {
            Kind::Hello => "seed_say_hello",
            Kind::Publicacao => "seed_nova_publicacao",
        }
    }

    /// The id the worker locks tasks as (hard-coded in its `main.py`).
    pub fn worker_id(self) -> &'static str {
        match self {
            Kind::Hello => "hello-world-worker",
            Kind::Publicacao => "publicacao-worker",
        }
    }
}

/// How the worker hands a task to the gateway (`GATEWAY_COMMUNICATION_MODE`).
#[derive(Clone, Copy, Debug)]
pub enum Submit {
    /// `POST /tasks/submit`.
    Http,
    /// A message published straight to the gateway's exchange, `task.submit.{topic}`.
    Rabbitmq,
}

/// Kills the worker (`$1`) when its stdin closes: when the test process is gone without dropping
/// the [`SeedWorker`] (killed, or a Ctrl-C; the worker itself survives a SIGINT, as its camunda
/// client's fetch loop catches `BaseException`). Ignores SIGINT and SIGHUP so it outlives the
/// test process in exactly those cases.
const WATCHDOG: &str = r#"trap '' INT HUP; read -r line; kill -9 "$1" 2>/dev/null"#;

/// A seed worker process; killed (and waited for) when dropped, also when a test panics, which
/// then prints the tail of the worker's output. An orphaned worker would take later tests'
/// tasks: its [`WATCHDOG`] kills it if the test process dies without dropping it.
pub struct SeedWorker {
    pub kind: Kind,
    child: Child,
    watchdog: Child,
    log: PathBuf,
    /// Killed, and its last long poll at Camunda has expired.
    gone: bool,
}

impl SeedWorker {
    /// Starts `kind` against `app` and the test engine, locking tasks for `lock_ms`, and waits
    /// until it is up (its metrics port answers; it starts fetching right after).
    pub async fn start(kind: Kind, app: &TestApp, submit: Submit, lock_ms: u64) -> SeedWorker {
        let dir = PathBuf::from(env("SEED_REFERENCE_DIR")).join("camunda-workers-platform/workers").join(kind.dir());
        let log = std::env::temp_dir().join(format!("{}.log", unique(&format!("seed-{}", kind.dir()))));
        let out = File::create(&log).expect("temp dir is writable");
        let err = out.try_clone().expect("log file handle");
        let metrics_port = free_port();
        let mode = match submit {
            Submit::Http => "http",
            Submit::Rabbitmq => "rabbitmq",
        };
        let mut child = Command::new(env("SEED_WORKERS_PYTHON"))
            .arg("main.py")
            .current_dir(&dir)
            // Only what is set here: no proxy variables or stray settings from the caller.
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs([
                ("GATEWAY_ENABLED", "true"),
                ("GATEWAY_URL", app.address.as_str()),
                ("CAMUNDA_URL", env("CAMUNDA_TEST_URL").as_str()),
                ("GATEWAY_COMMUNICATION_MODE", mode),
                ("RABBITMQ_URL", env("RABBITMQ_URL").as_str()),
                ("RABBITMQ_EXCHANGE", app.exchange.as_str()),
                ("LOCK_DURATION", lock_ms.to_string().as_str()),
                // No pause after a fetch that returned nothing to complete (every submit does).
                ("SLEEP_SECONDS", "0"),
                ("ASYNC_RESPONSE_TIMEOUT", LONG_POLL.as_millis().to_string().as_str()),
                ("MAX_TASKS", "1"),
                ("METRICS_PORT", metrics_port.to_string().as_str()),
                ("LOG_LEVEL", "INFO"),
                // Names no .env.{ENVIRONMENT} file, so the environment above is all they read.
                ("ENVIRONMENT", "gateway-it"),
                ("PYTHONUNBUFFERED", "1"),
                ("PYTHONIOENCODING", "utf-8"),
                // The seed reference is read-only and stays unmodified: no __pycache__ in it.
                ("PYTHONDONTWRITEBYTECODE", "1"),
            ])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("start the seed {kind:?} worker in {}: {e}", dir.display()));
        let watchdog = Command::new("sh")
            .args(["-c", WATCHDOG, "seed-worker-watchdog", &child.id().to_string()])
            .stdin(Stdio::piped())
            .spawn();
        let watchdog = watchdog.unwrap_or_else(|e| {
            let _ = child.kill();
            let _ = child.wait();
            panic!("start the seed worker's watchdog (sh): {e}")
        });
        let mut worker = SeedWorker { kind, child, watchdog, log, gone: false };
        worker.wait_ready(metrics_port).await;
        worker
    }

    async fn wait_ready(&mut self, metrics_port: u16) {
        let url = format!("http://127.0.0.1:{metrics_port}/metrics");
        let deadline = tokio::time::Instant::now() + READY_LIMIT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the seed {:?} worker exited at start-up ({status})", self.kind);
            }
            if reqwest::get(&url).await.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the seed {:?} worker was not up in {READY_LIMIT:?}",
                self.kind
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills the worker and waits until Camunda has dropped its last long poll: the end of every
    /// test (a drop without it, on a panic, waits the same way, blocking).
    pub async fn stop(mut self) {
        self.kill();
        tokio::time::sleep(GHOST_POLL).await;
        self.gone = true;
    }

    fn kill(&mut self) {
        // The watchdog first (SIGKILL: it sends nothing), so it cannot signal a reused pid.
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Everything the worker printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn tail(&self) -> String {
        let output = self.output();
        let lines: Vec<&str> = output.lines().collect();
        lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
    }
}

impl Drop for SeedWorker {
    fn drop(&mut self) {
        if !self.gone {
            self.kill();
            std::thread::sleep(GHOST_POLL);
        }
        if std::thread::panicking() {
            eprintln!(
                "---- last {TAIL_LINES} lines of the seed {:?} worker's output ({}) ----\n{}\n----",
                self.kind,
                self.log.display(),
                self.tail()
            );
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// A port nothing listens on right now (bound, read, released).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("bound address").port()
}
