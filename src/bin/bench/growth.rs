//! Growth figures. What each secondary index adds to a batched insert of the gateway's task
//! document (the document as the store writes it, into collections with none, all, or one of the
//! gateway's indexes, batches taken in turn so all collections share the server's mood), and how
//! long `GET /tasks/statistics` takes with a small and a large store behind it (`--phases
//! statistics`: the large store takes minutes to fill on the test server, so it is not in the
//! default run or the smoke run).

use std::time::{Duration, Instant};

use anyhow::Context;
use bson::{Document, doc};
use futures::{StreamExt, TryStreamExt};
use mongodb::{Collection, IndexModel};
use worker_api_gateway::{
    domain::{Limits, Submission, TaskStatus},
    store::{CamundaLink, MongoStore, NewTask, TaskRecord, TaskSource},
};

use crate::{
    gateway::Gateway,
    report::{M, Run, median},
    setup::{BATCH, Ctx},
};

/// The stored form of a new `say_hello` task, field for field what the store inserts (no publish
/// due time: a publish debt stands for it), serialized the same way.
pub fn task_document(id: &str, status: TaskStatus, topic: &str, worker: &str) -> anyhow::Result<Document> {
    let body = serde_json::json!({"task_id": id, "worker_id": worker, "topic": topic, "variables": {"name": id}});
    let submission = Submission::parse(&body, &Limits::default())
        .map_err(|errors| anyhow::anyhow!("bench submission refused: {errors:?}"))?;
    let now = bson::DateTime::now();
    let finished = matches!(status, TaskStatus::Succeeded | TaskStatus::Failed);
    let new = NewTask {
        submission,
        max_attempts: 3,
        source: TaskSource::Http,
        camunda: CamundaLink::not_applicable(),
        publish_after: None,
        trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
    };
    let record = TaskRecord {
        status,
        attempts: u32::from(finished),
        processing_time_ms: finished.then_some(12),
        completed_at: finished.then_some(now),
        ..new.into_record(now)
    };
    bson::to_document(&record).context("serializing a task record")
}

/// One collection under test: its label and its secondary indexes.
struct Target {
    label: String,
    tasks: Collection<Document>,
    times_ms: Vec<f64>,
}

/// Median ms per batch of [`BATCH`] into collections with no secondary index, all of the gateway's
/// (created by its own `ensure_indexes`), and, outside smoke mode, each one alone.
pub async fn index_costs(ctx: &Ctx, run: &mut Run, tag: &str) -> anyhow::Result<()> {
    let db = ctx.mongo.database(&ctx.name(&format!("{tag}_indexes")));
    ctx.remember_database(db.name());
    MongoStore::new(db.clone()).ensure_indexes().await.map_err(|e| anyhow::anyhow!("indexes: {e}"))?;
    let all: Vec<IndexModel> = db
        .collection::<Document>("tasks")
        .list_indexes()
        .await?
        .try_collect::<Vec<_>>()
        .await?
        .into_iter()
        .filter(|m| m.keys != doc! {"_id": 1})
        .collect();
    let mut targets = vec![
        Target { label: "none".into(), tasks: db.collection("none"), times_ms: Vec::new() },
        Target { label: "all".into(), tasks: db.collection("tasks"), times_ms: Vec::new() },
    ];
    if !ctx.plan.smoke {
        for (i, model) in all.iter().enumerate() {
            let name = model.options.as_ref().and_then(|o| o.name.clone()).unwrap_or_else(|| format!("index{i}"));
            let tasks = db.collection::<Document>(&format!("one_{i}"));
            tasks.create_index(model.clone()).await.with_context(|| format!("creating {name} alone"))?;
            targets.push(Target { label: name, tasks, times_ms: Vec::new() });
        }
    }
    let batches = if ctx.plan.smoke { 8 } else { 40 };
    let mut n = 0usize;
    for round in 0..batches + 2 {
        for target in &mut targets {
            let docs = (n..n + BATCH)
                .map(|i| task_document(&format!("{tag}-{i}"), TaskStatus::Queued, "say_hello", "bench"))
                .collect::<anyhow::Result<Vec<_>>>()?;
            n += BATCH;
            let started = Instant::now();
            target.tasks.insert_many(docs).ordered(false).await.context("insert_many")?;
            // The first two rounds warm the collections up (their first pages, the pool).
            if round >= 2 {
                target.times_ms.push(started.elapsed().as_secs_f64() * 1000.0);
            }
        }
    }
    let medians: Vec<(String, f64)> =
        targets.iter_mut().map(|t| (t.label.clone(), median(&mut t.times_ms).unwrap_or(f64::NAN))).collect();
    let none = medians[0].1;
    for (label, ms) in &medians {
        eprintln!(
            "[bench] insert_many of {BATCH} task documents, indexes {label}: {ms:.1} ms ({:.2}× none)",
            ms / none
        );
    }
    run.insert(M::IndexInsertNone, none);
    run.insert(M::IndexInsertAll, medians[1].1);
    run.insert(M::IndexCount, all.len() as f64);
    db.drop().await?;
    Ok(())
}

