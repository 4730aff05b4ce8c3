//! Open-loop load for the overload phase: submissions sent on a fixed schedule whatever the
//! gateway answers, which is what a crowd of independent clients does (wrk is closed-loop: a
//! slow gateway slows its clients down, so it cannot offer more than the gateway takes). Each
//! request's latency runs from its scheduled send time, so a request that waited for a free
//! client slot counts that wait (no coordinated omission). Answers are told apart by status:
//! 200 admitted, 503 shed, 429 rate-limited; latency percentiles are of admitted requests.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::bail;
use serde_json::json;
use tokio::{sync::Semaphore, task::JoinSet};

use crate::report::percentile;

#[derive(Debug, Clone)]
pub struct OpenLoopOutcome {
    /// Requests scheduled per second.
    pub offered_rate: f64,
    /// 200 answers per second of the phase.
    pub admitted_rate: f64,
    pub admitted: u64,
    pub shed: u64,
    pub limited: u64,
    /// Admitted requests' latency, from their scheduled send.
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Shed answers' p99: how fast a refusal comes.
    pub shed_p99_ms: f64,
}

/// Sends `rate` submissions a second for `seconds` to `base`, with at most `in_flight` at once
/// (connections, for HTTP/1.1), and waits for every answer. Fails on any answer other than 200,
/// 429 and 503, or on a transport error: those are not overload handling.
pub async fn run(
    base: &str,
    prefix: &str,
    rate: f64,
    seconds: u64,
    in_flight: usize,
) -> anyhow::Result<OpenLoopOutcome> {
    let client =
        reqwest::Client::builder().pool_max_idle_per_host(in_flight).timeout(Duration::from_secs(60)).build()?;
    let url = Arc::new(format!("{base}/tasks/submit"));
    let slots = Arc::new(Semaphore::new(in_flight));
    let total = (rate * seconds as f64).round() as u64;
    let started = Instant::now();
    let mut answers = JoinSet::new();
    for i in 0..total {
        let due = started + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let slot = slots.clone().acquire_owned().await?;
        let (client, url) = (client.clone(), url.clone());
        let id = format!("{prefix}-{i}");
        answers.spawn(async move {
            let body = json!({"task_id": id, "worker_id": "bench", "topic": "say_hello", "variables": {"name": id}});
            let answer = client.post(url.as_str()).json(&body).send().await;
            let took = due.elapsed();
            drop(slot);
            answer.map(|r| (r.status().as_u16(), took))
        });
    }
    let sending = started.elapsed().as_secs_f64();
    let (mut admitted, mut shed, mut limited) = (Vec::new(), Vec::new(), 0u64);
    while let Some(joined) = answers.join_next().await {
        match joined? {
            Ok((200, took)) => admitted.push(took.as_secs_f64() * 1e3),
            Ok((503, took)) => shed.push(took.as_secs_f64() * 1e3),
            Ok((429, _)) => limited += 1,
            Ok((status, _)) => bail!("a submit was answered {status}"),
            Err(e) => bail!("a submit failed: {e}"),
        }
    }
    // Admitted per second until the last answer, so a backlog drained after the schedule ended
    // does not count as throughput during it.
    let answering = started.elapsed().as_secs_f64();
    let count = admitted.len() as u64;
    Ok(OpenLoopOutcome {
        offered_rate: total as f64 / sending,
        admitted_rate: count as f64 / answering,
        admitted: count,
        shed: shed.len() as u64,
        limited,
        p50_ms: percentile(&mut admitted, 50.0).unwrap_or(0.0),
        p99_ms: percentile(&mut admitted, 99.0).unwrap_or(0.0),
        shed_p99_ms: percentile(&mut shed, 99.0).unwrap_or(0.0),
    })
}
