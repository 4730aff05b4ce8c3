//! The shared services and the faults injected into them: RabbitMQ through `rabbitmqctl` and
//! signals to its Erlang VM, SecantusDB through signals to its pid, everything brought back by
//! `scripts/services.sh up`. A [`Lab`] serialises the tests and restores the services when it is
//! dropped, so a failing test never leaves a broker frozen or a database down behind it.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use rand::{Rng, distr::Alphanumeric};

pub const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// A variable the test services set (`source .services/env`); missing means the test fails.
pub fn env(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: start the test services with `scripts/services.sh up` and `source .services/env`")
    })
}

/// A name unique to this run: databases, exchanges, task ids.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{prefix}_{}_{n}_{nanos:x}", std::process::id())
}

fn random_secret(prefix: &str) -> String {
    let tail: String = rand::rng().sample_iter(&Alphanumeric).take(24).map(char::from).collect();
    format!("{prefix}{tail}")
}

/// Credentials made for this run, so the log check looks for real secrets.
pub struct Credentials {
    /// `amqp://faults:<password>@host:port/%2f`.
    pub rabbit_url: String,
    /// `mongodb://faults:<password>@host:port/?authSource=admin`.
    pub mongo_uri: String,
    /// The services' own MongoDB URI, for the test's reads.
    pub mongo_plain: String,
    pub camunda_password: String,
    /// Sent by the gateway to the recording handler (user info of its URL).
    pub api_key: String,
    pub secrets: Vec<String>,
}

impl Credentials {
    async fn create() -> Self {
        let rabbit = url::Url::parse(&env("RABBITMQ_URL")).expect("RABBITMQ_URL is a URL");
        let rabbit_host =
            format!("{}:{}", rabbit.host_str().expect("RABBITMQ_URL has a host"), rabbit.port().unwrap_or(5672));
        let rabbit_password = random_secret("RmqPw");
        if rabbitmqctl(&["add_user", "faults", &rabbit_password]).await.is_err() {
            rabbitmqctl(&["change_password", "faults", &rabbit_password]).await.expect("rabbitmqctl change_password");
        }
        rabbitmqctl(&["set_permissions", "-p", "/", "faults", ".*", ".*", ".*"]).await.expect("set_permissions");

        let mongo_plain = env("MONGODB_URI");
        let mongo_host = mongo_plain
            .trim_start_matches("mongodb://")
            .rsplit('@')
            .next()
            .and_then(|rest| rest.split(['/', '?']).next())
            .expect("MONGODB_URI has a host")
            .to_owned();
        let mongo_password = random_secret("MdbPw");
        let client = mongodb::Client::with_uri_str(&mongo_plain).await.expect("MongoDB client");
        let admin = client.database("admin");
        let create = bson::doc! {"createUser": "faults", "pwd": &mongo_password, "roles": ["root"]};
        if admin.run_command(create).await.is_err() {
            admin
                .run_command(bson::doc! {"updateUser": "faults", "pwd": &mongo_password})
                .await
                .expect("updateUser faults");
        }
        let mongo_uri = format!("mongodb://faults:{mongo_password}@{mongo_host}/?authSource=admin");
        let authed = mongodb::Client::with_uri_str(&mongo_uri).await.expect("MongoDB client with credentials");
        authed
            .database("admin")
            .run_command(bson::doc! {"ping": 1})
            .await
            .expect("the MongoDB-wire server accepts the suite's user and password");

        sweep_leftovers(&client).await;

        let camunda_password = random_secret("CamPw");
        let api_key = random_secret("ApiKey");
        let secrets = vec![rabbit_password.clone(), mongo_password.clone(), camunda_password.clone(), api_key.clone()];
        Self {
            rabbit_url: format!("amqp://faults:{rabbit_password}@{rabbit_host}/%2f"),
            mongo_uri,
            mongo_plain,
            camunda_password,
            api_key,
            secrets,
        }
    }
}

