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

pub use crate::common::{env, unique};

pub const REPO: &str = env!("CARGO_MANIFEST_DIR");

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
    /// A RabbitMQ user and a MongoDB user of this process's own (`faults_<pid>`), so that two
    /// copies of the suite never change each other's passwords.
    async fn create() -> Self {
        let user = format!("faults_{}", std::process::id());
        let rabbit = url::Url::parse(&env("RABBITMQ_URL")).expect("RABBITMQ_URL is a URL");
        let rabbit_host =
            format!("{}:{}", rabbit.host_str().expect("RABBITMQ_URL has a host"), rabbit.port().unwrap_or(5672));
        let rabbit_password = random_secret("RmqPw");
        rabbitmqctl(&["add_user", &user, &rabbit_password]).await.expect("rabbitmqctl add_user");
        rabbitmqctl(&["set_permissions", "-p", "/", &user, ".*", ".*", ".*"]).await.expect("set_permissions");

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
        sweep_leftovers(&client).await;
        let create = bson::doc! {"createUser": &user, "pwd": &mongo_password, "roles": ["root"]};
        client.database("admin").run_command(create).await.expect("createUser on the MongoDB-wire server");
        let mongo_uri = format!("mongodb://{user}:{mongo_password}@{mongo_host}/?authSource=admin");
        let authed = mongodb::Client::with_uri_str(&mongo_uri).await.expect("MongoDB client with credentials");
        authed
            .database("admin")
            .run_command(bson::doc! {"ping": 1})
            .await
            .expect("the MongoDB-wire server accepts the suite's user and password");

        let camunda_password = random_secret("CamPw");
        let api_key = random_secret("ApiKey");
        let secrets = vec![rabbit_password.clone(), mongo_password.clone(), camunda_password.clone(), api_key.clone()];
        Self {
            rabbit_url: format!("amqp://{user}:{rabbit_password}@{rabbit_host}/%2f"),
            mongo_uri,
            mongo_plain,
            camunda_password,
            api_key,
            secrets,
        }
    }
}

/// Whether a `faults_<pid>_…` name belongs to a run of this suite that has ended.
fn dead_run(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("faults_") else { return false };
    let pid = rest.split(['_', '.']).next().and_then(|p| p.parse::<u32>().ok());
    pid.is_some_and(|pid| pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists())
}

/// Drops what ended runs of this suite left behind (a failed test skips its clean-up):
/// databases, queues and users named `faults_<pid>…` whose process is gone.
async fn sweep_leftovers(client: &mongodb::Client) {
    for name in client.list_database_names().await.unwrap_or_default() {
        if dead_run(&name) {
            let _ = client.database(&name).drop().await;
        }
    }
    let admin = client.database("admin");
    if let Ok(info) = admin.run_command(bson::doc! {"usersInfo": 1}).await {
        for user in info
            .get_array("users")
            .map(|u| u.iter().filter_map(|u| u.as_document()).collect())
            .unwrap_or_else(|_| Vec::new())
        {
            if let Ok(name) = user.get_str("user")
                && dead_run(name)
            {
                let _ = admin.run_command(bson::doc! {"dropUser": name}).await;
            }
        }
    }
    let quiet = ["--quiet", "--no-table-headers"];
    let queues = rabbitmqctl(&["list_queues", quiet[0], quiet[1], "name"]).await.unwrap_or_default();
    for queue in queues.lines().map(str::trim).filter(|q| dead_run(q)) {
        let _ = rabbitmqctl(&["delete_queue", queue]).await;
    }
    let users = rabbitmqctl(&["list_users", quiet[0], quiet[1]]).await.unwrap_or_default();
    for user in users.lines().filter_map(|l| l.split_whitespace().next()).filter(|u| dead_run(u)) {
        let _ = rabbitmqctl(&["delete_user", user]).await;
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
    _machine: MachineLock,
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

/// Holds an exclusive `flock` on a machine-wide file through a `flock … cat` child: two copies
/// of this suite (say, two checkouts) never inject faults at once. If this process dies, the
/// child's stdin closes, `cat` ends and the lock is free.
struct MachineLock {
    _child: tokio::process::Child,
}

impl MachineLock {
    async fn take() -> Self {
        use tokio::io::AsyncBufReadExt;
        let file = std::env::temp_dir().join("worker-api-gateway-faults.lock");
        let mut child = tokio::process::Command::new("flock")
            .arg(&file)
            .args(["sh", "-c", "echo locked; exec cat"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("run flock (util-linux)");
        let stdout = child.stdout.take().expect("flock's stdout is piped");
        let mut line = String::new();
        let mut reader = tokio::io::BufReader::new(stdout);
        let mut told = false;
        loop {
            match tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line)).await {
                Ok(Ok(_)) if line.trim() == "locked" => return Self { _child: child },
                Ok(other) => panic!("flock {} failed: {other:?}", file.display()),
                Err(_) if !told => {
                    eprintln!("[faults] waiting for another fault suite to release {}", file.display());
                    told = true;
                }
                Err(_) => {}
            }
        }
    }
}

/// Waits for the suite's locks, makes sure every service is up, then hands out the credentials.
pub async fn lab() -> Lab {
    let serial = SERIAL.lock().await;
    let machine = MachineLock::take().await;
    wait_for_other_suites().await;
    let restored = tokio::task::spawn_blocking(restore).await.expect("restore does not panic");
    assert!(restored, "the test services could not be brought up (scripts/services.sh up)");
    let creds = CREDENTIALS.get_or_init(Credentials::create).await;
    Lab { creds, _machine: machine, _serial: serial }
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
    crate::mongo_server::restart();
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
