//! Load on the gateway's HTTP API. Throughput and latency under load come from `wrk` (Debian's
//! package) driven by `submit.lua`, which gives every request its own task id and, for a fixed
//! rate, paces the requests. Fixed-count submissions (for the end-to-end and memory phases) are
//! made by concurrent reqwest clients. Plus the read-side helpers: statistics and task pages.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{StreamExt, stream};
use serde_json::{Value, json};

use crate::setup::Ctx;

/// What one wrk run measured. Latencies are of successful and failed requests alike.
#[derive(Debug, Clone)]
pub struct WrkOutcome {
    /// 2xx answers per second.
    pub ok_rate: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub requests: u64,
    pub errors: u64,
}

/// Runs wrk against `POST /tasks/submit` for `seconds` with `connections`, unpaced, or paced
/// to `rate` requests per second.
pub async fn wrk(
    ctx: &Ctx,
    base: &str,
    prefix: &str,
    connections: u32,
    seconds: u64,
    rate: Option<f64>,
) -> anyhow::Result<WrkOutcome> {
    let threads = ctx.plan.wrk_threads.min(connections).max(1);
    let output = tokio::process::Command::new("wrk")
        .arg(format!("-t{threads}"))
        .arg(format!("-c{connections}"))
        .arg(format!("-d{seconds}s"))
        // A slow answer is latency to measure, not a socket error.
        .arg("--timeout")
        .arg("30s")
        .arg("-s")
        .arg(&ctx.lua_script)
        .arg(base)
        .env("WAG_PREFIX", prefix)
        .env("WAG_TOPIC", "say_hello")
        .env("WAG_RATE", rate.map(|r| format!("{r:.3}")).unwrap_or_else(|| "0".into()))
        .env("WAG_THREADS", threads.to_string())
        .output()
        .await
        .context("running wrk")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("wrk failed ({}): {}{}", output.status, stdout, String::from_utf8_lossy(&output.stderr));
    }
    let line = stdout.lines().find(|l| l.starts_with("WRK_RESULT ")).context("wrk printed no WRK_RESULT line")?;
    let field = |key: &str| -> anyhow::Result<u64> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no {key} in {line:?}"))
    };
    let requests = field("requests")?;
    let errors = field("status_errors")?
        + field("connect_errors")?
        + field("read_errors")?
        + field("write_errors")?
        + field("timeouts")?;
    let status_errors = field("status_errors")?;
    let seconds = field("duration_us")? as f64 / 1e6;
    let outcome = WrkOutcome {
        ok_rate: requests.saturating_sub(status_errors) as f64 / seconds,
        p50_ms: field("p50_us")? as f64 / 1e3,
        p99_ms: field("p99_us")? as f64 / 1e3,
        requests,
        errors,
    };
    // A few errors under overload can be load shedding; many mean the measurement is void.
    if outcome.requests == 0 || outcome.errors * 100 > outcome.requests {
        bail!("wrk: {} errors in {} requests: {line}", outcome.errors, outcome.requests);
    }
    Ok(outcome)
}

/// Submits `n` tasks of `topic` with ids `{prefix}-{i}` from `ctx.plan.submit_concurrency`
/// concurrent clients; every one must be answered 200.
pub async fn submit_many(ctx: &Ctx, base: &str, prefix: &str, topic: &str, n: usize) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let url = format!("{base}/tasks/submit");
    let failures: Vec<String> = stream::iter(0..n)
        .map(|i| {
            let id = format!("{prefix}-{i}");
            let body = json!({"task_id": id, "worker_id": "bench", "topic": topic, "variables": {"name": id}});
            let request = ctx.http.post(&url).json(&body);
            async move {
                match request.send().await {
                    Ok(r) if r.status().is_success() => None,
                    Ok(r) => Some(format!("{}: {}", r.status(), r.text().await.unwrap_or_default())),
                    Err(e) => Some(e.to_string()),
                }
            }
        })
        .buffer_unordered(ctx.plan.submit_concurrency)
        .filter_map(|f| async move { f })
        .collect()
        .await;
    if let Some(first) = failures.first() {
        bail!("{} of {n} submits failed; first: {first}", failures.len());
    }
    Ok(started.elapsed())
}

/// How long one submit takes right after a wrk phase. wrk closes its connections with requests
/// in flight; the gateway may need a while to recover from those cancelled requests, and the
/// next phase must not start inside that window.
pub async fn settle(ctx: &Ctx, base: &str, task_id: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let body = json!({"task_id": task_id, "worker_id": "bench", "topic": "say_hello"});
    let answer = ctx.http.post(format!("{base}/tasks/submit")).json(&body).timeout(Duration::from_secs(120)).send();
    answer.await.and_then(|r| r.error_for_status()).context("the submit after a load phase")?;
    Ok(started.elapsed())
}