/// Drops what failed runs of this suite left behind: `faults_*` databases and queues.
async fn sweep_leftovers(client: &mongodb::Client) {
    for name in client.list_database_names().await.unwrap_or_default() {
        if name.starts_with("faults_") {
            let _ = client.database(&name).drop().await;
        }
    }
    let queues = rabbitmqctl(&["list_queues", "--quiet", "--no-table-headers", "name"]).await.unwrap_or_default();
    for queue in queues.lines().map(str::trim).filter(|q| q.starts_with("faults_")) {
        let _ = rabbitmqctl(&["delete_queue", queue]).await;
    }
}

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
static CREDENTIALS: tokio::sync::OnceCell<Credentials> = tokio::sync::OnceCell::const_new();
/// The Erlang VM we stopped with SIGSTOP, if any.
static FROZEN: AtomicU32 = AtomicU32::new(0);
/// The memory watermark before we raised an alarm (an Erlang term), if we did.
static WATERMARK: Mutex<Option<String>> = Mutex::new(None);

/// One test's hold on the shared services.
pub struct Lab {
    pub creds: &'static Credentials,
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

/// Waits for the suite's lock, makes sure every service is up, then hands out the credentials.
pub async fn lab() -> Lab {
    let serial = SERIAL.lock().await;
    wait_for_other_suites().await;
    let restored = tokio::task::spawn_blocking(restore).await.expect("restore does not panic");
    assert!(restored, "the test services could not be brought up (scripts/services.sh up)");
    let creds = CREDENTIALS.get_or_init(Credentials::create).await;
    Lab { creds, _serial: serial }
}

/// Test programs on this machine that a fault would break: the `tests/it` binary. (The bench
/// starts services of its own.)
fn other_suites() -> Vec<String> {
    let me = std::process::id().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()) && n != me))
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter_map(|cmd| {
            let exe = String::from_utf8_lossy(cmd.split(|b| *b == 0).next().unwrap_or_default()).into_owned();
            exe.contains("/deps/it-").then_some(exe)
        })
        .collect()
}

/// Waits (at most 30 minutes) while another suite uses the services.
async fn wait_for_other_suites() {
    let deadline = std::time::Instant::now() + Duration::from_secs(1800);
    let mut told = false;
    loop {
        let others = other_suites();
        if others.is_empty() {
            return;
        }
        if !told {
            eprintln!("[faults] waiting for {others:?} to finish: faults would break it");
            told = true;
        }
        assert!(std::time::Instant::now() < deadline, "{others:?} kept running for 30 minutes");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !restore() {
            eprintln!("[faults] WARNING: the services could not be restored; run scripts/services.sh up");
        }
    }
}

/// Undoes every fault this suite can leave behind, then starts whatever is down. Blocking.
fn restore() -> bool {
    let pid = FROZEN.swap(0, Ordering::SeqCst);
    if pid != 0 {
        let _ = std::process::Command::new("kill").args(["-CONT", &pid.to_string()]).status();
    }
    let watermark = WATERMARK.lock().map(|mut w| w.take()).unwrap_or(None);
    if let Some(term) = watermark {
        let expr = format!("vm_memory_monitor:set_vm_memory_high_watermark({term}).");
        let ok = std::process::Command::new("rabbitmqctl")
            .env("PATH", path())
            .args(["eval", &expr])
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            eprintln!("[faults] could not restore the memory watermark {term}");
        }
    }
    for _ in 0..2 {
        match std::process::Command::new("bash").arg(format!("{REPO}/scripts/services.sh")).arg("up").output() {
            Ok(o) if o.status.success() => return true,
            Ok(o) => eprintln!("[faults] services.sh up failed:\n{}", String::from_utf8_lossy(&o.stderr)),
            Err(e) => eprintln!("[faults] cannot run services.sh: {e}"),
        }
    }
    false
}

fn path() -> String {
    format!("{}:/usr/local/sbin:/usr/sbin:/sbin", std::env::var("PATH").unwrap_or_default())
}

