//! The raw limits of the servers, measured with the same client libraries and settings the
//! gateway uses: MongoDB inserts of task-shaped documents into a collection with the gateway's
//! own indexes (one per call, and batches per call), and RabbitMQ publishes of persistent
//! messages into a durable quorum queue with publisher confirms, many confirms outstanding.
//! Beside them, the store's own ceiling for a task's life: the gateway's store calls alone
//! (insert, claim, finish, batched), with no HTTP, broker or handler in between.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bson::{Document, doc};
use futures::{StreamExt, stream::FuturesUnordered};
use lapin::{
    BasicProperties, Confirmation, Connection, ConnectionProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions},
    types::{AMQPValue, FieldTable},
};
use mongodb::Collection;

/// A document shaped like a stored task (same fields and sizes as a `say_hello` submission).
fn task_like(id: String) -> Document {
    let now = bson::DateTime::now();
    doc! {
        "_id": &id, "worker_id": "bench", "topic": "say_hello", "variables": {"name": &id},
        "fingerprint": "5f".repeat(32), "source": "http", "status": "queued", "attempts": 0,
        "max_attempts": 3, "retries": 0, "processing_steps": [], "created_at": now, "updated_at": now,
        "publish_due_at": now, "camunda": {"report_state": "not_applicable"},
    }
}

/// The collection the limits write to: `tasks` of a fresh database, with the gateway's indexes
/// (taken from the gateway's own code, so they stay the same as the gateway's).
pub async fn tasks_collection(mongo: &mongodb::Client, database: &str) -> anyhow::Result<Collection<Document>> {
    let db = mongo.database(database);
    let store = worker_api_gateway::store::MongoStore::new(db.clone());
    if let Err(first) = store.ensure_indexes().await {
        // A pooled connection broken during the previous phase (seen after the in-flight phase:
        // "Broken pipe") fails the first command and clears the pool; the next one dials anew.
        eprintln!("[bench] creating the indexes failed ({first}); trying once more");
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        store.ensure_indexes().await.map_err(|e| anyhow::anyhow!("creating the gateway's indexes: {e}"))?;
    }
    Ok(db.collection("tasks"))
}

