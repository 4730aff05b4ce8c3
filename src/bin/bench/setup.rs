//! What one benchmark invocation shares: the plan (counts and durations), connections to the
//! services, the paths of the gateway binary and the wrk script, a unique name prefix, and the list
//! of everything created so far, which [`Ctx::cleanup`] removes at the end whatever happened. The plan itself is in `setup/plan`.

mod plan;

use std::{
    path::{Path, PathBuf},
    sync::Mutex,
    time::Duration,
};

use anyhow::Context;
use lapin::{
    Connection, ConnectionProperties,
    options::{ExchangeDeleteOptions, QueueDeleteOptions},
};
use worker_api_gateway::broker::Topology;

pub use plan::{BATCH, Phase, Plan};

enum Leftover {
    Database(String),
    Queue(String),
    Exchange(String),
}

pub struct Ctx {
    pub plan: Plan,
    /// Prefix of every database, exchange, queue and task id this invocation creates.
    pub run_id: String,
    /// Scratch folder: wrk script, topic files, gateway logs.
    pub tmp: PathBuf,
    pub gateway_bin: PathBuf,
    /// The repository's topic files.
    pub repo_topics: PathBuf,
    pub lua_script: PathBuf,
    pub mongo_uri: String,
    pub rabbit_url: String,
    pub mongo: mongodb::Client,
    pub http: reqwest::Client,
    leftovers: Mutex<Vec<Leftover>>,
}

fn env(var: &str) -> anyhow::Result<String> {
    std::env::var(var)
        .with_context(|| format!("{var} is not set: `scripts/services.sh up` then `source .services/env`"))
}

/// `uri` with retryable writes turned off, for the raw limits and every gateway alike. SecantusDB
/// keeps a record of each retryable write for 30 minutes and, past 10 000 records, sorts them all
/// on every write: a server that has taken 10 000 writes in the last half hour does ten times fewer
/// single inserts (measured: 44 against 241 docs/s on the same server). With them on, every run but
/// a fresh server's first measured that sort, not the gateway. Real MongoDB keeps one such record
/// per session; the gateway's own default stays on.
fn without_retryable_writes(uri: &str) -> String {
    let (base, query) = uri.split_once('?').unwrap_or((uri, ""));
    let kept: Vec<&str> =
        query.split('&').filter(|p| !p.is_empty() && !p.to_ascii_lowercase().starts_with("retrywrites=")).collect();
    let hosts_and_path = base.split_once("://").map_or(base, |(_, rest)| rest);
    let slash = if hosts_and_path.contains('/') { "" } else { "/" };
    let mut params = kept.join("&");
    if !params.is_empty() {
        params.push('&');
    }
    format!("{base}{slash}?{params}retryWrites=false")
}

impl Ctx {
    pub async fn new(plan: Plan, gateway: Option<PathBuf>) -> anyhow::Result<Self> {
        let gateway_bin = match gateway {
            Some(path) => path,
            None => std::env::current_exe()?.with_file_name("worker-api-gateway"),
        };
        anyhow::ensure!(
            gateway_bin.is_file(),
            "no gateway binary at {} (cargo build --release --bins)",
            gateway_bin.display()
        );
        which_wrk()?;
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let run_id = format!("wagbench_{}_{:x}", std::process::id(), secs & 0xff_ffff);
        let tmp = std::env::temp_dir().join(&run_id);
        std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let lua_script = tmp.join("submit.lua");
        std::fs::write(&lua_script, include_str!("submit.lua"))?;
        let mongo_uri = without_retryable_writes(&env("MONGODB_URI")?);
        let mut options = mongodb::options::ClientOptions::parse(&mongo_uri).await.context("MONGODB_URI")?;
        // The gateway's own pool size, so the raw limits are measured the way the gateway connects.
        options.max_pool_size = Some(10);
        options.server_selection_timeout = Some(Duration::from_secs(10));
        // The gateway's write concern too: the limits are for writes as durable as its own.
        options.write_concern = Some(worker_api_gateway::store::durable_write_concern());
        let mongo = mongodb::Client::with_options(options)?;
        mongo.database("admin").run_command(bson::doc! {"ping": 1}).await.context("MongoDB does not answer")?;
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?;
        eprintln!("[bench] prefix {run_id}, scratch {}, gateway {}", tmp.display(), gateway_bin.display());
        Ok(Self {
            plan,
            run_id,
            tmp,
            gateway_bin,
            repo_topics: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("topics"),
            lua_script,
            mongo_uri,
            rabbit_url: env("RABBITMQ_URL")?,
            mongo,
            http,
            leftovers: Mutex::new(Vec::new()),
        })
    }