/// Runs `rabbitmqctl` (the Debian wrapper, which switches to the rabbitmq user).
pub async fn rabbitmqctl(args: &[&str]) -> Result<String, String> {
    let run = tokio::process::Command::new("rabbitmqctl").env("PATH", path()).args(args).kill_on_drop(true).output();
    match tokio::time::timeout(Duration::from_secs(90), run).await {
        Err(_) => Err(format!("rabbitmqctl {args:?} did not finish in 90 s")),
        Ok(Err(e)) => Err(format!("rabbitmqctl {args:?}: {e}")),
        Ok(Ok(o)) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).trim().to_owned()),
        Ok(Ok(o)) => Err(format!(
            "rabbitmqctl {args:?}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )),
    }
}

/// Starts whatever is down and waits until it answers.
pub async fn services_up() {
    let out = tokio::process::Command::new("bash")
        .arg(format!("{REPO}/scripts/services.sh"))
        .arg("up")
        .output()
        .await
        .expect("run scripts/services.sh");
    assert!(out.status.success(), "scripts/services.sh up failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

pub async fn signal(pid: u32, sig: &str) {
    let status = tokio::process::Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()
        .await
        .expect("run kill");
    assert!(status.success(), "kill -{sig} {pid} failed");
}

/// Whether `pid` is gone (or a zombie nobody reaped).
pub fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().next()) == Some("Z"),
    }
}

pub async fn wait_exit(pid: u32, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    while !exited(pid) {
        assert!(tokio::time::Instant::now() < deadline, "process {pid} did not exit within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The OS pid of the RabbitMQ node (its Erlang VM).
pub async fn rabbit_pid() -> u32 {
    let out = rabbitmqctl(&["eval", "os:getpid()."]).await.expect("rabbitmqctl eval os:getpid()");
    out.trim_matches('"').parse().unwrap_or_else(|_| panic!("unexpected pid from rabbitmqctl: {out}"))
}

/// SIGSTOP to the broker's VM; [`thaw_rabbit`] (or the [`Lab`]) sends SIGCONT.
pub async fn freeze_rabbit() {
    let pid = rabbit_pid().await;
    FROZEN.store(pid, Ordering::SeqCst);
    signal(pid, "STOP").await;
}

pub async fn thaw_rabbit() {
    let pid = FROZEN.swap(0, Ordering::SeqCst);
    assert!(pid != 0, "the broker was not frozen");
    signal(pid, "CONT").await;
}

/// Raises (or clears) a memory alarm by moving the high watermark under the node's use.
pub async fn memory_alarm(on: bool) {
    if on {
        let term = rabbitmqctl(&["eval", "vm_memory_monitor:get_vm_memory_high_watermark()."])
            .await
            .expect("read the memory watermark");
        if let Ok(mut w) = WATERMARK.lock() {
            w.get_or_insert(term);
        }
        rabbitmqctl(&["eval", "vm_memory_monitor:set_vm_memory_high_watermark(0.00001)."])
            .await
            .expect("lower the memory watermark");
    } else {
        let term = WATERMARK.lock().ok().and_then(|mut w| w.take()).expect("an alarm was raised before");
        rabbitmqctl(&["eval", &format!("vm_memory_monitor:set_vm_memory_high_watermark({term}).")])
            .await
            .expect("restore the memory watermark");
    }
}

/// Whether the node reports a memory alarm now.
pub async fn memory_alarm_on() -> bool {
    rabbitmqctl(&["eval", "rabbit_alarm:get_alarms()."]).await.is_ok_and(|out| out.contains("memory"))
}

/// The pid of the SecantusDB server that `scripts/services.sh` started.
pub fn mongo_pid() -> u32 {
    let file = format!("{REPO}/.services/secantus.pid");
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{file}: {e}"));
    text.trim().parse().unwrap_or_else(|_| panic!("{file} holds no pid"))
}

/// Stops the MongoDB-wire server with `sig` and waits until it has exited.
pub async fn stop_mongo(sig: &str) {
    let pid = mongo_pid();
    signal(pid, sig).await;
    wait_exit(pid, Duration::from_secs(60)).await;
}
