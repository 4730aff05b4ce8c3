//! The real gateway binary as a child process, for the tests that need what only the process
//! shows: its JSON log on stdout, its stderr, its exit status after SIGTERM, its memory. It
//! starts on a free port (`PORT=0`, `HOST=127.0.0.1`, `LOG_FORMAT=json`, plus the test's
//! variables), reads both pipes to their end in the background (so a busy log never fills the
//! pipe) and keeps every line for the test to look at. It does not clean up the database,
//! exchange or topics folder a test gave it: the test that made them removes them.

use std::{
    collections::HashSet,
    ffi::OsStr,
    path::Path,
    process::{ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, BufReader},
    process::{Child, Command},
    sync::watch,
    task::JoinHandle,
};

use crate::helpers::env;

/// How the binary is to be started; made by [`RealGateway::launch`].
pub struct Launch {
    command: Command,
    wait: Duration,
}

impl Launch {
    /// Sets a variable for the child (the last value given for a name wins).
    pub fn env(mut self, name: &str, value: impl AsRef<OsStr>) -> Self {
        self.command.env(name, value);
        self
    }

    /// Keeps a variable of the test's own environment (e.g. `CAMUNDA_URL`) from the child.
    pub fn env_remove(mut self, name: &str) -> Self {
        self.command.env_remove(name);
        self
    }

    /// The test services (`MONGODB_URI`, `RABBITMQ_URL`) with the test's own database, exchange
    /// and topics folder.
    pub fn services(self, database: &str, exchange: &str, topics: &Path) -> Self {
        self.env("MONGODB_URI", env("MONGODB_URI"))
            .env("MONGODB_DATABASE", database)
            .env("RABBITMQ_URL", env("RABBITMQ_URL"))
            .env("RABBITMQ_EXCHANGE", exchange)
            .env("TOPICS_DIR", topics)
    }

    /// How long starting, each [`RealGateway::logged`] and [`RealGateway::stop`] may take
    /// (30 s unless told).
    pub fn within(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// Spawns the binary and waits for its `listening` line, which names the port.
    pub async fn start(mut self) -> RealGateway {
        let mut child = self
            .command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the gateway binary starts");
        let pid = child.id().expect("a child just spawned has a pid");
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let (grew, growth) = watch::channel(0);
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
        let stdout_reader = tokio::spawn({
            let lines = lines.clone();
            async move {
                while let Ok(Some(line)) = stdout.next_line().await {
                    let mut lines = lines.lock().expect("no panics while held");
                    lines.push(line);
                    grew.send_replace(lines.len());
                }
            }
        });
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let stderr_reader = tokio::spawn(async move {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text).await;
            text
        });
        let mut gateway = RealGateway {
            child,
            pid,
            port: 0,
            base: String::new(),
            wait: self.wait,
            lines,
            growth,
            returned: HashSet::new(),
            readers: Some((stdout_reader, stderr_reader)),
            stderr: String::new(),
        };
        let listening = gateway.logged("listening").await;
        let port = listening["fields"]["port"].as_u64().and_then(|p| u16::try_from(p).ok());
        gateway.port = port.unwrap_or_else(|| panic!("the `listening` line names the port: {listening}"));
        gateway.base = format!("http://127.0.0.1:{}", gateway.port);
        gateway
    }
}

/// A running gateway binary; killed when dropped.
pub struct RealGateway {
    child: Child,
    /// The process id (for signals and `/proc/<pid>`).
    pub pid: u32,
    /// The port it listens on, from its `listening` line.
    pub port: u16,
    /// `http://127.0.0.1:<port>`
    pub base: String,
    wait: Duration,
    /// Every stdout line read so far, in order.
    lines: Arc<Mutex<Vec<String>>>,
    /// Tells how many lines there are; closed when stdout ends.
    growth: watch::Receiver<usize>,
    /// Lines [`Self::logged`] already returned, so waiting for a message twice finds two lines.
    returned: HashSet<usize>,
    readers: Option<(JoinHandle<()>, JoinHandle<String>)>,
    stderr: String,
}

