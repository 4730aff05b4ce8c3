//! Benchmark: latency from process-instance start to task completion at a real Camunda engine,
//! for N instances of `say_hello`, in pull mode (the gateway fetches and locks) and in report
//! mode (a seed-style worker fetches, submits, and the gateway reports). Latency is read from
//! Camunda's own history (instance startTime → endTime). Prints median and p95; asserts nothing.
//!
//! Needs the test services: `scripts/services.sh up && source .services/env`, then
//! `cargo run --release --bin camunda_latency -- [N]` (default 100).

use std::{collections::HashMap, path::PathBuf, time::Duration};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use worker_api_gateway::{camunda::variables, config::Settings, startup::Application, topics::JsonVariables};

struct Engine {
    base: String,
    http: reqwest::Client,
}

impl Engine {
    async fn post(&self, path: &str, body: Value) -> Result<Value> {
        let r = self.http.post(format!("{}{path}", self.base)).json(&body).send().await?;
        let status = r.status();
        let text = r.text().await?;
        if !status.is_success() {
            bail!("{path}: {status} {text}");
        }
        Ok(if text.is_empty() { Value::Null } else { serde_json::from_str(&text)? })
    }

    async fn get(&self, path: &str) -> Result<Value> {
        Ok(self.http.get(format!("{}{path}", self.base)).send().await?.json().await?)
    }

    async fn deploy(&self, topic: &str) -> Result<String> {
        let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bpmn/say_hello.bpmn");
        let key = format!("{topic}_process");
        let xml = std::fs::read_to_string(fixture)?
            .replace("\"say_hello_process\"", &format!("\"{key}\""))
            .replace("camunda:topic=\"say_hello\"", &format!("camunda:topic=\"{topic}\""));
        let form = reqwest::multipart::Form::new()
            .text("deployment-name", key.clone())
            .part("data", reqwest::multipart::Part::text(xml).file_name(format!("{key}.bpmn")));
        let r = self.http.post(format!("{}/deployment/create", self.base)).multipart(form).send().await?;
        if !r.status().is_success() {
            bail!("deploy: {}", r.text().await?);
        }
        Ok(key)
    }

    /// (startTime, endTime) of every finished instance of `key`, in ms.
    async fn finished(&self, key: &str) -> Result<Vec<i64>> {
        let list = self
            .get(&format!("/history/process-instance?processDefinitionKey={key}&finished=true&maxResults=100000"))
            .await?;
        let parse = |v: &Value| {
            chrono::DateTime::parse_from_str(v.as_str().unwrap_or(""), "%Y-%m-%dT%H:%M:%S%.3f%z")
                .map(|t| t.timestamp_millis())
        };
        Ok(list
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| Some(parse(&i["endTime"]).ok()? - parse(&i["startTime"]).ok()?))
            .collect())
    }
}

fn var(name: &str) -> Result<String> {
    std::env::var(name)
        .with_context(|| format!("{name} is not set: run `scripts/services.sh up && source .services/env`"))
}

