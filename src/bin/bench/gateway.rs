//! The gateway under test: the real binary as a child process, configured only through its
//! environment (a clean one: no `.env`, no Camunda), with its own database and exchange, logging
//! at warn to a file. It reports its resident memory from `/proc/<pid>/status`.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

use crate::setup::Ctx;

pub struct Gateway {
    child: Child,
    pid: u32,
    /// `http://127.0.0.1:<port>`
    pub base: String,
    log: PathBuf,
}

/// Resident memory, in MiB.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    /// VmRSS: resident now.
    pub rss_mib: f64,
    /// VmHWM: the most it has been resident.
    pub peak_mib: f64,
}

/// The `*.toml` stems of a topics folder: the topic names (no `name =` overrides in ours).
pub fn topic_names(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|x| x == "toml")
            && let Some(stem) = path.file_stem().and_then(|s| s.to_str())
        {
            names.push(stem.to_owned());
        }
    }
    Ok(names)
}

/// A port that was free a moment ago (the gateway binds it right after).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// CPU seconds (user + system) a process has used so far, from `/proc/<pid>/stat`.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; count fields after its closing parenthesis.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // USER_HZ is 100 on every Linux this runs on.
    Some(ticks / 100.0)
}

/// Waits (at most 3 minutes) until the MongoDB-wire server is idle, saying so when that took a
/// while: no measurement should pay for what the one before left the server to do.
pub async fn wait_for_idle_store() {
    let waited = store_idle(std::time::Duration::from_secs(180)).await;
    if waited.as_secs_f64() > 1.5 {
        eprintln!("[bench] waited {:.0} s for the MongoDB-wire server to go idle", waited.as_secs_f64());
    }
}

/// Waits until the MongoDB-wire server has done what earlier phases left it to do (a killed
/// gateway's last writes, for one), so that no phase measures that work: until it uses under a
/// tenth of a core over one second, for at most `limit`. Returns how long it waited; without the
/// server's pid it does not wait.
pub async fn store_idle(limit: std::time::Duration) -> std::time::Duration {
    let started = std::time::Instant::now();
    let Some(pid) = mongo_server_pid() else { return std::time::Duration::ZERO };
    while started.elapsed() < limit {
        let Some(before) = cpu_seconds(pid) else { break };
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let Some(after) = cpu_seconds(pid) else { break };
        if after - before < 0.1 {
            break;
        }
    }
    started.elapsed()
}

/// The MongoDB-wire test server's pid, as `scripts/services.sh` recorded it.
pub fn mongo_server_pid() -> Option<u32> {
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".services/secantus.pid");
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

impl Gateway {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Starts a gateway named `name` in `mode` (all | api | worker) on the topics of `topics_dir`
    /// and waits until `/health` says MongoDB and RabbitMQ are both up.
    pub async fn start(ctx: &Ctx, name: &str, mode: &str, topics_dir: &Path) -> anyhow::Result<Self> {
        Self::start_with(ctx, name, mode, topics_dir, &[]).await
    }

    /// [`Self::start`] with extra environment variables (set last, so they override).
    pub async fn start_with(
        ctx: &Ctx,
        name: &str,
        mode: &str,
        topics_dir: &Path,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let database = ctx.name(name);
        let exchange = database.clone();
        ctx.remember_database(&database);
        ctx.remember_topology(&exchange, &topic_names(topics_dir)?);
        let port = free_port()?;
        let log = ctx.tmp.join(format!("gateway-{name}.log"));
        let out = std::fs::File::create(&log)?;
        let child = Command::new(&ctx.gateway_bin)
            .env_clear()
            .env("HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .env("GATEWAY_MODE", mode)
            .env("MONGODB_URI", &ctx.mongo_uri)
            .env("MONGODB_DATABASE", &database)
            .env("RABBITMQ_URL", &ctx.rabbit_url)
            .env("RABBITMQ_EXCHANGE", &exchange)
            .env("TOPICS_DIR", topics_dir)
            // A measurement on loopback: no keys (the auth check is one SHA-256 a request).
            .env("AUTH_MODE", "open")
            .env("LOG_LEVEL", "warn")
            .env("LOG_FORMAT", "json")
            // The bench stops gateways with work in hand; it need not wait for it.
            .env("SHUTDOWN_GRACE_SECONDS", "1")
            // The phases check their counts against /tasks/statistics: counted for each request.
            .env("STATISTICS_MAX_AGE_SECONDS", "0")
            .envs(extra.iter().copied())
            // The scratch folder holds no .env, so the gateway reads nothing but the above.
            .current_dir(&ctx.tmp)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", ctx.gateway_bin.display()))?;
        let pid = child.id().context("the gateway exited at once")?;
        let mut gateway = Self { child, pid, base: format!("http://127.0.0.1:{port}"), log };
        gateway.wait_healthy(ctx, Duration::from_secs(60)).await?;
        eprintln!("[bench] gateway {name} ({mode}) up: pid {pid}, {}", gateway.base);
        Ok(gateway)
    }

    async fn wait_healthy(&mut self, ctx: &Ctx, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("the gateway exited during start-up ({status}); its log:\n{}", self.log_tail(30));
            }
            if let Ok(r) = ctx.http.get(format!("{}/health", self.base)).timeout(Duration::from_secs(5)).send().await
                && r.status().is_success()
                && let Ok(body) = r.json::<serde_json::Value>().await
                && body["rabbitmq"] == "healthy"
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the gateway was not healthy within {within:?}; its log:\n{}", self.log_tail(30));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn memory(&self) -> anyhow::Result<Memory> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .with_context(|| format!("reading /proc/{}/status (Linux only)", self.pid))?;
        let kib = |key: &str| -> anyhow::Result<f64> {
            let line = status.lines().find(|l| l.starts_with(key)).with_context(|| format!("no {key} in status"))?;
            let n: f64 = line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).context("unreadable value")?;
            Ok(n)
        };
        Ok(Memory { rss_mib: kib("VmRSS:")? / 1024.0, peak_mib: kib("VmHWM:")? / 1024.0 })
    }

    /// The last `n` lines of the gateway's log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// SIGTERM, then SIGKILL if it has not exited within a few seconds (a gateway with many
    /// tasks in hand hands each back at shutdown, which takes a while; the bench has no use for it).
    pub async fn stop(mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.pid.to_string()).status().await;
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await.is_err() {
            eprintln!("[bench] gateway pid {} still stopping after 5 s; killing it", self.pid);
            let _ = self.child.kill().await;
        }
    }
}