/// Documents per second with `concurrency` loops, each inserting `batch` documents per call
/// (`insert_one` when 1, else `insert_many`), for `duration`. Each loop stops between calls, so no
/// operation is cut off.
pub async fn mongo_inserts(
    tasks: &Collection<Document>,
    prefix: &str,
    concurrency: usize,
    batch: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let deadline = started + duration;
    let mut loops = tokio::task::JoinSet::new();
    for worker in 0..concurrency {
        let tasks = tasks.clone();
        let prefix = format!("{prefix}-{worker}");
        loops.spawn(async move {
            let mut written = 0usize;
            while Instant::now() < deadline {
                if batch == 1 {
                    tasks.insert_one(task_like(format!("{prefix}-{written}"))).await?;
                } else {
                    let docs = (written..written + batch).map(|i| task_like(format!("{prefix}-{i}")));
                    tasks.insert_many(docs).await?;
                }
                written += batch;
            }
            Ok::<_, mongodb::error::Error>(written)
        });
    }
    let mut total = 0;
    while let Some(joined) = loops.join_next().await {
        total += joined.context("insert loop panicked")?.context("insert failed")?;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// Confirmed publishes per second into a new durable quorum queue `queue` (deleted by the
/// caller's cleanup), with up to `window` publishes awaiting their confirm.
pub async fn rabbit_confirmed(url: &str, queue: &str, window: usize, duration: Duration) -> anyhow::Result<f64> {
    let conn = Connection::connect(url, ConnectionProperties::default()).await.context("RABBITMQ_URL")?;
    let channel = conn.create_channel().await?;
    let mut args = FieldTable::default();
    // The gateway's queues are quorum queues; a classic queue would flatter the limit.
    args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    channel.queue_declare(queue.into(), durable, args).await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    // The gateway's message: persistent JSON, mandatory, about the size of a submission.
    let body = serde_json::json!({"task_id": "bench-0000000-00000", "worker_id": "bench", "topic": "say_hello",
        "variables": {"name": "bench-0000000-00000"}})
    .to_string();
    let properties = BasicProperties::default().with_delivery_mode(2).with_content_type("application/json".into());
    let options = BasicPublishOptions { mandatory: true, ..Default::default() };
    let started = Instant::now();
    let deadline = started + duration;
    let mut pending = FuturesUnordered::new();
    let mut confirmed = 0u64;
    loop {
        while pending.len() < window && Instant::now() < deadline {
            let confirm =
                channel.basic_publish("".into(), queue.into(), options, body.as_bytes(), properties.clone()).await?;
            pending.push(confirm);
        }
        match pending.next().await {
            None => break,
            Some(Ok(Confirmation::Ack(None))) => confirmed += 1,
            Some(Ok(other)) => bail!("publish not acknowledged: {other:?}"),
            Some(Err(e)) => bail!("publish failed: {e}"),
        }
    }
    let rate = confirmed as f64 / started.elapsed().as_secs_f64();
    // Now rather than at the end: the messages would otherwise weigh on the later phases.
    channel.queue_delete(queue.into(), QueueDeleteOptions::default()).await?;
    let _ = conn.close(200, "bench done".into()).await;
    Ok(rate)
}

/// Tasks per second through the three writes of a task's life, made by the gateway's own store
/// calls in batches of `batch`: `insert_batch`, `claim_batch`, `finish_batch` (a `say_hello`
/// success with its step), one batch after another, for `duration`. What the end-to-end figure
/// would be if HTTP, RabbitMQ and the handler cost nothing.
pub async fn store_lifecycle(
    db: mongodb::Database,
    prefix: &str,
    batch: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    use worker_api_gateway::{
        domain::{Limits, Submission},
        store::{AttemptOutcome, CamundaLink, Finish, Finished, MongoStore, NewTask, TaskSource, TaskStore},
        topics::ProcessingStep,
    };
    let store = MongoStore::new(db);
    let started = Instant::now();
    let mut done = 0usize;
    while started.elapsed() < duration {
        let ids: Vec<String> = (done..done + batch).map(|i| format!("{prefix}-{i}")).collect();
        let mut tasks = Vec::with_capacity(batch);
        for id in &ids {
            let body = serde_json::json!({"task_id": id, "worker_id": "bench", "topic": "say_hello",
                "variables": {"name": id}});
            let submission = Submission::parse(&body, &Limits::default())
                .map_err(|errors| anyhow::anyhow!("bench submission refused: {errors:?}"))?;
            tasks.push(NewTask {
                submission,
                max_attempts: 3,
                source: TaskSource::Http,
                camunda: CamundaLink::not_applicable(),
                publish_after: None,
                trace_id: None,
            });
        }
        for outcome in store.insert_batch(tasks, chrono::Utc::now()).await {
            outcome.map_err(|e| anyhow::anyhow!("insert_batch: {e}"))?;
        }
        let claimed = store
            .claim_batch(ids, std::time::Duration::from_secs(60))
            .await
            .map_err(|e| anyhow::anyhow!("claim_batch: {e}"))?;
        if claimed.len() != batch {
            bail!("claim_batch claimed {} of {batch}", claimed.len());
        }
        let finishes = claimed
            .iter()
            .map(|task| Finish {
                task_id: task.task_id.clone(),
                attempt: task.attempts,
                elapsed_ms: 0,
                steps: vec![ProcessingStep {
                    step: "build_greeting".into(),
                    status: "completed".into(),
                    at: chrono::Utc::now(),
                    detail: None,
                }],
                outcome: AttemptOutcome::Succeeded {
                    result: serde_json::json!({"greeting": format!("Hello, {}!", task.task_id)})
                        .as_object()
                        .cloned()
                        .unwrap_or_default(),
                },
                read_back: false,
            })
            .collect();
        for finished in store.finish_batch(finishes).await {
            match finished.map_err(|e| anyhow::anyhow!("finish_batch: {e}"))? {
                Finished::Written(_) => {}
                Finished::Missed => bail!("finish_batch missed a task it had claimed"),
            }
        }
        done += batch;
    }
    Ok(done as f64 / started.elapsed().as_secs_f64())
}