    /// A name under this invocation's prefix (databases allow 63 bytes; ours stay far below).
    pub fn name(&self, suffix: &str) -> String {
        format!("{}_{suffix}", self.run_id)
    }

    pub fn remember_database(&self, name: &str) {
        self.push(Leftover::Database(name.to_owned()));
    }

    pub fn remember_queue(&self, name: &str) {
        self.push(Leftover::Queue(name.to_owned()));
    }

    /// A gateway's exchange and every queue and exchange it derives from it for `topics`.
    pub fn remember_topology(&self, exchange: &str, topics: &[String]) {
        let t = Topology { exchange: exchange.to_owned(), delivery_limit: 1 };
        for topic in topics {
            self.push(Leftover::Queue(t.queue(topic)));
        }
        self.push(Leftover::Queue(t.dead_queue()));
        self.push(Leftover::Exchange(t.dead_letter_exchange()));
        self.push(Leftover::Exchange(exchange.to_owned()));
    }

    fn push(&self, item: Leftover) {
        if let Ok(mut list) = self.leftovers.lock() {
            list.push(item);
        }
    }

    /// Drops the databases, deletes the queues and exchanges, and removes the scratch folder
    /// unless `keep_scratch` (after a failure, for the gateway logs). Best effort: a failure is
    /// reported, never fatal.
    pub async fn cleanup(&self, keep_scratch: bool) {
        let items: Vec<Leftover> = self.leftovers.lock().map(|mut l| std::mem::take(&mut *l)).unwrap_or_default();
        let mut broker = Vec::new();
        for item in items {
            match item {
                Leftover::Database(name) => {
                    // A second try: the first may meet a pooled connection the server closed.
                    let mut result = self.mongo.database(&name).drop().await;
                    if result.is_err() {
                        result = self.mongo.database(&name).drop().await;
                    }
                    if let Err(e) = result {
                        eprintln!("[bench] cleanup: dropping database {name}: {e}");
                    }
                }
                other => broker.push(other),
            }
        }
        if let Err(e) = self.delete_broker_objects(&broker).await {
            eprintln!("[bench] cleanup: RabbitMQ: {e:#}");
        }
        // A killed gateway's last writes can still be queued in the server and recreate its
        // database after the drop: sweep once more for anything under this prefix.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let filter = bson::doc! {"name": {"$regex": format!("^{}_", self.run_id)}};
        match self.mongo.list_database_names().filter(filter).await {
            Ok(names) => {
                for name in names {
                    if let Err(e) = self.mongo.database(&name).drop().await {
                        eprintln!("[bench] cleanup: dropping database {name}: {e}");
                    }
                }
            }
            Err(e) => eprintln!("[bench] cleanup: listing databases: {e}"),
        }
        if keep_scratch {
            eprintln!("[bench] gateway logs kept in {}", self.tmp.display());
        } else if let Err(e) = std::fs::remove_dir_all(&self.tmp) {
            eprintln!("[bench] cleanup: removing {}: {e}", self.tmp.display());
        }
    }

    async fn delete_broker_objects(&self, items: &[Leftover]) -> anyhow::Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        let conn = Connection::connect(&self.rabbit_url, ConnectionProperties::default()).await?;
        let mut channel = conn.create_channel().await?;
        for item in items {
            let result = match item {
                Leftover::Queue(q) => {
                    channel.queue_delete(q.as_str().into(), QueueDeleteOptions::default()).await.map(drop)
                }
                Leftover::Exchange(x) => {
                    channel.exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default()).await
                }
                Leftover::Database(_) => Ok(()),
            };
            if let Err(e) = result {
                eprintln!("[bench] cleanup: {e}");
                // A refused operation closes the channel; carry on with a new one.
                channel = conn.create_channel().await?;
            }
        }
        let _ = conn.close(200, "bench done".into()).await;
        Ok(())
    }
}

fn which_wrk() -> anyhow::Result<()> {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| Path::new(&dir).join("wrk").is_file()))
        .unwrap_or(false);
    anyhow::ensure!(found, "wrk is not on the PATH: apt-get install wrk (scripts/bench.sh installs it)");
    Ok(())
}

/// The 1-minute load average: the machine is shared, and a busy one explains odd figures.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::without_retryable_writes;

    #[test]
    fn retryable_writes_are_turned_off_whatever_the_uri_says() {
        for (uri, expected) in [
            ("mongodb://127.0.0.1:27017", "mongodb://127.0.0.1:27017/?retryWrites=false"),
            ("mongodb://h:1/db", "mongodb://h:1/db?retryWrites=false"),
            ("mongodb://u:p@h:1/?w=1&retryWrites=true", "mongodb://u:p@h:1/?w=1&retryWrites=false"),
        ] {
            assert_eq!(without_retryable_writes(uri), expected);
        }
    }
}