/// Fills database `name` with `n` tasks (a mix of states, topics and workers), with the gateway's
/// indexes, `BATCH` × 10 per call, two calls at a time.
async fn fill(ctx: &Ctx, name: &str, n: usize) -> anyhow::Result<()> {
    let db = ctx.mongo.database(name);
    ctx.remember_database(name);
    MongoStore::new(db.clone()).ensure_indexes().await.map_err(|e| anyhow::anyhow!("indexes: {e}"))?;
    let tasks = db.collection::<Document>("tasks");
    let states = [TaskStatus::Succeeded, TaskStatus::Succeeded, TaskStatus::Failed, TaskStatus::Queued];
    let chunk = BATCH * 10;
    let started = Instant::now();
    futures::stream::iter((0..n).step_by(chunk))
        .map(|from| {
            let tasks = tasks.clone();
            async move {
                let docs = (from..(from + chunk).min(n))
                    .map(|i| {
                        let (topic, worker) = (["say_hello", "nova_publicacao"][i % 2], format!("worker-{}", i % 7));
                        task_document(&format!("stats-{i}"), states[i % states.len()], topic, &worker)
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                tasks.insert_many(docs).ordered(false).await.context("filling the store")?;
                Ok::<_, anyhow::Error>(())
            }
        })
        .buffer_unordered(2)
        .try_collect::<()>()
        .await?;
    eprintln!("[bench] stored {n} tasks in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// `GET /tasks/statistics` against a gateway over `n` stored tasks: the first answer, from the
/// gateway's start (its first count), and the median of `requests` more, one every 50 ms.
async fn statistics_latency(ctx: &Ctx, tag: &str, n: usize, requests: usize) -> anyhow::Result<(f64, f64)> {
    let name = format!("{tag}_stats{n}");
    fill(ctx, &ctx.name(&name), n).await?;
    crate::gateway::wait_for_idle_store().await;
    let topics = ctx.repo_topics.clone();
    let gateway = Gateway::start_with(ctx, &name, "api", &topics, &[("STATISTICS_MAX_AGE_SECONDS", "10")]).await?;
    let url = format!("{}/tasks/statistics", gateway.base);
    // The first count starts with the gateway: the first answer is timed from its start. A
    // request that comes before the count ends waits for it, or, past the request deadline on a
    // large store, is answered 503 and asked again a second later.
    let up = Instant::now();
    let first = loop {
        let response = ctx.http.get(&url).send().await?;
        if response.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE {
            anyhow::ensure!(up.elapsed() < Duration::from_secs(600), "no statistics 10 minutes after the start");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        let answer: serde_json::Value = response.error_for_status()?.json().await?;
        anyhow::ensure!(answer["total_tasks"] == n, "statistics say {} tasks, {n} stored", answer["total_tasks"]);
        break up.elapsed().as_secs_f64() * 1000.0;
    };
    let mut times = Vec::with_capacity(requests);
    for _ in 0..requests {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = Instant::now();
        let answer: serde_json::Value = ctx.http.get(&url).send().await?.error_for_status()?.json().await?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(answer["total_tasks"] == n, "statistics say {} tasks, {n} stored", answer["total_tasks"]);
    }
    gateway.stop().await;
    ctx.mongo.database(&ctx.name(&name)).drop().await?;
    Ok((first, median(&mut times).unwrap_or(f64::NAN)))
}

pub async fn statistics(ctx: &Ctx, run: &mut Run, tag: &str) -> anyhow::Result<()> {
    let requests = 100;
    for (n, first, cached) in [
        (ctx.plan.stats_small, M::StatsSmallFirst, M::StatsSmall),
        (ctx.plan.stats_large, M::StatsLargeFirst, M::StatsLarge),
    ] {
        let (cold, median) = statistics_latency(ctx, tag, n, requests).await?;
        eprintln!("[bench] statistics over {n} tasks: first answer {cold:.1} ms, then median {median:.2} ms");
        run.insert(first, cold);
        run.insert(cached, median);
    }
    Ok(())
}
