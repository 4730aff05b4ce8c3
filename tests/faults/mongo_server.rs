//! Stopping and restarting the MongoDB-wire server (SecantusDB). The server to stop is the one
//! listening on `MONGODB_URI`'s port, found through `/proc` — not a pid file, since another
//! checkout's `scripts/services.sh` may have started it — and it is restarted with exactly the
//! command line and working directory it had, so it comes back on the same data.

use std::{
    os::unix::process::CommandExt,
    path::PathBuf,
    process::Stdio,
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::services::{env, signal, wait_exit};

/// A server this suite stopped and owes a restart.
#[derive(Debug, Clone)]
struct Stopped {
    argv: Vec<String>,
    cwd: PathBuf,
}

static STOPPED: Mutex<Option<Stopped>> = Mutex::new(None);

/// The MongoDB port of `MONGODB_URI` (27017 when it names none).
pub fn port() -> u16 {
    let uri = env("MONGODB_URI");
    let host = uri.trim_start_matches("mongodb://").rsplit('@').next().unwrap_or_default();
    let host = host.split(['/', '?', ',']).next().unwrap_or_default();
    host.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).unwrap_or(27017)
}

/// The pid of the process listening on `127.0.0.1:port` (via `/proc/net/tcp*` socket inodes).
pub fn listening_pid(port: u16) -> Option<u32> {
    let want = format!(":{port:04X}");
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(table).unwrap_or_default().lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // local_address is col 1, state col 3 (0A = LISTEN), inode col 9.
            if cols.len() > 9 && cols[1].ends_with(&want) && cols[3] == "0A" {
                inodes.push(format!("socket:[{}]", cols[9]));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    for entry in std::fs::read_dir("/proc").ok()?.filter_map(Result::ok) {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else { continue };
        for fd in fds.filter_map(Result::ok) {
            if std::fs::read_link(fd.path()).is_ok_and(|l| inodes.iter().any(|i| l.as_os_str() == i.as_str())) {
                return Some(pid);
            }
        }
    }
    None
}

/// Stops the server with `sig` (TERM: clean shutdown; KILL: none) and waits for it to exit.
pub async fn stop(sig: &str) {
    let port = port();
    let pid = listening_pid(port).unwrap_or_else(|| panic!("nothing listens on MongoDB's port {port}"));
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("the server's command line");
    let argv: Vec<String> =
        cmdline.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    assert!(
        argv.iter().any(|a| a.contains("secantusd")),
        "the server on port {port} is not SecantusDB ({argv:?}); the suite only stops the test server"
    );
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).expect("the server's working directory");
    if let Ok(mut stopped) = STOPPED.lock() {
        *stopped = Some(Stopped { argv, cwd });
    }
    signal(pid, sig).await;
    wait_exit(pid, Duration::from_secs(60)).await;
}

/// Starts the server stopped by [`stop`] again and waits until its port accepts connections.
/// Blocking (it also runs from `Drop`). Returns false if there was nothing to restart.
pub fn restart() -> bool {
    let Some(stopped) = STOPPED.lock().ok().and_then(|mut s| s.take()) else { return false };
    let log = std::fs::OpenOptions::new().create(true).append(true).open(stopped.cwd.join("secantus.log"));
    let (out, err) = match log.and_then(|f| Ok((f.try_clone()?, f))) {
        Ok((a, b)) => (Stdio::from(a), Stdio::from(b)),
        Err(_) => (Stdio::null(), Stdio::null()),
    };
    // Its own process group, so it outlives this test process like the one services.sh started.
    let mut child = std::process::Command::new(&stopped.argv[0])
        .args(&stopped.argv[1..])
        .current_dir(&stopped.cwd)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("restart the MongoDB-wire server");
    let pid_file = stopped.cwd.join("secantus.pid");
    if pid_file.exists() {
        let _ = std::fs::write(&pid_file, format!("{}\n", child.id()));
    }
    // Reaped whenever it ends (by a later fault, or never while this process lives).
    std::thread::spawn(move || child.wait());
    let deadline = Instant::now() + Duration::from_secs(60);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port()));
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err() {
        assert!(Instant::now() < deadline, "the MongoDB-wire server did not come back within 60 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    true
}

/// [`restart`] off the async runtime, then waits until the gateway sees the server again.
pub async fn bring_back(gw: &mut crate::gateway::Gateway) -> Duration {
    let started = Instant::now();
    let restarted = tokio::task::spawn_blocking(restart).await.expect("restart does not panic");
    assert!(restarted, "the server was not stopped by this suite");
    gw.wait_health("MongoDB back", Duration::from_secs(60), |h| h["mongodb"] == "healthy").await;
    started.elapsed()
}