/// `GET /tasks/statistics`.
pub async fn statistics(ctx: &Ctx, base: &str) -> anyhow::Result<Value> {
    let r = ctx.http.get(format!("{base}/tasks/statistics")).send().await?.error_for_status()?;
    Ok(r.json().await?)
}

/// `by_status.<status>` of a statistics answer (0 when absent).
pub fn count(stats: &Value, status: &str) -> u64 {
    stats["by_status"][status].as_u64().unwrap_or(0)
}

/// Every task with `status` (and `topic`), newest first, through cursor pagination.
pub async fn all_tasks(ctx: &Ctx, base: &str, status: &str, topic: &str) -> anyhow::Result<Vec<Value>> {
    let mut tasks = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut query = vec![("status", status.to_owned()), ("topic", topic.to_owned()), ("limit", "500".into())];
        if let Some(c) = &cursor {
            query.push(("cursor", c.clone()));
        }
        let page: Value =
            ctx.http.get(format!("{base}/tasks")).query(&query).send().await?.error_for_status()?.json().await?;
        tasks.extend(page["tasks"].as_array().cloned().unwrap_or_default());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return Ok(tasks),
        }
    }
}

/// The sum of a Prometheus sample family over the series whose labels include all of `labels`
/// (`key="value"` pairs); `None` when the family is absent.
pub fn metric_sum(text: &str, family: &str, labels: &[&str]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| l.starts_with(family)) {
        let (series, value) = line.rsplit_once(' ')?;
        let rest = &series[family.len()..];
        if !(rest.is_empty() || rest.starts_with('{')) || !labels.iter().all(|l| rest.contains(l)) {
            continue;
        }
        *found.get_or_insert(0.0) += value.parse::<f64>().ok()?;
    }
    found
}

/// `GET /metrics`.
pub async fn metrics(ctx: &Ctx, base: &str) -> anyhow::Result<String> {
    Ok(ctx.http.get(format!("{base}/metrics")).send().await?.error_for_status()?.text().await?)
}

/// Waits until the gateway's own counters say `n` attempts of `topic` succeeded. It reads
/// `/metrics` (in-process counters) rather than `/tasks/statistics`, whose aggregation over every
/// task would load the database under test. Fails on any failed attempt, when the count stops
/// moving for `stall`, or after `within`.
pub async fn wait_for_successes(
    ctx: &Ctx,
    base: &str,
    topic: &str,
    n: usize,
    within: Duration,
    stall: Duration,
) -> anyhow::Result<()> {
    let (topic_label, started) = (format!("topic=\"{topic}\""), Instant::now());
    let (mut last, mut last_change) = (-1.0, Instant::now());
    loop {
        let text = metrics(ctx, base).await?;
        let outcome = |o: &str| {
            metric_sum(&text, "gateway_task_outcomes_total", &[&topic_label, &format!("outcome=\"{o}\"")])
                .unwrap_or(0.0)
        };
        let (succeeded, failed) = (outcome("succeeded"), outcome("failed") + outcome("retrying"));
        if failed > 0.0 {
            bail!("{failed} {topic} attempts failed or are retrying; {succeeded} succeeded");
        }
        if succeeded >= n as f64 {
            return Ok(());
        }
        if succeeded != last {
            (last, last_change) = (succeeded, Instant::now());
        }
        if last_change.elapsed() > stall || started.elapsed() > within {
            bail!(
                "{topic}: {succeeded} of {n} succeeded after {:.0} s, {:.0} s without progress",
                started.elapsed().as_secs_f64(),
                last_change.elapsed().as_secs_f64()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::metric_sum;

    #[test]
    fn metric_sum_adds_the_matching_series_only() {
        let text = "# HELP x\ngateway_task_outcomes_total{topic=\"a\",outcome=\"succeeded\"} 3\n\
                    gateway_task_outcomes_total{topic=\"a\",outcome=\"failed\"} 1\n\
                    gateway_task_outcomes_total{topic=\"b\",outcome=\"succeeded\"} 4\n\
                    gateway_task_outcomes_total_created 5\n";
        let f = "gateway_task_outcomes_total";
        assert_eq!(metric_sum(text, f, &["topic=\"a\"", "outcome=\"succeeded\""]), Some(3.0));
        assert_eq!(metric_sum(text, f, &["outcome=\"succeeded\""]), Some(7.0));
        assert_eq!(metric_sum(text, "gateway_tasks_in_flight", &[]), None);
    }
}