async fn gateway(topic: &str, topic_file: &str, camunda: &str) -> Result<(Application, PathBuf)> {
    let dir = std::env::temp_dir().join(format!("camunda-latency-{topic}"));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(format!("{topic}.toml")), topic_file)?;
    let vars: HashMap<String, String> = [
        ("PORT", "0".to_owned()),
        ("HOST", "127.0.0.1".to_owned()),
        ("MONGODB_URI", var("MONGODB_URI")?),
        ("MONGODB_DATABASE", topic.to_owned()),
        ("MONGODB_MAX_POOL_SIZE", "4".to_owned()),
        ("RABBITMQ_URL", var("RABBITMQ_URL")?),
        ("RABBITMQ_EXCHANGE", topic.to_owned()),
        ("TOPICS_DIR", dir.display().to_string()),
        ("CAMUNDA_URL", camunda.to_owned()),
        ("RELAY_INTERVAL_MS", "200".to_owned()),
        // A measurement on loopback, not a deployment.
        ("AUTH_MODE", "open".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    Ok((Application::build(Settings::from_vars(&vars)?).await?, dir))
}

fn summary(mut ms: Vec<i64>) -> String {
    ms.sort_unstable();
    let at = |q: f64| ms.get(((ms.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(0);
    format!("n={} median={} ms p95={} ms max={} ms", ms.len(), at(0.5), at(0.95), ms.last().copied().unwrap_or(0))
}

async fn wait_all(engine: &Engine, key: &str, n: usize) -> Result<Vec<i64>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        let done = engine.finished(key).await?;
        if done.len() >= n {
            return Ok(done);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("only {} of {n} instances finished", done.len());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn start_all(engine: &Engine, key: &str, n: usize) -> Result<()> {
    for i in 0..n {
        let vars = json!({"name": format!("n{i}")});
        let vars = variables::to_typed_map(vars.as_object().context("object")?, JsonVariables::default());
        engine.post(&format!("/process-definition/key/{key}/start"), json!({"variables": vars})).await?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let n: usize = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(100);
    let camunda = var("CAMUNDA_TEST_URL")?;
    let engine = Engine { base: camunda.clone(), http: reqwest::Client::new() };
    let stamp = std::process::id();

    // Pull mode: the gateway fetches and locks.
    let topic = format!("lat_pull_{stamp}");
    let key = engine.deploy(&topic).await?;
    let file = "handler = \"native\"\nnative = \"say_hello\"\nsource = \"camunda\"\nconcurrency = 16\n";
    let (app, dir) = gateway(&topic, file, &camunda).await?;
    let stop = app.stop_token();
    let running = tokio::spawn(app.run_until_stopped());
    start_all(&engine, &key, n).await?;
    let pull = wait_all(&engine, &key, n).await?;
    stop.cancel();
    running.await??;
    let _ = std::fs::remove_dir_all(dir);

    // Report mode: a seed-style worker fetches, submits, and the gateway completes.
    let topic = format!("lat_report_{stamp}");
    let key = engine.deploy(&topic).await?;
    let file = "handler = \"native\"\nnative = \"say_hello\"\nconcurrency = 16\n";
    let (app, dir) = gateway(&topic, file, &camunda).await?;
    let submit_url = format!("http://127.0.0.1:{}/tasks/submit", app.port());
    let stop = app.stop_token();
    let running = tokio::spawn(app.run_until_stopped());
    let worker_engine = Engine { base: camunda.clone(), http: reqwest::Client::new() };
    let worker_topic = topic.clone();
    let worker_stop = stop.clone();
    let worker = tokio::spawn(async move {
        let http = reqwest::Client::new();
        while !worker_stop.is_cancelled() {
            let body = json!({"workerId": "seed-worker", "maxTasks": 20, "asyncResponseTimeout": 1000,
                "topics": [{"topicName": worker_topic, "lockDuration": 60_000}]});
            let Ok(tasks) = worker_engine.post("/external-task/fetchAndLock", body).await else { continue };
            for t in tasks.as_array().into_iter().flatten() {
                let vars = t["variables"].as_object().map(variables::from_typed_map).unwrap_or_default();
                let submission =
                    json!({"task_id": t["id"], "worker_id": "seed-worker", "topic": worker_topic, "variables": vars});
                let _ = http.post(&submit_url).json(&submission).send().await;
            }
        }
    });
    start_all(&engine, &key, n).await?;
    let report = wait_all(&engine, &key, n).await?;
    stop.cancel();
    let _ = worker.await;
    running.await??;
    let _ = std::fs::remove_dir_all(dir);

    let mongo = mongodb::Client::with_uri_str(var("MONGODB_URI")?).await?;
    for db in [format!("lat_pull_{stamp}"), format!("lat_report_{stamp}")] {
        let _ = mongo.database(&db).drop().await;
    }
    println!("| mode | process start → task completed (Camunda history) |");
    println!("|---|---|");
    println!("| pull (gateway fetchAndLock) | {} |", summary(pull));
    println!("| report (seed worker submits, gateway completes) | {} |", summary(report));
    Ok(())
}