impl RealGateway {
    /// The binary with `PORT=0`, `HOST=127.0.0.1` and `LOG_FORMAT=json`; the rest comes from the
    /// test's own environment unless set or removed on the returned [`Launch`].
    pub fn launch() -> Launch {
        let mut command = Command::new(env!("CARGO_BIN_EXE_worker-api-gateway"));
        command.env("PORT", "0").env("HOST", "127.0.0.1").env("LOG_FORMAT", "json");
        Launch { command, wait: Duration::from_secs(30) }
    }

    /// `http://127.0.0.1:<port><path>`
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// GETs `path` as JSON every 50 ms until `done` holds for the body, which it answers; panics,
    /// showing the last body, when the wait runs out.
    pub async fn until(&self, client: &reqwest::Client, path: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + self.wait;
        loop {
            let answer = client.get(self.url(path)).send().await.expect("the gateway answers");
            let body: Value = answer.json().await.unwrap_or_default();
            if done(&body) {
                return body;
            }
            assert!(tokio::time::Instant::now() < deadline, "GET {path} never got there: {body}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for a JSON log line whose message is `message` and that no earlier call returned
    /// (lines logged before the call count, in whatever order they came); panics, showing the
    /// log's tail, if none comes in time or stdout ends without one.
    pub async fn logged(&mut self, message: &str) -> Value {
        let deadline = tokio::time::Instant::now() + self.wait;
        loop {
            if let Some(event) = self.unreturned(message) {
                return event;
            }
            let ended = match tokio::time::timeout_at(deadline, self.growth.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => "its stdout ended",
                Err(_) => "the wait ran out",
            };
            // The last lines may have come with the end of stdout.
            if let Some(event) = self.unreturned(message) {
                return event;
            }
            let lines = self.lines();
            let tail = &lines[lines.len().saturating_sub(40)..];
            panic!("the gateway never logged {message:?} ({ended}); its log ends with: {tail:#?}");
        }
    }

    fn unreturned(&mut self, message: &str) -> Option<Value> {
        let lines = self.lines.lock().expect("no panics while held");
        let (index, event) = lines
            .iter()
            .enumerate()
            .filter(|(index, _)| !self.returned.contains(index))
            .map(|(index, line)| (index, serde_json::from_str::<Value>(line).unwrap_or_default()))
            .find(|(_, event)| event["fields"]["message"] == message)?;
        self.returned.insert(index);
        Some(event)
    }

    /// Every stdout line read so far, as written.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("no panics while held").clone()
    }

    /// Every stdout line read so far, parsed; a line that is not JSON is `{"raw": line}`.
    pub fn events(&self) -> Vec<Value> {
        let parse = |line: &String| serde_json::from_str(line).unwrap_or_else(|_| json!({ "raw": line }));
        self.lines.lock().expect("no panics while held").iter().map(parse).collect()
    }

    /// What the process wrote to stderr; complete once [`Self::stop`] returned.
    pub fn stderr(&self) -> &str {
        &self.stderr
    }

    /// SIGTERM, as `docker stop` or systemd sends it; waits for the exit and for both pipes to
    /// end, so [`Self::lines`] and [`Self::stderr`] hold everything the process wrote.
    pub async fn stop(&mut self) -> ExitStatus {
        let signalled = std::process::Command::new("kill").args(["-TERM", &self.pid.to_string()]).status();
        assert!(signalled.as_ref().is_ok_and(ExitStatus::success), "SIGTERM to {}: {signalled:?}", self.pid);
        let status = tokio::time::timeout(self.wait, self.child.wait()).await;
        let status = status.expect("the gateway exits in time").expect("waiting for a child works");
        if let Some((stdout, stderr)) = self.readers.take() {
            let _ = tokio::time::timeout(self.wait, stdout).await.expect("stdout ends after the exit");
            let stderr = tokio::time::timeout(self.wait, stderr).await.expect("stderr ends after the exit");
            self.stderr = stderr.unwrap_or_default();
        }
        status
    }
}
